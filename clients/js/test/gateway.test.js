// The JS client against a real gateway: uvicorn with the in-memory backend, one per test, started by
// gateway_fixture.py on a free 127.0.0.1 port (the repo's .venv python, or $FRESHWIRE_PYTHON).
// Issue #11, item 1: bursts of subscribe() calls must all end up subscribed on the gateway, or be
// reported to their caller as refused, without tripping the gateway's rate limit.
// Run: node --test clients/js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { connect } from "../freshwire.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, "../../..");
const VENV_PYTHON = join(ROOT, ".venv/bin/python");
const PYTHON = process.env.FRESHWIRE_PYTHON ?? (existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3");
const START_TIMEOUT_MS = 20000;
const TEST_TIMEOUT_MS = 40000;
const V = (n) => n.toString(16).padStart(16, "0");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await cond();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Start a gateway; stopped when the test ends. */
async function gateway(t, args = []) {
  const child = spawn(PYTHON, [join(HERE, "gateway_fixture.py"), "--lifetime-s", "90", ...args], {
    cwd: ROOT, env: { ...process.env, PYTHONPATH: ROOT }, stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => { stderr += d; });
  t.after(() => { child.stdin.end(); child.kill(); });
  const port = await new Promise((resolvePort, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`no gateway within ${START_TIMEOUT_MS} ms: ${stderr}`)), START_TIMEOUT_MS);
    child.stdout.on("data", (d) => {
      out += d;
      const m = /READY (\d+)/.exec(out);
      if (m) { clearTimeout(timer); resolvePort(Number(m[1])); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`the gateway exited (${code}): ${stderr}`)); });
  });
  const base = `http://127.0.0.1:${port}`;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    token: async (patterns = ["*"]) => (await fetch(`${base}/test/token?patterns=${encodeURIComponent(patterns.join(","))}`)).text(),
    release: async (version, keys, lapse) => {
      const r = await fetch(`${base}/test/release`, { method: "POST", body: JSON.stringify({ version, keys, lapse }) });
      assert.equal(r.status, 200);
    },
    state: async () => (await fetch(`${base}/test/state`)).json(),
  };
}

/** A client on `gw`, open, with every state change and error frame recorded; closed after the test. */
async function client(t, gw, options = {}) {
  const token = await gw.token(options.patterns);
  const states = [];
  const errors = [];
  const fw = connect(gw.url, { token, pingIntervalMs: 0, onState: (s) => states.push(s), ...options });
  fw.on("error", (e) => errors.push(e));
  t.after(() => fw.close());
  await waitFor(() => fw.state === "open", 5000, "the client to open");
  return { fw, states, errors };
}

/** Every key the gateway holds for the client (there is one connection, or none while it reconnects). */
async function held(gw) {
  const { sessions } = await gw.state();
  assert.ok(sessions.length <= 1, "at most one connection");
  return new Set(sessions[0] ?? []);
}

/** Release one version for `keys` and wait until every one reached its own listener. */
async function deliverEach(gw, keys, got, version) {
  await gw.release(version, keys);
  await waitFor(() => keys.every((k) => got.get(k) === version), 10000,
    `${version} at every listener (${keys.filter((k) => got.get(k) !== version).length} of ${keys.length} missing)`);
}

/** What must hold after a burst: every key live on the gateway, no rate limiting, no reconnect. */
async function assertAllLive(gw, fw, states, errors, keys) {
  await waitFor(async () => (await held(gw)).size >= keys.length, 10000,
    `the gateway to hold ${keys.length} keys (holds ${(await held(gw)).size})`).catch(async (err) => {
    const s = await gw.state();
    throw new Error(`${err.message}; rate_limited sent: ${s.rate_limited}, closes: ${JSON.stringify(s.closes)}, client states: ${states.join(",")}`);
  });
  assert.deepEqual([...(await held(gw))].sort(), [...keys].sort());
  const s = await gw.state();
  assert.equal(s.rate_limited, 0, "the client stays under the gateway's rate limit");
  assert.deepEqual(s.closes, {}, "no policy close");
  assert.deepEqual(states, ["connecting", "open"], "no reconnect");
  assert.equal(errors.filter((e) => e.code === "rate_limited").length, 0);
  assert.equal(fw.state, "open");
}

