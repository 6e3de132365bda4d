// @freshwire/next/server: read-your-writes for Server Actions (docs/nextjs.md).
//
//   1. writeToken(client)       inside the app's own transaction: one SQL statement, any driver
//   2. waitVisible(token)       GET /v1/wait on the gateway, with a server credential
//   3. revalidate(tags, paths)  updateTag / revalidateTag / revalidatePath (next/cache)
//
// `createFreshwire(options).transaction(pool, fn, {tags, paths})` does all three around a node-postgres
// transaction; `afterWrite(token, …)` does 2 and 3 for apps that run their own transaction (Drizzle, Prisma).
import { createHmac } from "node:crypto";

/** One statement, run inside the writing transaction: the token names the transaction, and the
 *  transactional logical message makes it reach the stream even if it touched no captured table. */
export const WRITE_TOKEN_SQL =
  "SELECT 'fw1:' || (pg_current_xact_id()::text::bigint % 4294967296)::text AS token, " +
  "pg_logical_emit_message(true, 'freshwire.token', '') AS _lsn";

export const DEFAULT_TIMEOUT_MS = 5000;
const KEY_RE = /^[A-Za-z0-9_.:@/+=-]{1,256}$/;

/** The write token of the transaction `client` is in (node-postgres `Client`/`PoolClient`, or anything
 *  with `query(sql)` resolving `{rows}`). Call it after the writes, before COMMIT. */
export async function writeToken(client) {
  const result = await client.query(WRITE_TOKEN_SQL);
  const row = result?.rows?.[0];
  if (!row || typeof row.token !== "string") throw new Error("freshwire: the token query returned no token");
  return row.token;
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT the gateway accepts (its FRESHWIRE_JWT_SECRET): `keys` are the key patterns it covers
 *  (`["*"]`: all, for a server; a browser gets its user's, e.g. `["tenant:1:*"]`). */
export function mintToken(secret, { subject = "server", keys = ["*"], ttlS = 300, claim = "fw_keys", now = Date.now() } = {}) {
  if (typeof secret !== "string" || secret === "") throw new TypeError("freshwire: mintToken needs the JWT secret");
  const iat = Math.floor(now / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub: subject, [claim]: keys, iat, exp: iat + ttlS }));
  const signature = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${signature}`;
}

/** A credential source: a fixed token, a function returning one, or a secret to mint (and re-mint
 *  before expiry) a server token with. */
function credentialSource({ credential, jwtSecret, subject = "next-server" }) {
  if (typeof credential === "function") return credential;
  if (typeof credential === "string" && credential) return () => credential;
  if (!jwtSecret) throw new TypeError("freshwire: pass `credential` (a JWT) or `jwtSecret` to mint one");
  let cached = null;
  let until = 0;
  return () => {
    if (cached === null || Date.now() > until) {
      cached = mintToken(jwtSecret, { subject, keys: ["*"], ttlS: 600 });
      until = Date.now() + 300_000;
    }
    return cached;
  };
}

function httpBase(url) {
  const base = String(url).replace(/^ws(s?):/, "http$1:").replace(/\/ws\/?$/, "").replace(/\/+$/, "");
  if (!/^https?:\/\//.test(base)) throw new TypeError(`freshwire: gatewayUrl must be http(s):// or ws(s)://, got ${url}`);
  return base;
}

/** Wait until the write token's transaction is released (readable from every replica).
 *  Never throws for the gateway's answers: the write is committed whatever happens here. Resolves
 *  `{visible: true, version, waitedMs}`, or `{visible: false, code, waitedMs}` with code `timeout` (408),
 *  `unavailable` / `too_many_awaits` (503), `auth_failed` (401), `bad_token` (400) or `unreachable`. */
