// @freshwire/next/route: the route handler the cache-purge sink (python -m clients.sink, docs/sink.md)
// POSTs to. Verifies the HMAC signature and timestamp, answers 409 for a batch already applied
// (Idempotency-Key), maps keys to cache tags and expires them.
//
//   // app/api/freshwire/route.ts
//   import { createPurgeHandler } from "@freshwire/next/route";
//   export const runtime = "nodejs";
//   export const POST = createPurgeHandler({ secret: process.env.FRESHWIRE_SINK_SECRET! });
import { createHmac, timingSafeEqual } from "node:crypto";

export const ALL_TAG = "freshwire:all";
export const TOLERANCE_S = 300;
const MAX_TAG_LENGTH = 256;                       // Next.js refuses longer tags

/** The tags a cached read of `keys` should carry: each key, the literal prefix up to its first ":"
 *  (what a batch's `prefixes` name after a TRUNCATE), and ALL_TAG (the empty prefix: everything). */
export function cacheTags(keys) {
  const tags = new Set();
  for (const key of keys) {
    tags.add(key);
    const colon = key.indexOf(":");
    if (colon > 0) tags.add(key.slice(0, colon + 1));
  }
  tags.add(ALL_TAG);
  return [...tags].filter((t) => t.length <= MAX_TAG_LENGTH);
}

/** A batch's tags to expire: its keys, and its prefixes (the empty one as ALL_TAG). */
export function tagsOfBatch(batch) {
  const tags = new Set(Array.isArray(batch.keys) ? batch.keys : []);
  for (const prefix of Array.isArray(batch.prefixes) ? batch.prefixes : []) tags.add(prefix === "" ? ALL_TAG : prefix);
  return [...tags].filter((t) => typeof t === "string" && t.length > 0 && t.length <= MAX_TAG_LENGTH);
}

/** True when `signature` is `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` and the
 *  timestamp is within `toleranceS` of `nowS` (the recipe of docs/sink.md). */
export function verifySignature(secret, timestamp, body, signature, { toleranceS = TOLERANCE_S, nowS = Date.now() / 1000 } = {}) {
  if (typeof timestamp !== "string" || !/^\d{1,12}$/.test(timestamp) || typeof signature !== "string") return false;
  if (Math.abs(nowS - Number(timestamp)) > toleranceS) return false;
  const expected = Buffer.from(`sha256=${createHmac("sha256", secret).update(`${timestamp}.`).update(body).digest("hex")}`);
  const given = Buffer.from(signature);
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** The versions applied, remembered in memory (the newest `limit`). Several app instances behind one
 *  sink URL need a shared store instead (any `{has(key), add(key)}`, sync or async, e.g. Redis SET NX). */
export function memorySeen(limit = 10_000) {
  const seen = new Set();
  return {
    has: (key) => seen.has(key),
    add: (key) => {
      seen.add(key);
      if (seen.size > limit) seen.delete(seen.values().next().value);
    },
  };
}

const json = (body, status) => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });

/** A `POST(request)` route handler. 401 for a bad signature or timestamp (permanent: the sink
 *  dead-letters it, so a wrong secret shows), 400 for a body that is not a batch, 409 for a version
 *  already applied (the sink counts it delivered), 200 `{version, tags}` once expired. */
export function createPurgeHandler({ secret, toleranceS = TOLERANCE_S, seen = memorySeen(), tagsFor = tagsOfBatch, revalidateTag, now = () => Date.now() } = {}) {
  if (typeof secret !== "string" || secret === "") throw new TypeError("freshwire: createPurgeHandler needs the sink's secret");
  return async function POST(request) {
    const body = Buffer.from(await request.arrayBuffer());          // the raw bytes: what was signed
    const headers = request.headers;
    if (!verifySignature(secret, headers.get("x-freshwire-timestamp"), body, headers.get("x-freshwire-signature"),
      { toleranceS, nowS: now() / 1000 })) {
      return json({ error: { code: "bad_signature", message: "bad signature or timestamp" } }, 401);
    }
    let batch;
    try { batch = JSON.parse(body.toString("utf8")); } catch { batch = null; }
    if (batch === null || typeof batch !== "object" || typeof batch.version !== "string") {
      return json({ error: { code: "bad_request", message: "not a Freshwire batch" } }, 400);
    }
    const key = headers.get("idempotency-key") || batch.version;
    if (await seen.has(key)) return json({ version: batch.version, replayed: true }, 409);
    const tags = tagsFor(batch);
    const expire = revalidateTag ?? (await import("next/cache")).revalidateTag;
    for (const tag of tags) expire(tag, { expire: 0 });
    await seen.add(key);
    return json({ version: batch.version, tags }, 200);
  };
}
