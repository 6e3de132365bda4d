// The demo board: optimistic edits confirmed by `await`, conflicts (409) shown, on each
// invalidation the pushed row applied as it is (demo/rules.toml gives cards a payload) or else a
// refetch of only what changed, and a banner when a guarantee lapsed.
import { connect } from "/client.js";

const COLUMNS = ["todo", "doing", "done"];
const cards = new Map();                // id -> card as last read from the server (or optimistic)
const latencies = [];
const $ = (sel) => document.querySelector(sel);
const user = new URLSearchParams(location.search).get("user") || "guest";

const session = await (await fetch(`/api/session?user=${encodeURIComponent(user)}`)).json();
const boardKey = `tenant:${session.tenant}:board:${session.board}`;
const cardKey = (id) => `tenant:${session.tenant}:card:${id}`;
const fw = connect(session.gateway, {
  getToken: async () => (await (await fetch(`/api/session?user=${encodeURIComponent(user)}`)).json()).token,
  onState: (state) => { const el = $("#status"); el.dataset.state = state; el.textContent = state; },
});
const stats = { pushed: 0, refetched: 0 };   // card changes applied from the invalidate / refetched
window.__board = { fw, cards, stats };

function render() {
  const main = $("#columns");
  main.replaceChildren(...COLUMNS.map((status) => {
    const col = document.createElement("section");
    col.className = "column"; col.dataset.status = status;
    const list = [...cards.values()].filter((c) => c.status === status).sort((a, b) => a.id - b.id);
    col.innerHTML = `<h2>${status}<span class="count">${list.length}</span></h2>`;
    for (const card of list) col.append(cardElement(card));
    return col;
  }));
}

function cardElement(card) {
  const el = document.createElement("article");
  el.className = "card" + (card.pending ? " pending" : "");
  el.dataset.id = card.id; el.dataset.version = card.version;
  const title = document.createElement("div"); title.className = "title"; title.textContent = card.title;
  const meta = document.createElement("div"); meta.className = "meta";
  const owner = document.createElement("span"); owner.textContent = card.owner || "—";
  const actions = document.createElement("span");
  for (const status of COLUMNS.filter((s) => s !== card.status)) {
    const b = document.createElement("button"); b.textContent = `→ ${status}`; b.dataset.move = status;
    b.onclick = () => move(card.id, status); actions.append(b);
  }
  meta.append(owner, actions); el.append(title, meta);
  return el;
}

function noteLatency(card) {
  if (!card.updated_ms) return;
  latencies.unshift(Math.max(0, Date.now() - card.updated_ms));
  latencies.length = Math.min(latencies.length, 5);
  $("#latency").textContent = latencies.map((ms) => `${ms} ms`).join(", ");
}

async function loadBoard() {
  const board = await (await fetch(`/api/boards/${session.board}`)).json();
  $("#reads-from").textContent = `(reads from the ${board.reads_from})`;
  const seen = new Set();
  for (const card of board.cards) {
    seen.add(card.id);
    const had = cards.get(card.id);
    if (!had) subscribeCard(card.id);
    if (!had || (!had.pending && had.version !== card.version)) cards.set(card.id, card);
  }
  for (const id of [...cards.keys()]) if (!seen.has(id)) cards.delete(id);
  render();
}

async function refetchCard(id) {
  stats.refetched++;
  const res = await fetch(`/api/cards/${id}`);
  if (res.status === 404) { cards.delete(id); render(); return; }
  const card = await res.json();
  const had = cards.get(id);
  if (had && had.pending && had.version >= card.version) return;   // our own edit is still in flight
  if (!had || had.version !== card.version) noteLatency(card);
  cards.set(id, card); render();
  document.querySelector(`.card[data-id="${id}"]`)?.classList.add("flash");
}

/** The row an invalidate carried for the card (docs/protocol.md `data`): null when it was deleted. */
function applyCard(id, row) {
  stats.pushed++;
  const had = cards.get(id);
  if (row === null || row.board_id !== session.board) {        // deleted, or moved to another board
    if (cards.delete(id)) render();
    return;
  }
  if (had && had.pending && had.version >= row.version) return;   // our own edit is still in flight
  cards.set(id, { ...had, ...row, id, pending: false }); render();
  document.querySelector(`.card[data-id="${id}"]`)?.classList.add("flash");
}

