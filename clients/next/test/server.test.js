// Unit tests of @freshwire/next/server with a fake pool, a fake fetch and a fake next/cache.
// Run: node --test clients/next/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { UNKNOWN_VERSION, WRITE_TOKEN_SQL, createFreshwire, mintToken, readVersions, revalidate, waitVisible, writeToken } from "../server.js";

const GW = "http://gw.test:8080";

function fakePool(log, { token = "fw1:42", failOn = null } = {}) {
  const client = {
    async query(sql) {
      log.push(sql === WRITE_TOKEN_SQL ? "TOKEN" : sql);
      if (failOn && sql.startsWith(failOn)) throw new Error(`failed: ${failOn}`);
      return sql === WRITE_TOKEN_SQL ? { rows: [{ token, _lsn: "0/1" }] } : { rows: [], rowCount: 1 };
    },
    release() { log.push("release"); },
  };
  return { async connect() { log.push("connect"); return client; } };
}

function fakeFetch(log, answer) {
  return async (url, init) => {
    log.push(`fetch ${url} ${init.headers.Authorization}`);
    const { status, body } = typeof answer === "function" ? answer(url) : answer;
    return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
  };
}

function fakeCache(log, { withUpdateTag = true } = {}) {
  return {
    revalidateTag: (tag, profile) => log.push(`revalidateTag ${tag} ${JSON.stringify(profile)}`),
    revalidatePath: (path, type) => log.push(`revalidatePath ${path}${type ? ` ${type}` : ""}`),
    ...(withUpdateTag ? { updateTag: (tag) => log.push(`updateTag ${tag}`) } : {}),
  };
}

test("writeToken runs the one token statement in the caller's transaction", async () => {
  const log = [];
  const client = await fakePool(log).connect();
  assert.equal(await writeToken(client), "fw1:42");
  assert.deepEqual(log, ["connect", "TOKEN"]);
  assert.match(WRITE_TOKEN_SQL, /pg_current_xact_id\(\).*pg_logical_emit_message\(true, 'freshwire\.token', ''\)/s);
  assert.ok(!WRITE_TOKEN_SQL.includes(";"), "one statement");
  await assert.rejects(writeToken({ query: async () => ({ rows: [] }) }), /no token/);
});

test("mintToken makes an HS256 JWT with the key patterns, checkable with the secret", () => {
  const jwt = mintToken("s3cret", { subject: "srv", keys: ["tenant:1:*"], ttlS: 60, now: 1_700_000_000_000 });
  const [head, body, sig] = jwt.split(".");
  assert.deepEqual(JSON.parse(Buffer.from(head, "base64url")), { alg: "HS256", typ: "JWT" });
  assert.deepEqual(JSON.parse(Buffer.from(body, "base64url")),
    { sub: "srv", fw_keys: ["tenant:1:*"], iat: 1_700_000_000, exp: 1_700_000_060 });
  assert.equal(sig, createHmac("sha256", "s3cret").update(`${head}.${body}`).digest("base64url"));
  assert.throws(() => mintToken(""), TypeError);
});

test("waitVisible: 200 is visible with its version; 408, 503 and a dead gateway are not, and never throw", async () => {
  const log = [];
  const ok = await waitVisible("fw1:7", { gatewayUrl: "ws://gw.test:8080/ws", credential: "jwt", timeoutMs: 900,
    fetch: fakeFetch(log, { status: 200, body: { visible: true, token: "fw1:7", version: "00000000000000ff" } }) });
  assert.equal(ok.visible, true);
  assert.equal(ok.version, "00000000000000ff");
  assert.deepEqual(log, ["fetch http://gw.test:8080/v1/wait?token=fw1%3A7&timeout_ms=900 Bearer jwt"]);
  const late = await waitVisible("fw1:7", { gatewayUrl: GW, credential: () => "jwt",
    fetch: fakeFetch([], { status: 408, body: { error: { code: "timeout", message: "not released" } } }) });
  assert.deepEqual([late.visible, late.code], [false, "timeout"]);
  const busy = await waitVisible("fw1:7", { gatewayUrl: GW, credential: "jwt",
    fetch: fakeFetch([], { status: 503, body: { error: { code: "too_many_awaits" } } }) });
  assert.deepEqual([busy.visible, busy.code], [false, "too_many_awaits"]);
  const down = await waitVisible("fw1:7", { gatewayUrl: GW, credential: "jwt", fetch: async () => { throw new Error("ECONNREFUSED"); } });
  assert.deepEqual([down.visible, down.code], [false, "unreachable"]);
});

test("readVersions asks /v1/versions for the keys once each, and fails loudly on a refusal", async () => {
  const log = [];
  const got = await readVersions(["card:1", "board:1", "card:1"], { gatewayUrl: GW, credential: "jwt",
    fetch: fakeFetch(log, { status: 200, body: { versions: { "card:1": "0000000000000010", "board:1": null }, watermark: "0000000000000020" } }) });
  assert.deepEqual(got, { versions: { "card:1": "0000000000000010", "board:1": null }, watermark: "0000000000000020" });
  assert.deepEqual(log, ["fetch http://gw.test:8080/v1/versions?keys=card%3A1,board%3A1 Bearer jwt"]);
  await assert.rejects(readVersions(["card:1"], { gatewayUrl: GW, credential: "jwt",
    fetch: fakeFetch([], { status: 403, body: { error: { code: "forbidden" } } }) }), /403 forbidden/);
  await assert.rejects(readVersions(["bad key"], { gatewayUrl: GW, credential: "jwt" }), TypeError);
});

