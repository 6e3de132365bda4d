// Unit tests of the JS client against a fake WebSocket (no network, no dependencies).
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

test("connects with the subprotocol and the URL-encoded token in the query", async (t) => {
  const { fw, ws } = setup(t, { token: "a b+c/=é", url: "ws://gw.test/ws?x=1" });
  assert.deepEqual(ws().protocols, [SUBPROTOCOL]);
  assert.equal(SUBPROTOCOL, "freshwire.v1");
  assert.equal(ws().url, `ws://gw.test/ws?x=1&token=${encodeURIComponent("a b+c/=é")}`);
  assert.ok(fw instanceof Freshwire);
  assert.equal(fw.state, "connecting");
  ws().open();
  assert.equal(fw.state, "open");
  assert.deepEqual(ws().sent, [], "no subscriptions: nothing to send on open");
});

test("subscribe calls of one tick go out as one frame with an integer id, keys and since; invalidations reach only matching subscribers", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const gotA = [], gotB = [], events = [];
  fw.on("invalidate", (c) => events.push(c));
  fw.subscribe(["card:1", "board:1"], (c) => gotA.push(c));
  fw.subscribe("card:2", (c) => gotB.push(c));
  assert.deepEqual(ws().sent, [], "nothing before the end of the tick");
  await tick();
  const [f1, ...more] = ws().frames("subscribe");
  assert.deepEqual(more, []);
  assert.ok(Number.isInteger(f1.id));
  assert.deepEqual(f1.keys, ["card:1", "board:1", "card:2"]);
  assert.deepEqual(f1.since, { "card:1": null, "board:1": null, "card:2": null });
  ws().push({ type: "subscribed", id: f1.id, versions: { "card:1": V(5), "board:1": null, "card:2": null }, watermark: V(9) });
  ws().push({ type: "invalidate", keys: { "card:1": V(5) } });                 // the since=null invalidate
  ws().push({ type: "invalidate", keys: { "card:1": V(10), "card:2": V(10), "other:1": V(10) } });
  assert.deepEqual(gotA, [{ "card:1": V(5) }, { "card:1": V(10) }]);
  assert.deepEqual(gotB, [{ "card:2": V(10) }]);
  assert.deepEqual(events, [{ "card:1": V(5) }, { "card:1": V(10), "card:2": V(10) }]);
  assert.equal(fw.versions.get("card:1"), V(10));
  assert.equal(fw.versions.get("board:1"), null);
  assert.equal(fw.versions.has("other:1"), false);
});

test("several subscribers of a key share one server subscription (reference counted)", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const a = [], b = [];
  const offA = fw.subscribe(["card:1"], (c) => a.push(c));
  await tick();
  answer(ws());
  const offB = fw.subscribe(["card:1", "card:2"], (c) => b.push(c));
  await tick();
  const subs = ws().frames("subscribe");
  assert.equal(subs.length, 2);
  assert.deepEqual(subs[1].keys, ["card:2"], "only the new key is sent");
  answer(ws());
  ws().push({ type: "invalidate", keys: { "card:1": V(1) } });
  assert.deepEqual(a, [{ "card:1": V(1) }]);
  assert.deepEqual(b, [{ "card:1": V(1) }]);

  offA();
  await tick();
  assert.equal(ws().frames("unsubscribe").length, 0, "card:1 still has a listener");
  ws().push({ type: "invalidate", keys: { "card:1": V(2) } });
  assert.equal(a.length, 1, "an unsubscribed listener hears nothing");
  assert.deepEqual(b.at(-1), { "card:1": V(2) });

  offB();
  await tick();
  const unsub = ws().frames("unsubscribe");
  assert.equal(unsub.length, 1);
  assert.ok(Number.isInteger(unsub[0].id));
  assert.deepEqual(unsub[0].keys.sort(), ["card:1", "card:2"]);
  assert.equal(fw.versions.size, 0);
  offB(); offA();                                                            // idempotent
  await tick();
  assert.equal(ws().frames("unsubscribe").length, 1);
  ws().push({ type: "unsubscribed", id: unsub[0].id, keys: ["card:1", "card:2"] });
  ws().push({ type: "invalidate", keys: { "card:1": V(3) } });
  assert.equal(b.length, 2);
});

