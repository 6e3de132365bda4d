// Unit tests of Outbox, the client's sans-I/O scheduler of subscribe/unsubscribe frames: time is
// passed in, frames are plain objects, the gateway is played by the test.
// Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { attemptAfterClose, backoffDelay, Outbox } from "../freshwire.js";

/** An outbox at time 0 with deterministic jitter, and helpers to drive it. */
function rig(options = {}) {
  const box = new Outbox({ random: () => 1, ...options });
  let id = 1;
  const r = {
    box,
    now: 0,
    /** Everything sendable now: frames (and other requests) in order. */
    drain(othersOnly = false) {
      const out = [];
      for (;;) {
        const step = box.next(r.now, id, othersOnly);
        if (step === null || step.waitMs !== undefined) { r.wait = step?.waitMs ?? null; return out; }
        if (step.op !== "other") id += 1;
        out.push(step);
      }
    },
    one() {
      const [frame, ...rest] = r.drain();
      assert.equal(rest.length, 0, "one frame in flight at a time");
      return frame;
    },
    subscribed(frame, versions = Object.fromEntries(frame.keys.map((k) => [k, null]))) {
      return box.onReply({ type: "subscribed", id: frame.id, versions, watermark: null }, r.now);
    },
    unsubscribed(frame) { return box.onReply({ type: "unsubscribed", id: frame.id, keys: frame.keys }, r.now); },
    error(frame, code, keys) { return box.onReply({ type: "error", id: frame.id, code, message: code, ...(keys ? { keys } : {}) }, r.now); },
    settled() { return box.take().filter((e) => e.type === "settled"); },
  };
  return r;
}

