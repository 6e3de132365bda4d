// Unit tests of @freshwire/next/route: the sink's signed webhook, as clients/sink signs it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { ALL_TAG, cacheTags, createPurgeHandler, memorySeen, tagsOfBatch, verifySignature } from "../route.js";

const SECRET = "sink-secret";
const NOW_MS = 1_795_803_067_000;

function signed(batch, { secret = SECRET, timestamp = String(NOW_MS / 1000), key = batch.version } = {}) {
  const body = JSON.stringify(batch);
  const signature = `sha256=${createHmac("sha256", secret).update(`${timestamp}.${body}`).digest("hex")}`;
  return new Request("http://app.test/api/freshwire", {
    method: "POST", body,
    headers: { "Content-Type": "application/json", "X-Freshwire-Timestamp": timestamp, "X-Freshwire-Signature": signature, "Idempotency-Key": key },
  });
}

function handler(expired, options = {}) {
  return createPurgeHandler({ secret: SECRET, now: () => NOW_MS, revalidateTag: (tag, profile) => expired.push([tag, profile]), ...options });
}

const batch = { version: "00000000019bb500", txId: "966", commitTs: NOW_MS, keys: ["card:1", "board:1"], prefixes: [], ops: {} };

test("a signed batch expires each key's tag at once and answers 200 with the tags", async () => {
  const expired = [];
  const response = await handler(expired)(signed(batch));
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { version: batch.version, tags: ["card:1", "board:1"] });
  assert.deepEqual(expired, [["card:1", { expire: 0 }], ["board:1", { expire: 0 }]]);
});

test("a replayed Idempotency-Key answers 409 and expires nothing again", async () => {
  const expired = [];
  const post = handler(expired);
  assert.equal((await post(signed(batch))).status, 200);
  const again = await post(signed(batch));
  assert.equal(again.status, 409);
  assert.equal((await again.json()).replayed, true);
  assert.equal(expired.length, 2);
});

test("a wrong secret, a tampered body, an old or malformed timestamp answer 401; a non-batch 400", async () => {
  const expired = [];
  const post = handler(expired);
  assert.equal((await post(signed(batch, { secret: "other" }))).status, 401);
  assert.equal((await post(signed(batch, { timestamp: String(NOW_MS / 1000 - 301) }))).status, 401);
  assert.equal((await post(signed(batch, { timestamp: "12e9" }))).status, 401);
  const tampered = signed(batch);
  const forged = new Request(tampered.url, { method: "POST", headers: tampered.headers, body: JSON.stringify({ ...batch, keys: ["card:2"] }) });
  assert.equal((await post(forged)).status, 401);
  assert.equal((await post(signed(["not", "a", "batch"], { key: "x" }))).status, 400);
  assert.deepEqual(expired, []);
});

test("prefixes become tags; the empty prefix is everything", () => {
  assert.deepEqual(tagsOfBatch({ version: "v", keys: ["card:1"], prefixes: ["card:", ""] }), ["card:1", "card:", ALL_TAG]);
  assert.deepEqual(cacheTags(["card:7", "tenant:1:board:2", "plain"]), ["card:7", "card:", "tenant:1:board:2", "tenant:", "plain", ALL_TAG]);
});

test("verifySignature is the recipe of docs/sink.md; memorySeen forgets the oldest past its limit", () => {
  const body = Buffer.from('{"version":"1"}');
  const sig = `sha256=${createHmac("sha256", SECRET).update(`100.${body}`).digest("hex")}`;
  assert.equal(verifySignature(SECRET, "100", body, sig, { nowS: 100 }), true);
  assert.equal(verifySignature(SECRET, "100", body, sig, { nowS: 401 }), false);
  assert.equal(verifySignature(SECRET, "100", body, sig.slice(0, -1), { nowS: 100 }), false);
  const seen = memorySeen(2);
  for (const k of ["a", "b", "c"]) seen.add(k);
  assert.deepEqual(["a", "b", "c"].map((k) => seen.has(k)), [false, true, true]);
});