test("stale and duplicate versions are ignored", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const got = [];
  fw.subscribe(["k:1", "k:2"], (c) => got.push(c));
  ws().push({ type: "invalidate", keys: { "k:1": V(20) } });
  ws().push({ type: "invalidate", keys: { "k:1": V(20) } });                 // duplicate
  ws().push({ type: "invalidate", keys: { "k:1": V(19), "k:2": V(19) } });   // k:1 stale, k:2 new
  ws().push({ type: "invalidate", keys: { "k:1": V(0x100) } });              // string order = numeric order
  assert.deepEqual(got, [{ "k:1": V(20) }, { "k:2": V(19) }, { "k:1": V(0x100) }]);
  assert.equal(fw.versions.get("k:1"), V(0x100));
});

test("unknown message types, unknown fields and bad frames are ignored", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const got = [];
  fw.subscribe("k:1", (c) => got.push(c));
  ws().push({ type: "hello-from-the-future", id: 1, keys: { "k:1": V(1) } });
  ws().push("not json");
  ws().push("[1,2]");
  ws().push("null");
  ws().onmessage({ data: new ArrayBuffer(4) });
  ws().push({ type: "invalidate", keys: { "k:1": V(2) }, extra: true });
  assert.deepEqual(got, [{ "k:1": V(2) }]);
  assert.equal(fw.state, "open");
});

test("subscribe and await before open are queued and sent on open (resume subscribe first)", async (t) => {
  const { fw, ws, instances } = setup(t);
  fw.subscribe(["a:1"], () => {});
  fw.subscribe(["a:2", "a:1"], () => {});
  const p = fw.await("fw1:7");
  await waitFor(() => instances.length === 1);
  assert.deepEqual(ws().sent, []);
  ws().open();
  assert.equal(ws().sent.length, 2);
  const [sub, aw] = ws().sent;
  assert.deepEqual({ op: sub.op, keys: sub.keys, since: sub.since },
    { op: "subscribe", keys: ["a:1", "a:2"], since: { "a:1": null, "a:2": null } });
  assert.deepEqual({ op: aw.op, token: aw.token, timeout_ms: aw.timeout_ms }, { op: "await", token: "fw1:7", timeout_ms: 5000 });
  ws().push({ type: "visible", id: aw.id, token: "fw1:7", version: V(3) });
  assert.equal((await p).version, V(3));
});

test("await resolves on visible and rejects with the error code (timeout) on an error reply", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const errors = [];
  fw.on("error", (e) => errors.push(e));
  const ok = fw.await("fw1:1", { timeoutMs: 100 });
  const late = fw.await("fw1:2");
  const [a1, a2] = ws().frames("await");
  assert.equal(a1.timeout_ms, 100);
  // replies are matched by id, not by order
  ws().push({ type: "error", id: a2.id, code: "timeout", message: "not released within 5000 ms" });
  ws().push({ type: "visible", id: a1.id, token: "fw1:1", version: V(42) });
  assert.deepEqual(await ok, { version: V(42), token: "fw1:1" });
  await assert.rejects(late, (err) => err instanceof FreshwireError && err instanceof Error && err.code === "timeout");
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, "timeout");
});

test("pending requests reject with code disconnected when the socket drops; later awaits wait for the next open", async (t) => {
  const { fw, ws, instances } = await setupOpen(t);
  const pending = fw.await("fw1:1");
  ws().serverClose(1006);
  await assert.rejects(pending, (err) => err.code === "disconnected");
  assert.equal(fw.state, "reconnecting");
  const queued = fw.await("fw1:2");
  await waitFor(() => instances.length === 2, 1000, "a reconnect");
  assert.equal(instances[0].frames("await").length, 1, "not re-sent on the old socket");
  ws().open();
  const [aw] = ws().frames("await");
  assert.equal(aw.token, "fw1:2");
  ws().push({ type: "visible", id: aw.id, token: "fw1:2", version: V(1) });
  assert.equal((await queued).version, V(1));
});