const subscribed = new Set();
function subscribeCard(id) {
  if (subscribed.has(id)) return;
  subscribed.add(id);
  const key = cardKey(id);
  fw.subscribe([key], (_changes, rows) => (key in rows ? applyCard(id, rows[key]) : refetchCard(id)));
}

async function move(id, status) {
  const before = cards.get(id);
  if (!before) return;
  const idempotencyKey = crypto.randomUUID();
  cards.set(id, { ...before, status, pending: true }); render();             // optimistic
  const post = () => fetch(`/api/cards/${id}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ changes: { status }, expected_version: before.version, idempotency_key: idempotencyKey }),
  });
  let res;
  try { res = await post(); } catch { res = await post(); }                // a retry never applies twice
  const body = await res.json();
  if (res.status === 409) {
    const current = body.error.current;
    if (current) cards.set(id, current); else cards.delete(id);
    showConflict(`${body.error.message} “${before.title}” is now in ${current ? current.status : "the bin"}.`);
    render(); return;
  }
  if (!res.ok) { cards.set(id, before); render(); showConflict(body.error?.message || "Save failed."); return; }
  cards.set(id, { ...body.card, pending: true }); render();
  try {
    await fw.await(body.token, { timeoutMs: 5000 });                       // now readable everywhere
    const card = cards.get(id);
    if (card && card.version <= body.card.version) cards.set(id, { ...card, pending: false });
  } catch { await refetchCard(id); }
  render();
}

function showConflict(message) {
  const el = $("#conflict"); el.textContent = message; el.hidden = false;
  clearTimeout(showConflict.timer); showConflict.timer = setTimeout(() => { el.hidden = true; }, 8000);
}

$("#add").onsubmit = async (event) => {
  event.preventDefault();
  const title = event.target.title.value.trim();
  if (!title) return;
  event.target.reset();
  await fetch(`/api/boards/${session.board}/cards`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ title, owner: user }),
  });
};

async function syncIndex() {                   // cards added, removed or moved on this board
  const index = await (await fetch(`/api/boards/${session.board}/index`)).json();
  const ids = new Set(index.map((c) => c.id));
  let removed = false;
  for (const id of [...cards.keys()]) if (!ids.has(id)) { cards.delete(id); removed = true; }
  if (removed) render();
  for (const { id, version } of index) {
    const had = cards.get(id);
    if (!had) { subscribeCard(id); await refetchCard(id); }
    else if (had.version < version && !had.pending) await refetchCard(id);
  }
}

// A guarantee lapsed for some keys (docs/protocol.md, "lapse"): say so, and read again what may be old.
const LAPSE_TEXT = {
  replica_lag: "Some cards may show older data for a moment (replica behind).",
  flush: "Everything was refreshed after an upstream gap.",
  resync: "Live updates were interrupted; the board re-synced.",
};
const LAPSE_SHOWN_MS = 10000;           // the banner goes after this long, or on a click
const REPLICA_RETRY_MS = 1000;          // replica_lag: the cards are read again after this long

function showLapse(lapse) {
  const el = $("#lapse");
  el.textContent = LAPSE_TEXT[lapse.reason] ?? "Live updates were delayed for a moment.";
  el.dataset.reason = String(lapse.reason);
  el.hidden = false;
  clearTimeout(showLapse.timer); showLapse.timer = setTimeout(() => { el.hidden = true; }, LAPSE_SHOWN_MS);
}
$("#lapse").onclick = () => { clearTimeout(showLapse.timer); $("#lapse").hidden = true; };

function rereadLater(keys) {            // the refetch its invalidate caused may have read the old rows
  const cardPrefix = cardKey("");
  setTimeout(() => {
    for (const key of keys) {
      const id = key.startsWith(cardPrefix) ? Number(key.slice(cardPrefix.length)) : NaN;
      if (key === boardKey) syncIndex();
      else if (cards.has(id)) refetchCard(id);
    }
  }, REPLICA_RETRY_MS);
}

fw.onLapse((lapse) => {
  showLapse(lapse);
  // flush and resync: the invalidations before the lapse carried every change, refetched already.
  if (lapse.reason === "replica_lag") rereadLater(Array.isArray(lapse.keys) ? lapse.keys : []);
});
fw.subscribe([boardKey], () => syncIndex());
fw.on("state", (state) => { if (state === "open") loadBoard(); });
await loadBoard();