function subscribeEach(fw, keys, got) {
  return keys.map((k) => fw.subscribe([k], (changes) => got.set(k, changes[k])));
}

/** The environment minus the test runner's marker, so that the nested `node --test` runs as a runner. */
function withoutTestContext() {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  return env;
}

if (typeof globalThis.WebSocket !== "function") {
  // Node 20 has a WebSocket only behind a flag: run this file again with it.
  test("against a real gateway (this file, run again with --experimental-websocket)", { timeout: 5 * TEST_TIMEOUT_MS }, (t) => {
    const run = spawnSync(process.execPath, ["--experimental-websocket", "--test", "--test-reporter=spec", fileURLToPath(import.meta.url)],
      { encoding: "utf8", timeout: 5 * TEST_TIMEOUT_MS - 5000, env: withoutTestContext() });
    for (const line of run.stdout.split("\n").filter((l) => /^\s*[✔✖]/.test(l))) t.diagnostic(line.trim());
    assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  });
} else {
  test("1,000 subscribe() calls at once: every key is live on the gateway and gets its invalidation", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw, states, errors } = await client(t, gw);
    const keys = Array.from({ length: 1000 }, (_, i) => `burst:${i}`);
    const got = new Map();
    const offs = subscribeEach(fw, keys, got);
    await Promise.all(offs.map((off) => off.ready));
    await assertAllLive(gw, fw, states, errors, keys);
    await deliverEach(gw, keys, got, V(7));
  });

  test("300 subscribe() calls 5 ms apart: every key is live on the gateway and gets its invalidation", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw, states, errors } = await client(t, gw);
    const keys = Array.from({ length: 300 }, (_, i) => `spread:${i}`);
    const got = new Map();
    const offs = [];
    for (const key of keys) {
      offs.push(...subscribeEach(fw, [key], got));
      await sleep(5);
    }
    await Promise.all(offs.map((off) => off.ready));
    await assertAllLive(gw, fw, states, errors, keys);
    await deliverEach(gw, keys, got, V(9));
  });

  test("bursts of unsubscribes and subscribes: the gateway ends with exactly the keys still wanted", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw, states, errors } = await client(t, gw);
    const keys = Array.from({ length: 1000 }, (_, i) => `churn:${i}`);
    const got = new Map();
    const offs = subscribeEach(fw, keys, got);
    await Promise.all(offs.map((off) => off.ready));
    offs.slice(0, 600).forEach((off) => off());                       // 600 unsubscribes in one tick
    const more = Array.from({ length: 400 }, (_, i) => `churn:new:${i}`);
    const offsMore = subscribeEach(fw, more, got);                    // and 400 new keys: 1,000 again
    const flip = fw.subscribe(["churn:flip"], () => {});              // subscribed and unsubscribed in
    flip();                                                           // one tick: never sent
    await Promise.all(offsMore.map((off) => off.ready));
    const want = [...keys.slice(600), ...more];
    await assertAllLive(gw, fw, states, errors, want);
    await deliverEach(gw, want, got, V(11));
    assert.equal(got.has("churn:0"), false, "no invalidation for an unsubscribed key");
  });

  test("keys past max_subscriptions and keys the token does not cover are reported to their callers, not kept", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw, states } = await client(t, gw, { patterns: ["ok:*"] });
    const okKeys = Array.from({ length: 1100 }, (_, i) => `ok:${i}`);
    const noKeys = Array.from({ length: 50 }, (_, i) => `no:${i}`);
    const got = new Map();
    const offs = subscribeEach(fw, [...noKeys, ...okKeys], got);
    const results = await Promise.allSettled(offs.map((off) => off.ready));
    const code = (i) => (results[i].status === "fulfilled" ? "ok" : results[i].reason?.code);
    const codes = results.map((_, i) => code(i));
    assert.deepEqual(codes.slice(0, 50), Array(50).fill("forbidden"));
    assert.deepEqual(codes.slice(50, 1050), Array(1000).fill("ok"));
    assert.deepEqual(codes.slice(1050), Array(100).fill("too_many_keys"), "first asked, first served");
    assert.deepEqual(results[0].reason.keys, ["no:0"]);
    assert.deepEqual([...fw.versions.keys()].sort(), okKeys.slice(0, 1000).sort(), "refused keys are not kept");
    assert.deepEqual([...(await held(gw))].sort(), okKeys.slice(0, 1000).sort());
    assert.deepEqual(states, ["connecting", "open"]);
    await deliverEach(gw, okKeys.slice(0, 1000), got, V(13));
  });

  test("a lapse reaches every onLapse listener after the invalidate it concerns; a throwing listener stops no other", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw, states } = await client(t, gw);
    const original = console.error;
    const reported = [];
    console.error = (e) => reported.push(e);
    t.after(() => { console.error = original; });
    const log = [];
    const off = fw.subscribe(["lapse:1", "lapse:2"], (c) => log.push(["invalidate", c]));
    await off.ready;
    fw.onLapse(() => { throw new Error("boom"); });
    fw.onLapse((l) => log.push(["lapse", l]));
    await gw.release(V(21), ["lapse:1", "other:1"], "replica_lag");
    await waitFor(() => log.length >= 2, 5000, "the lapse");
    assert.deepEqual(log, [
      ["invalidate", { "lapse:1": V(21) }],
      ["lapse", { type: "lapse", reason: "replica_lag", keys: ["lapse:1"], version: V(21) }],
    ], "after its invalidate, naming only this connection's keys");
    assert.equal(reported.length, 1, "the throwing listener was reported");
    await gw.release(V(22), ["lapse:2"], "flush");                    // the client goes on
    await waitFor(() => log.length >= 4, 5000, "the second lapse");
    assert.deepEqual(log.slice(2).map(([kind, x]) => (kind === "lapse" ? x.reason : x)), [{ "lapse:2": V(22) }, "flush"]);
    assert.deepEqual(states, ["connecting", "open"], "no reconnect");
    assert.equal(fw.lagMs(), 0, "listeners returned no promise: nothing waits");
  });

  test("lagMs against a real gateway: an invalidation whose listener is still busy counts until it settles", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t);
    const { fw } = await client(t, gw);
    let finish = null;
    const off = fw.subscribe(["busy:1"], () => new Promise((r) => { finish = r; }));
    await off.ready;
    await gw.release(V(31), ["busy:1"]);
    await waitFor(() => finish !== null, 5000, "the invalidation");
    await sleep(100);
    assert.ok(fw.lagMs() >= 95, `waiting since 100 ms (${fw.lagMs()})`);
    finish();
    await waitFor(() => fw.lagMs() === 0, 1000, "lag back to 0");
  });

  test("a gateway stricter than documented (5 frames/s): dropped frames are re-sent until every key is live", { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const gw = await gateway(t, ["--max-messages-per-s", "5"]);
    const { fw, states, errors } = await client(t, gw);
    const keys = Array.from({ length: 300 }, (_, i) => `strict:${i}`);
    const got = new Map();
    const offs = [];
    for (const key of keys) {
      offs.push(...subscribeEach(fw, [key], got));
      await sleep(5);
    }
    await Promise.all(offs.map((off) => off.ready));
    await waitFor(async () => (await held(gw)).size === keys.length, 15000, "every key live");
    const s = await gw.state();
    assert.ok(s.rate_limited > 0, "the gateway did drop frames");
    assert.deepEqual(s.closes, {}, "never closed with 4008");
    assert.deepEqual(states, ["connecting", "open"], "no reconnect");
    assert.ok(errors.some((e) => e.code === "rate_limited"));
    await deliverEach(gw, keys, got, V(15));
  });
}