test("close() rejects awaits with code closed and stops reconnecting", async (t) => {
  const { fw, ws, instances } = await setupOpen(t);
  const p = fw.await("fw1:1");
  fw.close();
  await assert.rejects(p, (err) => err.code === "closed");
  await assert.rejects(fw.await("fw1:2"), (err) => err.code === "closed");
  assert.equal(fw.state, "closed");
  assert.equal(ws().clientClose.code, 1000);
  await sleep(30);
  assert.equal(instances.length, 1);
});

test("reconnects with exponential backoff and full jitter, reset after a successful open", async (t) => {
  const draws = [];
  const { fw, instances } = setup(t, {
    minBackoffMs: 8, maxBackoffMs: 40, random: () => { draws.push(1); return 1; },   // jitter at its top: delay = cap
  });
  await waitFor(() => instances.length === 1);
  const gaps = [];
  for (let i = 0; i < 4; i++) {                      // fails before opening: 8, 16, 32, 40 (capped)
    const t0 = performance.now();
    instances[i].serverClose(1006);
    await waitFor(() => instances.length === i + 2, 2000, `attempt ${i + 2}`);
    gaps.push(performance.now() - t0);
  }
  assert.equal(draws.length, 4, "one random draw per delay");
  [8, 16, 32, 40].forEach((want, i) => assert.ok(gaps[i] >= want - 1, `gap ${i} ${gaps[i]} >= ${want}`));
  assert.ok(gaps[3] < 200, "capped at maxBackoffMs");

  instances[4].open();                               // success resets the backoff
  assert.equal(fw.state, "open");
  const t0 = performance.now();
  instances[4].serverClose(1012);
  await waitFor(() => instances.length === 6);
  const gap = performance.now() - t0;
  assert.ok(gap >= 7 && gap < 30, `reset backoff: ${gap}`);
});

test("the jitter is random() * min(max, min * 2^attempt)", async (t) => {
  const { instances } = setup(t, { minBackoffMs: 1000, maxBackoffMs: 100000, random: () => 0 });
  await waitFor(() => instances.length === 1);
  instances[0].serverClose(1006);
  await waitFor(() => instances.length === 2, 200, "an immediate reconnect (random() = 0)");
});

test("a connection refused right after opening (4013) keeps the backoff growing", async (t) => {
  const { instances } = setup(t, { minBackoffMs: 8, maxBackoffMs: 1000, random: () => 1 });
  await waitFor(() => instances.length === 1);
  instances[0].serverClose(1006);                    // attempt 0: 8 ms
  await waitFor(() => instances.length === 2);
  instances[1].open();
  const t0 = performance.now();
  instances[1].serverClose(4013);                    // not a success: attempt 1 -> 16 ms
  await waitFor(() => instances.length === 3);
  assert.ok(performance.now() - t0 >= 15);
});

test("resume: one subscribe with all keys and since = the newest versions seen", async (t) => {
  const { fw, instances, ws } = await setupOpen(t);
  const got = [];
  fw.subscribe(["a:1", "a:2"], (c) => got.push(c));
  fw.subscribe(["a:3"], (c) => got.push(c));
  const off = fw.subscribe(["gone:1"], () => {});
  await tick();
  answer(ws(), { "a:1": V(5) });
  ws().push({ type: "invalidate", keys: { "a:1": V(5) } });
  ws().push({ type: "invalidate", keys: { "a:1": V(7), "a:3": V(7) } });
  ws().push({ type: "invalidate", keys: { "a:1": V(6) } });                  // stale: not "seen" as newest
  off();
  ws().serverClose(1001);
  assert.equal(fw.state, "reconnecting");
  await waitFor(() => instances.length === 2);
  ws().open();
  const resume = ws().sent;
  assert.equal(resume.length, 1, "exactly one frame");
  assert.equal(resume[0].op, "subscribe");
  assert.deepEqual(resume[0].keys.sort(), ["a:1", "a:2", "a:3"]);
  assert.deepEqual(resume[0].since, { "a:1": V(7), "a:2": null, "a:3": V(7) });
  // the gateway answers: a:2 changed meanwhile
  ws().push({ type: "subscribed", id: resume[0].id, versions: { "a:1": V(7), "a:2": V(9), "a:3": V(7) }, watermark: V(9) });
  ws().push({ type: "invalidate", keys: { "a:2": V(9) } });
  assert.deepEqual(got.at(-1), { "a:2": V(9) });
  assert.equal(fw.versions.get("a:2"), V(9));
});