export async function waitVisible(token, { gatewayUrl, credential, timeoutMs = DEFAULT_TIMEOUT_MS, fetch = globalThis.fetch } = {}) {
  const started = Date.now();
  const bearer = typeof credential === "function" ? await credential() : credential;
  const url = `${httpBase(gatewayUrl)}/v1/wait?token=${encodeURIComponent(token)}&timeout_ms=${timeoutMs}`;
  const done = (result) => ({ ...result, token, waitedMs: Date.now() - started });
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${bearer}` },
      cache: "no-store",
      signal: AbortSignal.timeout(timeoutMs + 2000),
    });
  } catch (err) {
    return done({ visible: false, code: "unreachable", message: String(err?.message ?? err) });
  }
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: the code below says enough */ }
  if (response.status === 200 && body?.visible) return done({ visible: true, version: body.version });
  const code = body?.error?.code ?? (response.status === 408 ? "timeout" : `http_${response.status}`);
  return done({ visible: false, code, message: body?.error?.message ?? "" });
}

/** What a render gets for each key when the gateway cannot tell its version (unavailable, unreachable):
 *  the oldest version there is, so the hook, once subscribed, finds every changed key newer and
 *  refreshes. A render never fails because Freshwire is briefly away (docs/nextjs.md). */
export const UNKNOWN_VERSION = "0000000000000000";
export const VERSION_RETRY_MS = [100, 300];

/** The current versions of `keys` and the watermark (GET /v1/versions). Read them *before* the data a
 *  render shows: everything up to those versions is on the replicas, and the hook subscribes from them.
 *  A gateway that answers 503 or not at all is asked again after each of `retryMs`; then every key gets
 *  UNKNOWN_VERSION and `unknown: true` (a 4xx, a bad key or credential, still throws). */
export async function readVersions(keys, { gatewayUrl, credential, fetch = globalThis.fetch, timeoutMs = 2000,
                                           retryMs = VERSION_RETRY_MS } = {}) {
  const list = [...new Set(keys)];
  for (const key of list) if (!KEY_RE.test(key)) throw new TypeError(`freshwire: invalid key ${JSON.stringify(key)}`);
  if (!list.length) return { versions: {}, watermark: null };
  const bearer = typeof credential === "function" ? await credential() : credential;
  for (let attempt = 0; ; attempt++) {
    let response = null;
    try {
      response = await fetch(`${httpBase(gatewayUrl)}/v1/versions?keys=${list.map(encodeURIComponent).join(",")}`, {
        headers: { Authorization: `Bearer ${bearer}` },
        cache: "no-store",
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch {
      response = null;   // unreachable or timed out: as unavailable
    }
    const body = response ? await response.json().catch(() => null) : null;
    if (response?.status === 200 && body?.versions) return { versions: body.versions, watermark: body.watermark ?? null };
    if (response && response.status !== 503) {
      throw new Error(`freshwire: /v1/versions answered ${response.status} ${body?.error?.code ?? ""}`.trim());
    }
    if (attempt >= retryMs.length) {
      return { versions: Object.fromEntries(list.map((k) => [k, UNKNOWN_VERSION])), watermark: null, unknown: true };
    }
    await new Promise((r) => setTimeout(r, retryMs[attempt]));
  }
}

let nextCacheModule = null;
async function nextCache() {
  nextCacheModule ??= await import("next/cache");
  return nextCacheModule;
}

/** Revalidate after a write. Tags: `updateTag` inside a Server Action where Next has it (15.x has not:
 *  there, and outside actions, `revalidateTag(tag, {expire: 0})`: expired at once, the next read is a
 *  miss). Paths: `revalidatePath` (a `[path, "page" | "layout"]` pair for a dynamic segment). */
export async function revalidate({ tags = [], paths = [], inAction = true, cache } = {}) {
  const api = cache ?? (await nextCache());
  for (const tag of tags) {
    if (inAction && typeof api.updateTag === "function") api.updateTag(tag);
    else api.revalidateTag(tag, { expire: 0 });
  }
  for (const path of paths) {
    if (Array.isArray(path)) api.revalidatePath(path[0], path[1]);
    else api.revalidatePath(path);
  }
}

const asList = (value, result) => (typeof value === "function" ? value(result) : value) ?? [];

/** The three server calls, configured once:
 *
 *    const fw = createFreshwire({ gatewayUrl: process.env.FRESHWIRE_URL, jwtSecret: process.env.FRESHWIRE_JWT_SECRET });
 *    const { value, visible } = await fw.transaction(pool, async (client) => …, { tags: ["card:1"], paths: ["/"] });
 */
export function createFreshwire(options = {}) {
  const { gatewayUrl, timeoutMs = DEFAULT_TIMEOUT_MS, fetch = globalThis.fetch, cache, onTimeout } = options;
  httpBase(gatewayUrl);                             // a bad URL fails at start, not at the first write
  const credential = credentialSource(options);
  const settings = { gatewayUrl, credential, fetch };

  async function afterWrite(token, { tags = [], paths = [], wait = true, timeoutMs: ms = timeoutMs, result } = {}) {
    const seen = wait ? await waitVisible(token, { ...settings, timeoutMs: ms }) : { visible: false, code: "skipped", waitedMs: 0, token };
    if (wait && !seen.visible) onTimeout?.(seen);
    // Revalidate even when the wait failed: the write is committed, and a later read must not be served
    // from the old cache entry. (A replica read right now may still be old: the result says so.)
    await revalidate({ tags: asList(tags, result), paths: asList(paths, result), cache });
    return seen;
  }

  async function transaction(pool, fn, txOptions = {}) {
    const client = await pool.connect();
    let value;
    let token;
    try {
      await client.query("BEGIN");
      value = await fn(client);
      token = await writeToken(client);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      throw err;
    } finally {
      client.release();
    }
    const seen = await afterWrite(token, { ...txOptions, result: value });
    return { value, ...seen };
  }

  return {
    transaction,
    afterWrite,
    waitVisible: (token, o = {}) => waitVisible(token, { ...settings, timeoutMs, ...o }),
    readVersions: (keys) => readVersions(keys, settings),
    credential,
  };
}
