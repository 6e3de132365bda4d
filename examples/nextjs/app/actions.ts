"use server";
// Server Actions: write to the primary (expected version, idempotency key, outbox row, write token, one
// transaction), wait until the replicas have it, then revalidate: the page the action returns re-reads
// the replica and shows the edit, never the old row.
import { freshwire, browserToken, cardKey } from "@/lib/freshwire";
import { CARD_FIELDS, primary, type Card } from "@/lib/db";
import { settings } from "@/lib/settings";
import type { Queryable } from "@freshwire/next/server";

export type SaveResult =
  | { ok: true; card: Card; visible: boolean; waitedMs: number; replayed: boolean }
  | { ok: false; code: "conflict" | "bad_request" | "not_found"; message: string; current?: Card };

class Conflict extends Error {
  constructor(readonly current: Card | undefined) {
    super("conflict");
  }
}

const MAX_TITLE = 200;

export async function saveCard(input: {
  cardId: number;
  title: string;
  expectedVersion: number;
  idempotencyKey: string;
  wait?: boolean;
}): Promise<SaveResult> {
  const { cardId, title, expectedVersion, idempotencyKey } = input;
  if (!Number.isInteger(cardId) || !Number.isInteger(expectedVersion) || typeof title !== "string"
      || title.trim() === "" || title.length > MAX_TITLE || typeof idempotencyKey !== "string"
      || idempotencyKey.length === 0 || idempotencyKey.length > 128) {
    return { ok: false, code: "bad_request", message: "A title of 1-200 characters, please." };
  }
  const wait = input.wait !== false || !settings().allowNoWait;
  try {
    const { value, visible, waitedMs } = await freshwire().transaction(primary(), async (client: Queryable) => {
      const done = await client.query("SELECT response FROM idempotency_keys WHERE key = $1", [idempotencyKey]);
      if (done.rows.length) return { card: done.rows[0].response.card as Card, replayed: true };
      const updated = await client.query(
        `UPDATE cards SET title = $1, version = version + 1, updated_at = clock_timestamp()
         WHERE id = $2 AND version = $3 RETURNING ${CARD_FIELDS}`, [title, cardId, expectedVersion]);
      if (updated.rows.length === 0) {
        const current = await client.query(`SELECT ${CARD_FIELDS} FROM cards WHERE id = $1`, [cardId]);
        throw new Conflict(current.rows[0]);
      }
      const card = updated.rows[0] as Card;
      await client.query(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, keys) VALUES ('card', $1, 'card.updated', $2, $3)",
        [String(cardId), JSON.stringify({ title, version: card.version }), [`tenant:${card.tenant_id}:card-events:${cardId}`]]);
      await client.query("INSERT INTO idempotency_keys (key, response) VALUES ($1, $2)",
        [idempotencyKey, JSON.stringify({ card })]);
      return { card, replayed: false };
    }, {
      wait,
      tags: (v) => [cardKey(v.card.tenant_id, v.card.id)],
      paths: (v) => [`/boards/${v.card.board_id}`],
    });
    return { ok: true, card: value.card, visible, waitedMs, replayed: value.replayed };
  } catch (err) {
    if (err instanceof Conflict) {
      if (err.current === undefined) return { ok: false, code: "not_found", message: "This card is gone." };
      return { ok: false, code: "conflict", message: "Someone else changed this card first.", current: err.current };
    }
    throw err;
  }
}

/** A fresh browser token before every (re)connect of the page's client. */
export async function refreshToken(tenantId: number): Promise<string> {
  return browserToken(tenantId, "browser");
}