test("a large resume is split under the frame limit, one frame at a time", async (t) => {
  const { fw, ws, instances } = setup(t);
  const keys = Array.from({ length: 400 }, (_, i) => `k:${String(i).padStart(250, "0")}`);
  fw.subscribe(keys, () => {});
  await waitFor(() => instances.length === 1);
  ws().open();
  assert.equal(ws().frames("subscribe").length, 1, "the next frame waits for this one's reply");
  while (answer(ws()).length) { /* each answer lets the next frame out */ }
  const frames = ws().frames("subscribe");
  assert.ok(frames.length > 1);
  for (const f of frames) assert.ok(JSON.stringify(f).length < 65536);
  assert.deepEqual(frames.flatMap((f) => Object.keys(f.since)).sort(), keys.slice().sort());
});

test("getToken is called before every connect, including after 4001", async (t) => {
  let n = 0;
  const { fw, instances } = setup(t, { token: undefined, getToken: async () => `jwt-${++n}` });
  await waitFor(() => instances.length === 1);
  assert.equal(instances[0].url, "ws://gw.test/ws?token=jwt-1");
  instances[0].open();
  instances[0].serverClose(1006);
  await waitFor(() => instances.length === 2);
  assert.equal(instances[1].url, "ws://gw.test/ws?token=jwt-2");
  instances[1].open();
  instances[1].serverClose(4001, "token expired");
  assert.equal(fw.state, "reconnecting");
  await waitFor(() => instances.length === 3);
  assert.equal(n, 3);
  assert.equal(instances[2].url, "ws://gw.test/ws?token=jwt-3");
  instances[2].open();
  assert.equal(fw.state, "open");
});

test("a failing getToken is retried with backoff", async (t) => {
  let n = 0;
  const errors = [];
  const { fw, instances } = setup(t, {
    token: undefined, getToken: async () => { if (++n < 3) throw new Error("auth server down"); return "ok"; },
  });
  fw.on("error", (e) => errors.push(e));
  await waitFor(() => instances.length === 1);
  assert.equal(n, 3);
  assert.equal(instances[0].url, "ws://gw.test/ws?token=ok");
  assert.ok(errors.length >= 1);
});

test("4001 without getToken closes for good", async (t) => {
  const states = [];
  const errors = [];
  const { fw, instances } = setup(t, { onState: (s) => states.push(s) });
  fw.on("error", (e) => errors.push(e));
  await waitFor(() => instances.length === 1);
  const p = fw.await("fw1:1");
  instances[0].open();
  instances[0].serverClose(4001, "bad token");
  await assert.rejects(p, (err) => err.code === "disconnected");
  assert.equal(fw.state, "closed");
  assert.deepEqual(states, ["connecting", "open", "closed"]);
  assert.equal(errors.at(-1).code, "auth_failed");
  await sleep(30);
  assert.equal(instances.length, 1, "no reconnect");
});

test("state events come in order: connecting, open, reconnecting, open, closed", async (t) => {
  const fromOption = [];
  const fromEvent = [];
  const { fw, instances } = setup(t, { onState: (s) => fromOption.push(s) });
  const off = fw.on("state", (s) => fromEvent.push(s));
  await waitFor(() => instances.length === 1);
  instances[0].serverClose(1006);                    // fails before opening
  await waitFor(() => instances.length === 2);
  instances[1].open();
  instances[1].serverClose(1012);
  await waitFor(() => instances.length === 3);
  instances[2].open();
  fw.close();
  fw.close();
  off();
  assert.deepEqual(fromOption, ["connecting", "reconnecting", "open", "reconnecting", "open", "closed"]);
  assert.deepEqual(fromEvent, ["reconnecting", "open", "reconnecting", "open", "closed"]);
});

