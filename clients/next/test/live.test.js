// Unit tests of @freshwire/next/live (the hook's core) with a fake client.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createLive } from "../live.js";

const V = (n) => n.toString(16).padStart(16, "0");
const tick = () => new Promise((r) => setTimeout(r, 2));

function fakeConnect() {
  const clients = [];
  const connect = (url, options) => {
    const fw = {
      url, options, state: "connecting", subs: [], closed: false,
      subscribe(keys, fn, opts) {
        const sub = { keys, fn, since: opts.since, active: true };
        this.subs.push(sub);
        const off = () => { sub.active = false; };
        off.ready = Promise.resolve();
        return off;
      },
      close() { this.closed = true; this.state = "closed"; options.onState?.("closed"); },
      lapses: [],
      onLapse(fn) { this.lapses.push(fn); return () => {}; },
      lapse(message) { for (const fn of this.lapses) fn(message); },
      push(changes) { for (const s of this.subs) if (s.active) s.fn(Object.fromEntries(Object.entries(changes).filter(([k]) => s.keys.includes(k)))); },
    };
    options.onState?.("connecting");
    clients.push(fw);
    return fw;
  };
  return { connect, clients };
}

test("watch subscribes from the render's versions on one shared connection", () => {
  const { connect, clients } = fakeConnect();
  const live = createLive({ connect, url: "ws://gw/ws", connectOptions: { token: "t" } });
  live.watch(["card:1"], { "card:1": V(5) });
  live.watch(["card:2", "board:1"], { "card:2": null, "board:1": V(3) });
  assert.equal(clients.length, 1);
  assert.equal(clients[0].options.token, "t");
  assert.deepEqual(clients[0].subs.map((s) => s.since), [{ "card:1": V(5) }, { "card:2": null, "board:1": V(3) }]);
  assert.equal(live.state, "connecting");
});

test("changes of many components in one tick make one refresh; a callback replaces the refresh", async () => {
  const { connect, clients } = fakeConnect();
  const refreshes = [];
  const own = [];
  const live = createLive({ connect, url: "ws://gw/ws", refresh: (c) => refreshes.push(c) });
  live.watch(["card:1"], {});
  live.watch(["card:2"], {});
  live.watch(["card:3"], {}, (c) => own.push(c));
  clients[0].push({ "card:1": V(9), "card:2": V(9), "card:3": V(9) });
  assert.deepEqual(refreshes, [], "not before the end of the tick");
  await tick();
  assert.deepEqual(refreshes, [{ "card:1": V(9), "card:2": V(9) }]);
  assert.deepEqual(own, [{ "card:3": V(9) }]);
});

test("the last release closes the connection after the tick; a re-mount at once keeps it", async () => {
  const { connect, clients } = fakeConnect();
  const live = createLive({ connect, url: "ws://gw/ws" });
  const states = [];
  live.onState((s) => states.push(s));
  const release = live.retain();
  release();
  const again = live.retain();                   // StrictMode: unmount and mount in one go
  await tick();
  assert.equal(clients[0].closed, false);
  again();
  again();                                        // twice is once
  await tick();
  assert.equal(clients[0].closed, true);
  assert.deepEqual(states, ["connecting", "closed"]);
  live.watch(["card:1"], {});
  assert.equal(clients.length, 2, "a new connection after a close");
});

test("a replica_lag lapse hands the lapsed keys on again after each retry delay; other lapses do not", async () => {
  const { connect, clients } = fakeConnect();
  const refreshes = [];
  const own = [];
  const live = createLive({ connect, url: "ws://gw/ws", refresh: (c) => refreshes.push(c), lapseRetryMs: [5, 15] });
  live.watch(["card:1", "card:2"], {});
  const off = live.watch(["card:3"], {}, (c) => own.push(c));
  clients[0].lapse({ type: "lapse", reason: "resync", keys: ["card:1"], version: V(8) });
  clients[0].lapse({ type: "lapse", reason: "replica_lag", keys: ["card:1", "card:3"], version: V(9) });
  await new Promise((r) => setTimeout(r, 40));
  assert.deepEqual(refreshes, [{ "card:1": V(9) }, { "card:1": V(9) }]);
  assert.deepEqual(own, [{ "card:3": V(9) }, { "card:3": V(9) }]);
  off();
  clients[0].lapse({ type: "lapse", reason: "replica_lag", keys: ["card:3"], version: V(10) });
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(own.length, 2, "an unwatched key is not handed on");
  live.close();
});
