// The optional payload of invalidate (docs/protocol.md `data`): listeners get the rows as a second
// argument. Same fake WebSocket as freshwire.test.js (no network, no dependencies).
// Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, Freshwire, FreshwireError, SUBPROTOCOL } from "../freshwire.js";

const V = (n) => n.toString(16).padStart(16, "0");   // a version: 16 lowercase hex digits

/** A stand-in for the browser WebSocket: records frames, lets the test play the gateway. */
class FakeWebSocket {
  static instances = [];
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];                  // parsed frames sent by the client
    this.clientClose = null;         // {code, reason} when the client closed it
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    assert.equal(typeof data, "string");
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    this.clientClose = { code, reason };
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.({ code, reason, wasClean: true }));
  }

  // -- the test plays the gateway
  open() { this.readyState = 1; this.onopen?.({}); }
  push(message) { this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) }); }
  serverClose(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }
  frames(op) { return this.sent.filter((f) => f.op === op); }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const tick = () => new Promise((r) => setTimeout(r, 1));   // past the client's end-of-tick flush

/** Play the gateway for every subscribe/unsubscribe frame not answered yet (and the ones they let
 *  through): `subscribed` with `versions[key] ?? null` for each key, `unsubscribed`. Returns them. */
function answer(ws, versions = {}) {
  const answered = [];
  ws.answered ??= new Set();
  for (let i = 0; i < ws.sent.length; i++) {
    const f = ws.sent[i];
    if (ws.answered.has(f) || (f.op !== "subscribe" && f.op !== "unsubscribe")) continue;
    ws.answered.add(f);
    answered.push(f);
    if (f.op === "subscribe") {
      ws.push({ type: "subscribed", id: f.id, versions: Object.fromEntries(f.keys.map((k) => [k, versions[k] ?? null])), watermark: null });
    } else {
      ws.push({ type: "unsubscribed", id: f.id, keys: f.keys });
    }
  }
  return answered;
}

async function waitFor(cond, ms = 2000, what = "condition") {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(1);
  }
}

/** A client on a fresh fake; returns it with a getter of the newest socket. Closed after the test. */
function setup(t, options = {}) {
  const instances = [];
  class WS extends FakeWebSocket {
    constructor(...args) { super(...args); instances.push(this); }
  }
  const fw = connect(options.url ?? "ws://gw.test/ws", {
    token: "tok", minBackoffMs: 1, maxBackoffMs: 5, pingIntervalMs: 0, ...options, WebSocket: WS,
  });
  t.after(() => fw.close());
  return { fw, instances, ws: () => instances[instances.length - 1] };
}

async function setupOpen(t, options) {
  const s = setup(t, options);
  await waitFor(() => s.instances.length === 1, 1000, "a socket");
  s.ws().open();
  return s;
}


test("listeners get the rows an invalidate carried for their own fresh keys, {} when none", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const gotA = [], gotB = [], events = [];
  fw.on("invalidate", (c, rows) => events.push([c, rows]));
  fw.subscribe(["card:1", "board:1"], (c, rows) => gotA.push([c, rows]));
  fw.subscribe("card:2", (c, rows) => gotB.push([c, rows]));
  await tick();
  const [f1] = ws().frames("subscribe");
  ws().push({ type: "subscribed", id: f1.id, versions: { "card:1": null, "board:1": null, "card:2": null }, watermark: V(1) });
  ws().push({
    type: "invalidate",
    keys: { "card:1": V(2), "board:1": V(2), "card:2": V(2), "other:1": V(2) },
    data: { "card:1": { title: "Ship it", status: "done" }, "card:2": null, "other:1": { x: 1 } },
  });
  assert.deepEqual(gotA, [[{ "card:1": V(2), "board:1": V(2) }, { "card:1": { title: "Ship it", status: "done" } }]]);
  assert.deepEqual(gotB, [[{ "card:2": V(2) }, { "card:2": null }]], "a deleted row is null, present");
  assert.deepEqual(events, [[{ "card:1": V(2), "board:1": V(2), "card:2": V(2) },
    { "card:1": { title: "Ship it", status: "done" }, "card:2": null }]]);

  ws().push({ type: "invalidate", keys: { "card:1": V(3) } });                 // no data: refetch
  assert.deepEqual(gotA.at(-1), [{ "card:1": V(3) }, {}]);
  ws().push({ type: "invalidate", keys: { "card:1": V(3) }, data: { "card:1": { title: "dup" } } });
  assert.equal(gotA.length, 2, "a stale version's data is not handed over");
  ws().push({ type: "invalidate", keys: { "card:1": V(4) }, data: ["not", "an", "object"] });
  assert.deepEqual(gotA.at(-1), [{ "card:1": V(4) }, {}], "malformed data is ignored");
});

test("a one-argument listener keeps working with data present (old code)", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const got = [];
  fw.subscribe("card:1", (c) => got.push(c));
  await tick();
  answer(ws());
  ws().push({ type: "invalidate", keys: { "card:1": V(7) }, data: { "card:1": { a: 1 } } });
  assert.deepEqual(got, [{ "card:1": V(7) }]);
});