test("forbidden keys reject their caller's ready (with .keys) and are dropped; unavailable is retried", async (t) => {
  const { fw, ws } = await setupOpen(t, { random: () => 0 });
  const errors = [];
  fw.on("error", (e) => errors.push(e));
  const offOk = fw.subscribe(["ok:1"], () => {});
  const offMixed = fw.subscribe(["ok:2", "no:1"], () => {});
  await tick();
  const [f] = ws().frames("subscribe");
  assert.deepEqual(f.keys, ["ok:1", "ok:2", "no:1"]);
  ws().push({ type: "error", id: f.id, code: "forbidden", message: "not covered", keys: ["no:1"] });
  ws().push({ type: "subscribed", id: f.id, versions: { "ok:1": null, "ok:2": null }, watermark: null });
  assert.equal(errors[0].code, "forbidden");
  await offOk.ready;
  await assert.rejects(offMixed.ready, (err) => err instanceof FreshwireError && err.code === "forbidden"
    && err.frame.keys[0] === "no:1" && err.keys.length === 1 && err.keys[0] === "no:1");
  assert.deepEqual([...fw.versions.keys()], ["ok:1", "ok:2"], "the refused key is not kept");

  const busy = fw.subscribe(["busy:1"], () => {});
  await tick();
  const g = ws().frames("subscribe")[1];
  ws().push({ type: "error", id: g.id, code: "unavailable", message: "store down" });
  await waitFor(() => ws().frames("subscribe").length === 3, 1000, "a retry");
  const retry = ws().frames("subscribe")[2];
  assert.deepEqual(retry.keys, ["busy:1"]);
  assert.deepEqual(retry.since, { "busy:1": null });
  assert.notEqual(retry.id, g.id);
  answer(ws());
  await busy.ready;
});

test("a frame dropped with rate_limited (no id) is sent again after a back-off; ready resolves once live", async (t) => {
  const { fw, ws } = await setupOpen(t, { random: () => 0, maxBackoffMs: 10000 });   // pause: half of 250 ms
  const errors = [];
  fw.on("error", (e) => errors.push(e));
  const off = fw.subscribe(["k:1", "k:2"], () => {});
  let live = false;
  off.ready.then(() => { live = true; });
  await tick();
  const [first] = ws().frames("subscribe");
  ws().push({ type: "error", code: "rate_limited", message: "at most 50 messages/s" });
  fw.subscribe(["k:3"], () => {});
  await sleep(60);
  assert.equal(ws().frames("subscribe").length, 1, "paused");
  await waitFor(() => ws().frames("subscribe").length === 2, 1000, "the re-send");
  const again = ws().frames("subscribe")[1];
  assert.deepEqual(again.keys, ["k:1", "k:2", "k:3"]);
  assert.notEqual(again.id, first.id);
  assert.equal(live, false);
  answer(ws());
  await off.ready;
  assert.equal(errors[0].code, "rate_limited");
  assert.equal(fw.state, "open");
});

test("ready waits across a reconnect: the resume confirms what the lost socket never did", async (t) => {
  const { fw, ws, instances } = await setupOpen(t);
  const off = fw.subscribe(["k:1"], () => {});
  await tick();
  ws().serverClose(1006);                                   // before any reply
  await waitFor(() => instances.length === 2, 1000, "a reconnect");
  ws().open();
  assert.deepEqual(ws().frames("subscribe")[0].keys, ["k:1"]);
  answer(ws());
  await off.ready;
});

test("keys past maxSubscriptions reject their caller with too_many_keys, are dropped, and are reported as an error event", async (t) => {
  const { fw, ws } = await setupOpen(t, { maxSubscriptions: 2 });
  const errors = [];
  fw.on("error", (e) => errors.push(e));
  const first = fw.subscribe(["a:1", "a:2"], () => {});
  const second = fw.subscribe(["a:3"], () => {});
  await tick();
  assert.deepEqual(ws().frames("subscribe")[0].keys, ["a:1", "a:2"]);
  answer(ws());
  await first.ready;
  await assert.rejects(second.ready, (err) => err.code === "too_many_keys" && err.keys[0] === "a:3");
  assert.deepEqual([...fw.versions.keys()], ["a:1", "a:2"]);
  assert.deepEqual(errors.map((e) => [e.code, e.keys]), [["too_many_keys", ["a:3"]]]);
  first();                                                   // room again: a:3 may be asked again
  const third = fw.subscribe(["a:3"], () => {});
  await tick();
  answer(ws());
  await third.ready;
  assert.deepEqual(ws().frames("unsubscribe")[0].keys, ["a:1", "a:2"]);
});

