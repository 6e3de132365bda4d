"use client";
// The board in the browser: optimistic edits through a Server Action (confirmed by the page the action
// returns, or rolled back with the conflict shown), and live updates of other people's edits through
// Freshwire (each card's hook; one router refresh for all the cards a transaction touched).
import { useEffect, useOptimistic, useRef, useState, useTransition, type FormEvent } from "react";
import { FreshwireProvider, useFreshwire, useFreshwireState } from "@freshwire/next/client";
import type { Board, Card } from "@/lib/db";
import { saveCard } from "@/app/actions";

/** What the page did, with times (Date.now()), for the browser test's measurements. */
interface Journal {
  renders: { id: number; title: string; version: number; t: number }[];
  actions: { id: number; title: string; ok: boolean; visible: boolean; code?: string; t: number; ms: number }[];
}

declare global {
  interface Window { __freshwire?: Journal }
}

function journal(): Journal {
  window.__freshwire ??= { renders: [], actions: [] };
  return window.__freshwire;
}

type Shown = Card & { pending?: boolean };
type Edit = { id: number; title: string };

export function BoardView({ board, versions, gatewayWs, token, getToken, wait, user }: {
  board: Board;
  versions: Record<string, string | null>;
  gatewayWs: string;
  token: string;
  getToken: () => Promise<string>;
  wait: boolean;
  user: string;
}) {
  return (
    <FreshwireProvider url={gatewayWs} token={token} getToken={getToken} versions={versions}>
      <main>
        <header>
          <h1>{board.name}</h1>
          <span className="who">{user}</span>
          <Status />
        </header>
        <Cards board={board} wait={wait} />
        <footer>Reads from the replica; every save waits until the replica has it{wait ? "" : " (off: control run)"}.</footer>
      </main>
    </FreshwireProvider>
  );
}

function Status() {
  const state = useFreshwireState();
  return <span id="status" data-state={state}>{state === "open" ? "live" : state}</span>;
}

function Cards({ board, wait }: { board: Board; wait: boolean }) {
  useFreshwire([`tenant:${board.tenant_id}:board:${board.id}`]);   // cards added or moved away
  const [shown, addOptimistic] = useOptimistic<Shown[], Edit>(board.cards,
    (cards, edit) => cards.map((c) => (c.id === edit.id ? { ...c, title: edit.title, pending: true } : c)));
  const [conflict, setConflict] = useState<string | null>(null);
  const seen = useRef(new Map<number, string>());
  useEffect(() => {                                // the server's data as rendered, change by change
    const log = journal();
    for (const card of board.cards) {
      if (seen.current.get(card.id) === card.title) continue;
      seen.current.set(card.id, card.title);
      log.renders.push({ id: card.id, title: card.title, version: card.version, t: Date.now() });
    }
  }, [board.cards]);
  const serverTitle = new Map(board.cards.map((c) => [c.id, c.title]));
  return (
    <>
      <p id="conflict" role="alert" hidden={conflict === null} onClick={() => setConflict(null)}>{conflict}</p>
      <ul id="cards">
        {shown.map((card) => (
          <CardItem key={card.id} card={card} serverTitle={serverTitle.get(card.id) ?? ""} wait={wait}
            addOptimistic={addOptimistic} onConflict={setConflict} />
        ))}
      </ul>
    </>
  );
}

function CardItem({ card, serverTitle, wait, addOptimistic, onConflict }: {
  card: Shown;
  serverTitle: string;
  wait: boolean;
  addOptimistic: (edit: Edit) => void;
  onConflict: (message: string | null) => void;
}) {
  useFreshwire([`tenant:${card.tenant_id}:card:${card.id}`]);
  const [draft, setDraft] = useState<{ title: string; version: number } | null>(null);
  const [saving, startTransition] = useTransition();

  function save(event: FormEvent) {
    event.preventDefault();
    if (draft === null) return;
    const { title, version } = draft;              // the version this edit started from
    setDraft(null);
    const idempotencyKey = crypto.randomUUID();     // the same on a retry of this edit
    startTransition(async () => {
      addOptimistic({ id: card.id, title });
      const started = Date.now();
      const result = await saveCard({ cardId: card.id, title, expectedVersion: version, idempotencyKey, wait });
      journal().actions.push({ id: card.id, title, ok: result.ok, visible: result.ok && result.visible,
        code: result.ok ? undefined : result.code, t: Date.now(), ms: Date.now() - started });
      onConflict(result.ok ? null : result.message);
    });
  }

  const busy = saving || card.pending === true;
  return (
    <li className={busy ? "card pending" : "card"} data-id={card.id} data-title={serverTitle}
      data-version={card.version} data-pending={busy ? "1" : "0"}>
      {draft === null ? (
        <>
          <span className="title">{card.title}</span>
          <button type="button" className="edit" onClick={() => setDraft({ title: card.title, version: card.version })}>Edit</button>
        </>
      ) : (
        <form onSubmit={save}>
          <input name="title" aria-label="title" value={draft.title} autoFocus
            onChange={(e) => setDraft({ ...draft, title: e.target.value })} />
          <button type="submit">Save</button>
        </form>
      )}
      <span className="version">v{card.version}</span>
    </li>
  );
}