test("readVersions retries a 503 or an unreachable gateway, then renders every key as possibly stale", async () => {
  let calls = 0;
  const flaky = async () => {
    calls += 1;
    return calls < 3 ? { status: 503, json: async () => ({ error: { code: "unavailable" } }) }
      : { status: 200, json: async () => ({ versions: { "card:1": "0000000000000010" }, watermark: null }) };
  };
  const later = await readVersions(["card:1"], { gatewayUrl: GW, credential: "jwt", fetch: flaky, retryMs: [1, 1] });
  assert.deepEqual([later.versions, calls], [{ "card:1": "0000000000000010" }, 3]);
  const down = await readVersions(["card:1", "board:1"], { gatewayUrl: GW, credential: "jwt", retryMs: [1],
    fetch: async () => { throw new Error("ECONNREFUSED"); } });
  assert.deepEqual(down, { versions: { "card:1": UNKNOWN_VERSION, "board:1": UNKNOWN_VERSION }, watermark: null,
    unknown: true });
});

test("revalidate: updateTag in an action where Next has it, else revalidateTag expiring at once; paths as given", async () => {
  const log = [];
  await revalidate({ tags: ["card:1"], paths: ["/", ["/boards/[id]", "page"]], cache: fakeCache(log) });
  await revalidate({ tags: ["card:2"], cache: fakeCache(log, { withUpdateTag: false }) });
  await revalidate({ tags: ["card:3"], inAction: false, cache: fakeCache(log) });
  assert.deepEqual(log, ["updateTag card:1", "revalidatePath /", "revalidatePath /boards/[id] page",
    'revalidateTag card:2 {"expire":0}', 'revalidateTag card:3 {"expire":0}']);
});

test("transaction: BEGIN, the action's writes, the token, COMMIT; then the wait; then revalidation", async () => {
  const log = [];
  const fw = createFreshwire({ gatewayUrl: GW, jwtSecret: "s3cret", cache: fakeCache(log),
    fetch: fakeFetch(log, { status: 200, body: { visible: true, token: "fw1:42", version: "0000000000000042" } }) });
  const out = await fw.transaction(fakePool(log), async (client) => {
    await client.query("UPDATE cards SET title = 'x'");
    return { id: 7 };
  }, { tags: (v) => [`card:${v.id}`], paths: ["/"] });
  assert.deepEqual(out.value, { id: 7 });
  assert.equal(out.visible, true);
  assert.equal(out.version, "0000000000000042");
  const fetched = log.findIndex((l) => l.startsWith("fetch "));
  assert.deepEqual(log.slice(0, fetched), ["connect", "BEGIN", "UPDATE cards SET title = 'x'", "TOKEN", "COMMIT", "release"]);
  assert.match(log[fetched], /^fetch http:\/\/gw\.test:8080\/v1\/wait\?token=fw1%3A42&timeout_ms=5000 Bearer ey/);
  assert.deepEqual(log.slice(fetched + 1), ["updateTag card:7", "revalidatePath /"]);
});

test("transaction: a throw rolls back and is rethrown, with no wait and no revalidation", async () => {
  const log = [];
  const fw = createFreshwire({ gatewayUrl: GW, credential: "jwt", cache: fakeCache(log), fetch: fakeFetch(log, { status: 200, body: {} }) });
  await assert.rejects(fw.transaction(fakePool(log), async () => { throw new Error("conflict"); }, { tags: ["card:1"] }), /conflict/);
  assert.deepEqual(log, ["connect", "BEGIN", "ROLLBACK", "release"]);
});

test("afterWrite: a timed-out wait still revalidates and says so; wait: false skips the gateway", async () => {
  const log = [];
  const timeouts = [];
  const fw = createFreshwire({ gatewayUrl: GW, credential: "jwt", cache: fakeCache(log), onTimeout: (r) => timeouts.push(r.code),
    fetch: fakeFetch(log, { status: 408, body: { error: { code: "timeout" } } }) });
  const late = await fw.afterWrite("fw1:9", { tags: ["card:9"], timeoutMs: 10 });
  assert.deepEqual([late.visible, late.code], [false, "timeout"]);
  assert.deepEqual(timeouts, ["timeout"]);
  assert.deepEqual(log.slice(1), ["updateTag card:9"]);
  log.length = 0;
  const skipped = await fw.afterWrite("fw1:10", { paths: ["/"], wait: false });
  assert.deepEqual([skipped.visible, skipped.code], [false, "skipped"]);
  assert.deepEqual(log, ["revalidatePath /"]);
  assert.throws(() => createFreshwire({ gatewayUrl: "ftp://x", credential: "jwt" }), TypeError);
  assert.throws(() => createFreshwire({ gatewayUrl: GW }), TypeError);
});