test("close() rejects pending readies with closed; subscribe after close returns a rejected ready", async (t) => {
  const { fw } = await setupOpen(t);
  const off = fw.subscribe(["k:1"], () => {});
  fw.close();
  await assert.rejects(off.ready, (err) => err.code === "closed");
  const late = fw.subscribe(["k:2"], () => {});
  await assert.rejects(late.ready, (err) => err.code === "closed");
  late();
});

test("awaits are paced with the subscribes: past the burst they wait for tokens", async (t) => {
  const { fw, ws } = await setupOpen(t, { framesPerSecond: 100, frameBurst: 3 });
  for (let i = 0; i < 5; i++) fw.await(`fw1:${i}`).catch(() => {});
  assert.equal(ws().frames("await").length, 3, "the burst");
  await waitFor(() => ws().frames("await").length === 5, 1000, "the rest, paced");
});

test("invalid keys are refused synchronously (one bad key would break every resume)", async (t) => {
  const { fw } = setup(t);
  assert.throws(() => fw.subscribe(["has space"], () => {}), TypeError);
  assert.throws(() => fw.subscribe(["tenant:*"], () => {}), TypeError);
  assert.throws(() => fw.subscribe([""], () => {}), TypeError);
  assert.throws(() => fw.subscribe(["x".repeat(257)], () => {}), TypeError);
  assert.throws(() => fw.subscribe(["ok:1"]), TypeError);
  assert.equal(fw.versions.size, 0);
});

test("a listener that throws does not stop the others", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const got = [];
  const original = console.error;
  const logged = [];
  console.error = (e) => logged.push(e);
  t.after(() => { console.error = original; });
  fw.subscribe("k:1", () => { throw new Error("boom"); });
  fw.subscribe("k:1", (c) => got.push(c));
  ws().push({ type: "invalidate", keys: { "k:1": V(1) } });
  assert.deepEqual(got, [{ "k:1": V(1) }]);
  assert.equal(logged.length, 1);
});

test("lapse: onLapse listeners get the message after the invalidate's listeners; a throwing one does not stop the others; off() stops one", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const order = [];
  const original = console.error;
  const logged = [];
  console.error = (e) => logged.push(e);
  t.after(() => { console.error = original; });
  fw.subscribe("k:1", (c) => order.push(["invalidate", c]));
  fw.onLapse(() => { throw new Error("boom"); });
  const off = fw.onLapse((l) => order.push(["lapse", l]));
  fw.on("lapse", (l) => order.push(["on", l.reason]));
  const lapse = { type: "lapse", reason: "replica_lag", keys: ["k:1"], version: V(3), extra: 1 };
  ws().push({ type: "invalidate", keys: { "k:1": V(3) } });
  ws().push(lapse);
  assert.deepEqual(order, [["invalidate", { "k:1": V(3) }], ["lapse", lapse], ["on", "replica_lag"]]);
  assert.equal(logged.length, 1, "the throw was reported");
  off();
  ws().push({ ...lapse, reason: "flush" });
  assert.deepEqual(order.slice(3), [["on", "flush"]]);
  assert.equal(fw.state, "open");
  assert.throws(() => fw.onLapse("nope"), TypeError);
});

test("lagMs: the age of the oldest invalidation whose listener's promise is pending; 0 when none", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const original = console.error;
  const logged = [];
  console.error = (e) => logged.push(e);
  t.after(() => { console.error = original; });
  const settle = [];
  fw.subscribe("slow:1", () => new Promise((resolve, reject) => settle.push({ resolve, reject })));
  fw.subscribe("sync:1", () => 42);                  // done when it returns
  assert.equal(fw.lagMs(), 0);
  ws().push({ type: "invalidate", keys: { "sync:1": V(1) } });
  assert.equal(fw.lagMs(), 0, "a listener that returns no promise is done");
  ws().push({ type: "invalidate", keys: { "slow:1": V(1) } });
  await sleep(60);
  ws().push({ type: "invalidate", keys: { "slow:1": V(2) } });
  assert.ok(fw.lagMs() >= 55, `the first waits since 60 ms (${fw.lagMs()})`);
  settle[0].resolve();
  await tick();
  const lag = fw.lagMs();
  assert.ok(lag < 55, `now the second, younger one is the oldest (${lag})`);
  settle[1].reject(new Error("refetch failed"));
  await tick();
  assert.equal(fw.lagMs(), 0, "a rejected promise is done too");
  assert.equal(logged.length, 1, "and its rejection is reported");
});

