// A board, rendered on the server from the read replica. The versions of its keys are read first:
// everything up to them is on the replica already, and the client subscribes from exactly there.
import { notFound } from "next/navigation";
import { CARD_FIELDS, replica, type Board } from "@/lib/db";
import { boardKey, browserToken, cardKey, freshwire } from "@/lib/freshwire";
import { settings } from "@/lib/settings";
import { refreshToken } from "@/app/actions";
import { BoardView } from "./board";

export const dynamic = "force-dynamic";

async function readBoard(id: number): Promise<{ board: Board; versions: Record<string, string | null> } | null> {
  const head = await replica().query("SELECT id::int, tenant_id, name FROM boards WHERE id = $1", [id]);
  if (head.rows.length === 0) return null;
  const tenant = head.rows[0].tenant_id as number;
  const ids = await replica().query("SELECT id::int FROM cards WHERE board_id = $1", [id]);
  // Versions before data: the data read next is at least that new (released means replayed), and a
  // change after them arrives as an invalidation the hook hears of.
  const { versions } = await freshwire().readVersions([boardKey(tenant, id), ...ids.rows.map((r) => cardKey(tenant, r.id))]);
  const cards = await replica().query(`SELECT ${CARD_FIELDS} FROM cards WHERE board_id = $1 ORDER BY id`, [id]);
  return { board: { ...head.rows[0], cards: cards.rows }, versions };
}

export default async function BoardPage({ params, searchParams }: {
  params: Promise<{ id: string }>;
  searchParams: Promise<Record<string, string | string[] | undefined>>;
}) {
  const { id } = await params;
  const query = await searchParams;
  const boardId = Number(id);
  if (!Number.isSafeInteger(boardId) || boardId <= 0) notFound();
  const found = await readBoard(boardId);
  if (found === null) notFound();
  const { board, versions } = found;
  const user = typeof query.user === "string" ? query.user.slice(0, 32) : "guest";
  return (
    <BoardView
      board={board}
      versions={versions}
      gatewayWs={settings().gatewayWs}
      token={browserToken(board.tenant_id, user)}
      getToken={refreshToken.bind(null, board.tenant_id)}
      wait={!(settings().allowNoWait && query.wait === "off")}
      user={user}
    />
  );
}