const keys = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}:${i}`);

test("wants and unwants made before the next frame merge into one; a key wanted and unwanted meanwhile is never sent", () => {
  const r = rig();
  r.box.want(["a"]);
  r.box.want(["b", "a"]);
  r.box.want(["flip"]);
  r.box.unwant(["flip"]);
  const f = r.one();
  assert.deepEqual(f, { op: "subscribe", id: 1, keys: ["a", "b"] });
  assert.equal(r.wait, 10000, "then it waits for the reply (at most replyTimeoutMs)");
  r.subscribed(f);
  assert.deepEqual(r.drain(), []);
  assert.equal(r.wait, null, "idle");
  r.box.unwant(["a"]);
  r.box.want(["a"]);                                       // unwanted and wanted again: stays live, no frame
  assert.deepEqual(r.drain(), []);
});

test("frames hold at most keysPerFrame keys and about frameBytes bytes; unsubscribes go first", () => {
  const r = rig({ keysPerFrame: 3, frameBytes: 64 + 2 * (2 * 5 + 30) });   // room for two 5-char keys
  r.box.want(["k:001", "k:002", "k:003"]);
  const f1 = r.one();
  assert.deepEqual(f1.keys, ["k:001", "k:002"]);
  r.subscribed(f1);
  r.box.want(["k:004"]);
  r.box.unwant(["k:001"]);
  const f2 = r.one();
  assert.deepEqual([f2.op, f2.keys], ["unsubscribe", ["k:001"]]);
  r.unsubscribed(f2);
  const f3 = r.one();
  assert.deepEqual([f3.op, f3.keys], ["subscribe", ["k:003", "k:004"]]);
  const big = rig({ keysPerFrame: 2 });
  big.box.want(["x", "y", "z"]);
  assert.deepEqual(big.one().keys, ["x", "y"]);
});

test("a ticket settles when all its keys are live, refused or no longer wanted", () => {
  const r = rig();
  r.box.want(["a", "b"], "T1");
  r.box.want(["b"], "T2");
  assert.deepEqual(r.settled(), []);
  const f = r.one();
  r.error(f, "forbidden", ["b"]);
  assert.deepEqual(r.box.take().map((e) => [e.type, e.ticket ?? e.keys, e.error?.code, e.error?.keys]), [
    ["refused", ["b"], undefined, undefined],
    ["settled", "T2", "forbidden", ["b"]],
  ]);
  r.subscribed(f, { a: null });
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T1", { code: "forbidden", message: "forbidden", frame: { type: "error", id: 1, code: "forbidden", message: "forbidden", keys: ["b"] }, keys: ["b"] }]]);
  r.box.want(["a"], "T3");                                 // already live: at once
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T3", null]]);
  r.box.want(["c"], "T4");
  r.box.unwant(["c"]);                                     // given up before it was sent
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T4", null]]);
  assert.deepEqual(r.drain(), []);
});

test("unsubscribe tickets settle once the gateway confirmed; a reset settles them too", () => {
  const r = rig();
  r.box.want(["a", "b"]);
  r.subscribed(r.one());
  r.box.unwant(["a"], "U1");
  r.box.unwant(["b"], "U2");
  const f = r.one();
  assert.deepEqual(f.keys, ["a", "b"]);
  assert.deepEqual(r.settled(), []);
  r.unsubscribed(f);
  assert.deepEqual(r.settled().map((e) => e.ticket), ["U1", "U2"]);
  r.box.want(["c"]);
  r.subscribed(r.one());
  r.box.unwant(["c"], "U3");
  r.box.reset(r.now);                                      // a new connection never had it
  assert.deepEqual(r.settled().map((e) => e.ticket), ["U3"]);
});

test("every frame spends a token: bursts of `burst`, then `rate` per second", () => {
  const r = rig({ rate: 40, burst: 40 });
  for (let i = 0; i < 100; i++) r.box.enqueue(i);
  assert.equal(r.drain().length, 40);
  assert.equal(r.wait, 25);
  r.now = 25;
  assert.deepEqual(r.drain().map((s) => s.item), [40]);
  r.now = 1025;
  assert.equal(r.drain().length, 40, "40 more a second later");
  r.box.want(["a"]);
  r.now = 1075;                                            // two tokens
  assert.deepEqual(r.drain().map((s) => s.op), ["subscribe", "other"], "subscribes first");
});

test("othersOnly sends queued requests without building a subscribe frame", () => {
  const r = rig();
  r.box.want(["a"]);
  r.box.enqueue("await-1");
  assert.deepEqual(r.drain(true), [{ op: "other", item: "await-1" }]);
  assert.deepEqual(r.drain().map((s) => s.op), ["subscribe"]);
});

test("rate_limited while a frame is in flight: the frame is sent again after a growing back-off", () => {
  const r = rig();
  r.box.want(["a", "b"], "T");
  const f1 = r.one();
  r.box.onRateLimited(r.now);
  assert.deepEqual(r.drain(), []);
  assert.equal(r.wait, 250, "first pause: 250 ms (random() = 1)");
  r.now = 250;
  r.box.want(["c"]);
  const f2 = r.one();
  assert.deepEqual(f2.keys, ["a", "b", "c"], "what is still needed, with what came meanwhile");
  r.box.onRateLimited(r.now);
  r.drain();
  assert.equal(r.wait, 500, "doubled for a second strike in a row");
  r.now = 750;
  const f3 = r.one();
  r.subscribed(f3);
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T", null]]);
  r.box.want(["d"]);
  r.one();
  r.box.onRateLimited(r.now);
  r.drain();
  assert.equal(r.wait, 250, "a reply in between resets the strikes");
  assert.equal(r.subscribed(f1), true, "a late reply of a dropped frame is still ours");
});

test("a late reply of a frame taken as lost is applied: the gateway's state is what replies say", () => {
  const r = rig({ replyTimeoutMs: 100 });
  r.box.want(["a"]);
  const f1 = r.one();
  r.now = 100;                                             // no reply: lost, sent again
  const f2 = r.one();
  assert.deepEqual(f2.keys, ["a"]);
  assert.notEqual(f2.id, f1.id);
  r.box.unwant(["a"]);
  r.subscribed(f1);                                        // the first did arrive after all
  r.subscribed(f2);
  const f3 = r.one();
  assert.deepEqual([f3.op, f3.keys], ["unsubscribe", ["a"]], "so `a` is live and must be unsubscribed");
  r.unsubscribed(f3);
  assert.deepEqual(r.drain(), []);
});

test("unavailable: the subscribe is retried with back-off, other requests are not held", () => {
  const r = rig({ minBackoffMs: 100, maxBackoffMs: 1000 });
  r.box.want(["a"], "T");
  r.error(r.one(), "unavailable");
  r.box.enqueue("await");
  assert.deepEqual(r.drain().map((s) => s.op), ["other"]);
  assert.equal(r.wait, 200, "random() * min(max, min * 2^tries)");
  r.now = 200;
  const retry = r.one();
  assert.deepEqual(retry.keys, ["a"]);
  r.error(retry, "unavailable");
  r.drain();
  assert.equal(r.wait, 400);
  r.now = 600;
  r.subscribed(r.one());
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T", null]]);
});

test("forbidden for every key of a frame ends it (no reply follows); keys left out of `versions` are refused", () => {
  const r = rig();
  r.box.want(["x", "y"], "T1");
  r.error(r.one(), "forbidden", ["x", "y"]);
  assert.deepEqual(r.settled().map((e) => e.error.keys), [["x", "y"]]);
  r.box.want(["ok", "x", "z"], "T2");
  const f = r.one();
  r.error(f, "forbidden", ["x"]);                           // the list stops at 100 keys: z is not named
  r.subscribed(f, { ok: null });
  const [refusedZ] = r.box.take().filter((e) => e.type === "refused" && e.keys.includes("z"));
  assert.equal(refusedZ.code, "forbidden");
  r.box.want(["z"], "T3");
  assert.equal(r.one().keys[0], "z", "asked again: sent again");
});

test("too_many_keys: past maxKeys keys are refused once the connection is full, first asked first served", () => {
  const r = rig({ maxKeys: 3 });
  r.box.want(["a", "b"], "T1");
  r.box.want(["c", "d", "e"], "T2");
  const f = r.one();
  assert.deepEqual(f.keys, ["a", "b", "c"]);
  r.subscribed(f);
  assert.deepEqual(r.drain(), []);
  const events = r.box.take();
  assert.deepEqual(events.map((e) => [e.type, e.ticket ?? e.keys, e.error?.code, e.frame]), [
    ["settled", "T1", undefined, undefined],
    ["refused", ["d", "e"], undefined, undefined],
    ["settled", "T2", "too_many_keys", undefined],
  ]);
  assert.deepEqual(events[2].error.keys, ["d", "e"]);
  r.box.unwant(["a"]);
  r.box.want(["d"], "T3");
  r.unsubscribed(r.one());
  r.subscribed(r.one());
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T3", null]]);
});

test("refusals of a whole frame: too_many_keys from the gateway ends every key; invalid_key only the named ones", () => {
  const r = rig();
  r.box.want(["a", "b"], "T1");
  r.error(r.one(), "too_many_keys");
  assert.deepEqual(r.settled().map((e) => e.error.keys), [["a", "b"]]);
  r.box.want(["c", "bad", "d"], "T2");
  r.error(r.one(), "invalid_key", ["bad"]);
  const again = r.one();
  assert.deepEqual(again.keys, ["c", "d"]);
  r.subscribed(again);
  assert.deepEqual(r.settled().map((e) => [e.error.code, e.error.keys]), [["invalid_key", ["bad"]]]);
});

test("reset: nothing live or in flight any more, every wanted key goes out again, tickets are kept", () => {
  const r = rig();
  r.box.want(["a", "b"]);
  r.subscribed(r.one());
  r.box.want(["c"], "T");
  const lost = r.one();
  r.box.reset(r.now);
  const resume = r.one();
  assert.deepEqual(resume.keys, ["a", "b", "c"]);
  assert.equal(r.box.onReply({ type: "subscribed", id: lost.id, versions: { c: null } }, r.now), false, "the old socket's frames are forgotten");
  r.subscribed(resume);
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error]), [["T", null]]);
});

test("failAll settles every ticket with the code and hands back the requests never sent", () => {
  const r = rig();
  r.box.want(["a"], "T");
  r.box.enqueue("await");
  assert.deepEqual(r.box.failAll("closed", "the client is closed"), ["await"]);
  assert.deepEqual(r.settled().map((e) => [e.ticket, e.error.code, e.error.keys]), [["T", "closed", ["a"]]]);
});

test("reconnect policy: full jitter, capped; the attempt count resets after 30 s up or a restart close", () => {
  assert.equal(backoffDelay(0, 100, 10000, () => 1), 100);
  assert.equal(backoffDelay(3, 100, 10000, () => 0.5), 400);
  assert.equal(backoffDelay(20, 100, 10000, () => 1), 10000);
  assert.equal(attemptAfterClose(5, 29999, 1006), 5, "a short-lived connection keeps the back-off growing");
  assert.equal(attemptAfterClose(5, 100, 4013), 5);
  assert.equal(attemptAfterClose(5, 30000, 1006), 0);
  assert.equal(attemptAfterClose(5, 10, 1012), 0, "a restarting gateway: reconnect at once");
  assert.equal(attemptAfterClose(5, 10, 1001), 0);
});

/** The gateway's side, as gateway/ws.py and session.py do it: frames read in order, a token bucket
 *  (rate, bursts of twice that) that drops frames with `rate_limited`, replies in order. */
class ModelGateway {
  constructor(rate = 50, strict = 0) {
    Object.assign(this, { rate, capacity: 2 * rate, tokens: 2 * rate, stamp: 0, strict, known: new Set(), strikes: 0, maxStrikes: 0, dropped: 0 });
  }

  read(frame, now, random) {
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.stamp) * this.rate) / 1000);
    this.stamp = now;
    if (this.tokens < 1 || random() < this.strict) {
      this.strikes += 1;
      this.maxStrikes = Math.max(this.maxStrikes, this.strikes);
      this.dropped += 1;
      return { type: "error", code: "rate_limited", message: "slow down" };
    }
    this.tokens -= 1;
    this.strikes = 0;
    if (frame.op === "unsubscribe") {
      for (const k of frame.keys) this.known.delete(k);
      return { type: "unsubscribed", id: frame.id, keys: frame.keys };
    }
    for (const k of frame.keys) this.known.add(k);
    return { type: "subscribed", id: frame.id, versions: Object.fromEntries(frame.keys.map((k) => [k, null])), watermark: null };
  }
}

function seeded(seed) {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return (x >>> 0) / 2 ** 32; };
}

for (const [name, strict] of [["the documented gateway", 0], ["a gateway dropping 30% of frames on top", 0.3]]) {
  test(`simulation against ${name}: the gateway ends with exactly the wanted keys, every ticket settles`, () => {
    for (let seed = 1; seed <= 20; seed++) {
      const random = seeded(seed);
      const box = new Outbox({ random, replyTimeoutMs: 2000 });
      const gw = new ModelGateway(50, strict);
      const universe = keys("k", 300);
      const wanted = new Set();
      const tickets = new Set();
      const inFlight = [];                                  // [arrival ms, frame] on the wire, in order
      const replies = [];                                   // [arrival ms, message]
      let id = 1;
      let now = 0;
      for (let step = 0; step < 4000; step++) {
        now += random() < 0.5 ? 0 : Math.floor(random() * 8);
        if (step < 3000 && random() < 0.6) {               // the application: bursts of calls
          const key = universe[Math.floor(random() * universe.length)];
          if (random() < 0.7) {
            const ticket = { key };
            tickets.add(ticket);
            wanted.add(key);
            box.want([key], ticket);
          } else {
            wanted.delete(key);
            box.unwant([key]);
          }
        }
        for (;;) {                                          // the client sends what it may
          const s = box.next(now, id);
          if (s === null || s.waitMs !== undefined) break;
          id += 1;
          inFlight.push([now + 1 + Math.floor(random() * 3), s]);
        }
        while (inFlight.length && inFlight[0][0] <= now) {  // the gateway reads in order
          const [at, frame] = inFlight.shift();
          replies.push([at + 1 + Math.floor(random() * 3), gw.read(frame, at, random)]);
        }
        while (replies.length && replies[0][0] <= now) {    // replies come back in order
          const [, msg] = replies.shift();
          if (msg.code === "rate_limited") box.onRateLimited(now);
          else box.onReply(msg, now);
        }
        for (const e of box.take()) {
          assert.notEqual(e.type, "refused", `seed ${seed}: nothing is refused here`);
          tickets.delete(e.ticket);
        }
        if (step >= 3000 && !inFlight.length && !replies.length && box.next(now, id) === null) break;
        if (step >= 3000) now += 50;
      }
      assert.deepEqual([...gw.known].sort(), [...wanted].sort(), `seed ${seed}: the gateway holds the wanted keys`);
      assert.equal(tickets.size, 0, `seed ${seed}: every ticket settled`);
      if (!strict) assert.equal(gw.dropped, 0, `seed ${seed}: never rate limited`);
      assert.ok(gw.maxStrikes < 20, `seed ${seed}: ${gw.maxStrikes} rate_limited in a row (4008 after 20)`);
    }
  });
}