test("lagMs counts an invalidation until every promise of its listeners settled (subscribers and the invalidate event)", async (t) => {
  const { fw, ws } = await setupOpen(t);
  let a, b;
  fw.subscribe("k:1", () => new Promise((r) => { a = r; }));
  fw.on("invalidate", () => new Promise((r) => { b = r; }));
  ws().push({ type: "invalidate", keys: { "k:1": V(1) } });
  await sleep(20);
  assert.ok(fw.lagMs() >= 15);
  a();
  await tick();
  assert.ok(fw.lagMs() >= 15, "the invalidate event's listener is still busy");
  b();
  await tick();
  assert.equal(fw.lagMs(), 0);
});

test("heartbeat: a connection that stays silent is dropped and resumed", async (t) => {
  const { fw, ws, instances } = await setupOpen(t, { pingIntervalMs: 15 });
  await waitFor(() => ws().frames("ping").length === 1, 1000, "a ping");
  const ping = ws().frames("ping")[0];
  ws().push({ type: "pong", id: ping.id });
  await waitFor(() => ws().frames("ping").length === 2, 1000, "a second ping");
  // no pong this time: the next tick drops the socket
  await waitFor(() => instances.length === 2, 1000, "a reconnect");
  assert.equal(instances[0].clientClose.code, 4000);
  assert.equal(fw.state, "reconnecting");
});

test("a socket that never opens is abandoned after openTimeoutMs", async (t) => {
  const { instances } = setup(t, { openTimeoutMs: 20 });
  await waitFor(() => instances.length === 2, 1000, "a second attempt");
  assert.ok(instances[0].clientClose);
});

test("without a WebSocket implementation connect() says how to pass one", () => {
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = undefined;
  try {
    assert.throws(() => connect("ws://x/ws", { token: "t" }), /options\.WebSocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("browser offline/online events drop the socket at once and reconnect when back online", async (t) => {
  const target = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener, nav: globalThis.navigator };
  const nav = { onLine: true };
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  Object.defineProperty(globalThis, "navigator", { value: nav, configurable: true, writable: true });
  t.after(() => {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    Object.defineProperty(globalThis, "navigator", { value: saved.nav, configurable: true, writable: true });
  });
  const { fw, instances } = await setupOpen(t, { minBackoffMs: 2, maxBackoffMs: 4 });
  nav.onLine = false;
  target.dispatchEvent(new Event("offline"));         // e.g. Playwright's setOffline leaves sockets up
  assert.equal(fw.state, "reconnecting");
  assert.ok(instances[0].clientClose);
  await sleep(40);
  assert.equal(instances.length, 1, "no attempt while offline");
  nav.onLine = true;
  target.dispatchEvent(new Event("online"));
  await waitFor(() => instances.length === 2, 200, "a reconnect when online");
  instances[1].open();
  assert.equal(fw.state, "open");
});

test("subscribe with since: a new key is subscribed from the caller's version; a key held newer is handed over at once", async (t) => {
  const { fw, ws } = await setupOpen(t);
  const got = [], late = [];
  fw.subscribe(["card:1", "board:1"], (c) => got.push(c), { since: { "card:1": V(7), "board:1": "not a version" } });
  await tick();
  const [f1] = ws().frames("subscribe");
  assert.deepEqual(f1.since, { "card:1": V(7), "board:1": null });
  answer(ws(), { "card:1": V(7) });
  ws().push({ type: "invalidate", keys: { "card:1": V(7) } });                  // already rendered: ignored
  ws().push({ type: "invalidate", keys: { "card:1": V(9) } });
  assert.deepEqual(got, [{ "card:1": V(9) }]);
  fw.subscribe("card:1", (c) => late.push(c), { since: { "card:1": V(8) } });   // rendered before V(9)
  await tick();
  assert.deepEqual(late, [{ "card:1": V(9) }]);
  assert.equal(fw.versions.get("card:1"), V(9), "a shared key is never moved by a caller's since");
  assert.throws(() => fw.subscribe("card:2", () => {}, { since: "x" }), TypeError);
});
