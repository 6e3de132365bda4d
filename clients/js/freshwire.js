// Freshwire JS client: protocol freshwire.v1 (docs/protocol.md) for browsers and Node >= 20.
// One dependency-free ES module. Reconnects with exponential backoff and full jitter, resumes
// exactly (`since` = newest version seen per key), shares one server subscription per key, and
// gathers the subscribe()/unsubscribe calls of one tick into one frame, paced under the gateway's
// rate limit (a frame the gateway drops is sent again).
//
//   import { connect } from "./freshwire.js";
//   const fw = connect("wss://gw.example/ws", { getToken: async () => (await fetch("/token")).text() });
//   const off = fw.subscribe(["card:1"], (changes) => refetch(changes));   // {"card:1": "00000000019d0138"}
//   await off.ready;                                                       // live on the gateway (optional)
//   const { version } = await fw.await(writeToken);                        // read-your-writes
//   fw.onLapse((lapse) => showBanner(lapse.reason));                       // a guarantee lapsed
//   fw.lagMs();                                 // how long the oldest change has waited for the app

export const SUBPROTOCOL = "freshwire.v1";

const KEY_RE = /^[A-Za-z0-9_.:@/+=-]{1,256}$/;
const VERSION_RE = /^[0-9a-f]{16}$/;
const CLOSE_AUTH = 4001;
const AWAIT_GRACE_MS = 5000;     // client-side guard on top of an await's timeout_ms
const OPEN = 1;                  // WebSocket.OPEN

// Reconnect policy (docs/protocol.md, "Client reconnect policy"; gateway/client.py follows the same).
const STABLE_MS = 30000;                // a connection open this long resets the back-off
const RESTART_CLOSES = new Set([1001, 1012]);   // the gateway is going away: reconnect at once (jittered)

// Outbound limits, under the gateway's defaults (docs/protocol.md, "Limits").
const FRAMES_PER_S = 40;         // frames per second we send: 80% of max_messages_per_s (50)
const FRAME_BURST = 40;          // bursts: the gateway allows 100, and queues at most 64 replies
const MAX_SUBSCRIPTIONS = 1000;  // max_subscriptions: keys per connection, and per request
const FRAME_BUDGET = 60000;      // bytes per subscribe frame (the gateway's limit is 65536)
const REPLY_TIMEOUT_MS = 10000;  // a subscribe/unsubscribe unanswered this long is taken as lost
const RATE_BACKOFF_MS = 250;     // pause after a `rate_limited`, doubled per one in a row
const LIMBO = 64;                // frames taken as lost whose late replies are still applied
const LAG_TRACKED = 10000;       // invalidations awaited by lagMs() at most (past it, new ones are not)

/** An error reply of the gateway (`code` from the protocol's error table) or a client-side failure
 *  (`disconnected`, `closed`, `timeout`; `too_many_keys` also when the client refuses keys past
 *  `maxSubscriptions` itself). `keys`: the keys a refused subscribe() lost. */
const VALUE_SAFE = /^[A-Za-z0-9_.@+-]$/;

/** One column value as it appears inside a key (contract/keys.py encode_value): characters outside
 *  A-Z a-z 0-9 _ . @ + - become =XX per UTF-8 byte; booleans are true/false. */
export function encodeValue(value) {
  const text = typeof value === "boolean" ? String(value) : String(value);
  let out = "";
  for (const ch of text) {
    if (VALUE_SAFE.test(ch)) { out += ch; continue; }
    for (const byte of new TextEncoder().encode(ch)) out += "=" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/** The key a rule template renders for these column values, exactly as the consumer renders it
 *  (contract/keys.py key_for): keyFor("tenant:{tenant_id}:doc:{id}", {tenant_id: 7, id: "José"}). */
export function keyFor(template, values) {
  return template.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (_m, name) => {
    if (!(name in values)) throw new Error(`keyFor: no value for {${name}}`);
    return encodeValue(values[name]);
  });
}

export class FreshwireError extends Error {
  constructor(code, message, frame, keys) {
    super(`${code}: ${message}`);
    this.name = "FreshwireError";
    this.code = code;
    if (frame !== undefined) this.frame = frame;
    if (keys !== undefined) this.keys = keys;
  }
}

/** The reconnect delay before attempt `attempt` (0, 1, …): full jitter, random() * min(max, min * 2^attempt). */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
  return random() * Math.min(maxMs, minMs * 2 ** attempt);
}

/** The attempt count after a connection that was open `uptimeMs` closed with `code`: back to 0 when it
 *  stayed up (STABLE_MS) or the gateway is restarting (1001/1012), else unchanged, so that refusals
 *  right after opening (4001, 4008, 4013, a crash) keep the back-off growing. */
export function attemptAfterClose(attempt, uptimeMs, code) {
  return uptimeMs >= STABLE_MS || RESTART_CLOSES.has(code) ? 0 : attempt;
}

/** Cost of a key in a subscribe frame, in bytes: once in `keys`, once in `since` with a version. */
const keyCost = (key) => 2 * key.length + 30;

/**
 * What the client still has to tell the gateway about its keys, and when. Sans I/O: no socket, no
 * clock (`now` in ms is passed in), no timer; the client moves frames in and out.
 *
 * - want()/unwant() calls made before the next frame is built merge: one frame for all of them, and a
 *   key wanted then unwanted meanwhile costs nothing. Frames hold at most `keysPerFrame` keys and
 *   about `frameBytes` bytes; unsubscribes go first (they make room).
 * - One subscribe/unsubscribe frame is in flight at a time. Every frame, `other` requests (awaits)
 *   included, spends a token of a bucket of `burst` tokens refilled at `rate` per second.
 * - A frame in flight when a `rate_limited` error arrives (it carries no id), or unanswered after
 *   `replyTimeoutMs`, is taken as dropped: what is still needed goes out again, after a back-off.
 *   Its reply, if it comes after all, is still applied (replies come in request order).
 * - `unavailable` is retried with back-off. Other refusals (`forbidden`, `too_many_keys`,
 *   `invalid_key`, …) end the keys: no longer wanted, reported in a "refused" event. Keys past
 *   `maxKeys` on the connection are refused as `too_many_keys` once the connection is full.
 * - A ticket given to want() settles once each of its keys is live on the gateway, refused, or no
 *   longer wanted ("settled" event, with the refusal if any); reset() (a new connection) keeps them.
 */
export class Outbox {
  constructor({
    rate = FRAMES_PER_S, burst = FRAME_BURST, maxKeys = MAX_SUBSCRIPTIONS, keysPerFrame = MAX_SUBSCRIPTIONS,
    frameBytes = FRAME_BUDGET, replyTimeoutMs = REPLY_TIMEOUT_MS, minBackoffMs = 100, maxBackoffMs = 10000,
    random = Math.random, now = 0,
  } = {}) {
    Object.assign(this, { rate, burst, maxKeys, keysPerFrame, frameBytes, replyTimeoutMs, minBackoffMs, maxBackoffMs, random });
    this.wanted = new Set();     // keys the client wants subscribed, in the order asked
    this.live = new Set();       // keys the gateway confirmed on this connection
    this.inflight = null;        // {op, id, keys, set, sentAt, refused: Set, refusal}
    this.limbo = new Map();      // id -> frame taken as lost
    this.others = [];            // other requests, first in first out
    this.waiting = new Map();    // key -> Set<ticket record>
    this.events = [];
    this.tokens = burst;
    this.stamp = now;
    this.notBefore = 0;          // every frame waits until then (rate_limited)
    this.retryAt = 0;            // subscribes wait until then (unavailable)
    this.strikes = 0;            // rate_limited in a row
    this.tries = 0;              // unavailable in a row
  }

  /** Subscribe `keys`; `ticket` (optional) settles when they are all live or refused. */
  want(keys, ticket) {
    for (const key of keys) this.wanted.add(key);
    this._track("subscribe", keys, ticket);
    for (const key of keys) this._recheck(key);
  }

  /** Unsubscribe `keys`; `ticket` (optional) settles when none of them is live any more. */
  unwant(keys, ticket) {
    for (const key of keys) this.wanted.delete(key);
    this._track("unsubscribe", keys, ticket);
    for (const key of keys) this._recheck(key);
  }

  /** Queue another request (an await): sent first in first out, paced with the rest. */
  enqueue(item) { this.others.push(item); }

  cancel(item) {
    const i = this.others.indexOf(item);
    if (i >= 0) this.others.splice(i, 1);
  }

  /** Take a token now for a request sent outside the queue (a ping); false: not now. */
  spend(now) {
    this._refill(now);
    if (now < this.notBefore || this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  /** A new connection: nothing is live, nothing in flight, a full bucket. Wanted keys go out again. */
  reset(now) {
    this.live.clear();
    this.inflight = null;
    this.limbo.clear();
    this.tokens = this.burst;
    this.stamp = now;
    this.notBefore = this.retryAt = this.strikes = this.tries = 0;
    for (const key of [...this.waiting.keys()]) this._recheck(key);
  }

  /** What to send now, as request `id`: {op: "subscribe"|"unsubscribe", id, keys}, {op: "other", item}
   *  (the item's own id), {waitMs} (call again then, or when something changes), or null (idle). */
  next(now, id, othersOnly = false) {
    this._refill(now);
    if (this.inflight && now >= this.inflight.sentAt + this.replyTimeoutMs) this._lose(this.inflight);
    let frame = !othersOnly && !this.inflight ? this._plan() : null;
    const wakes = [];
    if (this.inflight) wakes.push(this.inflight.sentAt + this.replyTimeoutMs);
    if (frame && now < this.retryAt) {
      wakes.push(this.retryAt);
      frame = null;
    }
    if (frame || this.others.length) {
      const at = Math.max(this.notBefore, this.tokens >= 1 ? now : now + Math.ceil(((1 - this.tokens) * 1000) / this.rate));
      if (at <= now) {
        this.tokens -= 1;
        if (!frame) return { op: "other", item: this.others.shift() };
        this.inflight = { ...frame, id, set: new Set(frame.keys), sentAt: now, refused: new Set(), refusal: null };
        return { op: frame.op, id, keys: frame.keys };
      }
      wakes.push(at);
    }
    return wakes.length ? { waitMs: Math.max(0, Math.min(...wakes) - now) } : null;
  }

  /** A `rate_limited` error: the frame in flight (if any) was dropped; pause, with back-off. */
  onRateLimited(now) {
    this.strikes += 1;
    this.tokens = 0;
    this.stamp = now;
    const cap = Math.min(this.maxBackoffMs, RATE_BACKOFF_MS * 2 ** (this.strikes - 1));
    this.notBefore = now + cap * (0.5 + 0.5 * this.random());
    if (this.inflight) this._lose(this.inflight);
  }

  /** A message with an id. Returns false when it does not answer a subscribe/unsubscribe of ours. */
  onReply(msg, now) {
    const frame = this.inflight?.id === msg.id ? this.inflight : this.limbo.get(msg.id);
    if (!frame) return false;
    const current = frame === this.inflight;
    const message = String(msg.message ?? "");
    if (frame.op === "unsubscribe") {
      // An unsubscribe can only be refused as malformed: nothing to retry, so take the keys as gone.
      if (msg.type !== "unsubscribed" && msg.type !== "error") return true;
      for (const key of frame.keys) this.live.delete(key);
    } else if (msg.type === "subscribed") {
      const versions = msg.versions && typeof msg.versions === "object" ? msg.versions : {};
      const missing = [];
      for (const key of frame.keys) {
        if (Object.hasOwn(versions, key)) this.live.add(key);
        else if (!frame.refused.has(key)) missing.push(key);
      }
      // Keys left out of `versions` were not subscribed: the `forbidden` error before listed at most 100.
      if (current) this._refuse(missing, "forbidden", frame.refusal?.message ?? "the gateway did not subscribe these keys", frame.refusal ?? undefined);
    } else if (msg.type === "error" && msg.code === "forbidden") {
      const listed = (Array.isArray(msg.keys) ? msg.keys : []).filter((key) => frame.set.has(key));
      for (const key of listed) frame.refused.add(key);
      frame.refusal = msg;
      if (current) this._refuse(listed, "forbidden", message, msg);
      if (frame.refused.size < frame.set.size) return true;   // the other keys are subscribed: a reply follows
    } else if (msg.type === "error" && msg.code === "unavailable") {
      if (current) {
        this.tries += 1;
        this.retryAt = now + this.random() * Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** this.tries);
      }
    } else if (msg.type === "error") {
      // Refused as a whole (nothing subscribed). invalid_key names up to 5 offenders: only they end.
      const named = msg.code === "invalid_key" && Array.isArray(msg.keys) ? msg.keys.filter((key) => frame.set.has(key)) : [];
      if (current) this._refuse(named.length ? named : frame.keys, String(msg.code), message, msg);
    } else {
      return true;                                         // some other reply with our id: not the answer
    }
    if (current) {
      this.inflight = null;
      this.strikes = 0;
      if (msg.type !== "error" || msg.code !== "unavailable") this.tries = 0;
    } else {
      this.limbo.delete(frame.id);
    }
    for (const key of frame.keys) this._recheck(key);
    return true;
  }

  /** The client is closed: settle every ticket with `code`; returns the other requests never sent. */
  failAll(code, message) {
    const records = new Set();
    for (const set of this.waiting.values()) for (const record of set) records.add(record);
    this.waiting.clear();
    for (const record of records) {
      record.failed.push(...record.pending);
      record.error ??= { code, message };
      this._finish(record);
    }
    this.wanted.clear();
    const others = this.others;
    this.others = [];
    return others;
  }

  /** Events since the last call: {type: "settled", ticket, error: null | {code, message, keys, frame}}
   *  and {type: "refused", keys, code, message, frame} (frame undefined: refused by the client). */
  take() {
    const events = this.events;
    this.events = [];
    return events;
  }

  // -- internals

  _refill(now) {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.stamp) * this.rate) / 1000);
    this.stamp = now;
  }

  _plan() {
    const gone = [];
    for (const key of this.live) if (!this.wanted.has(key)) gone.push(key);
    if (gone.length) return { op: "unsubscribe", keys: this._chunk(gone) };
    const need = [];
    for (const key of this.wanted) if (!this.live.has(key)) need.push(key);
    if (!need.length) return null;
    const room = this.maxKeys - this.live.size;
    if (room <= 0) {
      this._refuse(need, "too_many_keys", `at most ${this.maxKeys} keys per connection`);
      return null;
    }
    return { op: "subscribe", keys: this._chunk(need.slice(0, room)) };
  }

  _chunk(keys) {
    const out = [];
    let size = 64;
    for (const key of keys) {
      if (out.length && (out.length >= this.keysPerFrame || size + keyCost(key) > this.frameBytes)) break;
      out.push(key);
      size += keyCost(key);
    }
    return out;
  }

  _lose(frame) {
    this.inflight = null;
    this.limbo.set(frame.id, frame);
    if (this.limbo.size > LIMBO) this.limbo.delete(this.limbo.keys().next().value);
    for (const key of frame.keys) this._recheck(key);
  }

  _refuse(keys, code, message, frame) {
    const refused = keys.filter((key) => this.wanted.has(key));
    if (!refused.length) return;
    for (const key of refused) {
      this.wanted.delete(key);
      for (const record of this.waiting.get(key) ?? []) {
        if (record.op !== "subscribe") continue;
        record.failed.push(key);
        record.error ??= { code, message, frame };
      }
    }
    this.events.push({ type: "refused", keys: refused, code, message, frame });
    for (const key of refused) this._recheck(key);
  }

  _done(op, key) {
    const inflight = this.inflight?.set.has(key) ? this.inflight.op : null;
    if (op === "subscribe") return !this.wanted.has(key) || (this.live.has(key) && inflight !== "unsubscribe");
    return this.wanted.has(key) || (!this.live.has(key) && inflight !== "subscribe");
  }

  _track(op, keys, ticket) {
    if (ticket === undefined) return;
    const record = { op, ticket, pending: new Set(), failed: [], error: null };
    for (const key of keys) {
      if (this._done(op, key) || record.pending.has(key)) continue;
      record.pending.add(key);
      let set = this.waiting.get(key);
      if (!set) this.waiting.set(key, (set = new Set()));
      set.add(record);
    }
    if (!record.pending.size) this._finish(record);
  }

  _recheck(key) {
    const set = this.waiting.get(key);
    if (!set) return;
    for (const record of [...set]) {
      if (!this._done(record.op, key)) continue;
      set.delete(record);
      record.pending.delete(key);
      if (!record.pending.size) this._finish(record);
    }
    if (!set.size) this.waiting.delete(key);
  }

  _finish(record) {
    const error = record.failed.length ? { ...record.error, keys: record.failed } : null;
    this.events.push({ type: "settled", ticket: record.ticket, error });
  }
}

function report(err) {
  // A listener threw: show it without breaking the client (and without crashing Node).
  if (typeof globalThis.reportError === "function") globalThis.reportError(err);
  else console.error(err);
}

function withToken(url, token) {
  if (token == null || token === "") return url;
  const hash = url.indexOf("#");
  const base = hash >= 0 ? url.slice(0, hash) : url;
  return `${base}${base.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

const clock = () => globalThis.performance?.now?.() ?? Date.now();

export class Freshwire {
  constructor(url, options = {}) {
    const {
      token, getToken, WebSocket: WS = globalThis.WebSocket, minBackoffMs = 100, maxBackoffMs = 10000,
      onState, pingIntervalMs = 15000, openTimeoutMs = 10000, random = Math.random,
      framesPerSecond = FRAMES_PER_S, frameBurst = FRAME_BURST, maxSubscriptions = MAX_SUBSCRIPTIONS,
      replyTimeoutMs = REPLY_TIMEOUT_MS,
    } = options;
    if (typeof WS !== "function") {
      throw new TypeError("freshwire: no global WebSocket here (Node 20 needs --experimental-websocket); pass options.WebSocket");
    }
    this.url = url;
    this.versions = new Map();           // key -> newest version seen (null: none), subscribed keys only
    this._token = token;
    this._getToken = getToken;
    this._WS = WS;
    this._minBackoff = minBackoffMs;
    this._maxBackoff = maxBackoffMs;
    this._pingInterval = pingIntervalMs;
    this._openTimeout = openTimeoutMs;
    this._random = random;
    this._onState = onState;
    this._state = "connecting";
    this._listeners = new Map();         // event -> Set<fn>
    this._subs = new Map();              // key -> Set<subscriber>; a key is subscribed while its set is non-empty
    this._outbox = new Outbox({
      rate: framesPerSecond, burst: frameBurst, maxKeys: maxSubscriptions, keysPerFrame: maxSubscriptions,
      replyTimeoutMs, minBackoffMs, maxBackoffMs, random, now: clock(),
    });
    this._ws = null;
    this._open = false;
    this._openedAt = 0;
    this._attempt = 0;
    this._nextId = 1;
    this._pending = new Map();           // id -> await or ping sent on the current socket
    this._timer = null;                  // reconnect delay
    this._openTimer = null;
    this._pingTimer = null;
    this._pumpTimer = null;              // the outbox's next step
    this._pumpAt = 0;
    this._awaitingPong = false;
    this._waiting = new Set();           // {at, open}: invalidations whose listeners' promises are pending, oldest first
    this._offline = () => { if (this._ws) this._drop(this._ws, 1006); };
    this._online = () => { if (this._state === "reconnecting" && this._timer !== null) { this._attempt = 0; this._clearTimer(); this._connect(); } };
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("offline", this._offline);
      globalThis.addEventListener("online", this._online);
    }
    this._emitState("connecting");
    this._connect();
  }

  get state() { return this._state; }

  /** Listen to "state" (state string), "error" (error frame object), "invalidate" (changes) or "lapse"
   *  (lapse message). Returns an off function. */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) { this._listeners.get(event)?.delete(fn); }

  /** `fn(lapse)` for every `lapse` message ({type, reason, keys, version}: a guarantee did not hold
   *  for these keys, docs/protocol.md), called after the listeners of the invalidate it concerns.
   *  A listener that throws is reported and does not stop the others. Returns an off function. */
  onLapse(fn) {
    if (typeof fn !== "function") throw new TypeError("freshwire: onLapse needs a function");
    return this.on("lapse", fn);
  }

  /** How far the application trails this client, in ms: the time since the oldest invalidation that
   *  is still waiting for the app was read from the gateway; 0 when none waits. An invalidation
   *  waits while a listener it was handed to (subscribe() or "invalidate") has returned a promise
   *  that has not settled yet; a listener returning anything else is done when it returns. Time
   *  before the client read the frame (database, pipeline, network) is not counted: no commit time
   *  travels on the wire. */
  lagMs() {
    const oldest = this._waiting.values().next().value;
    return oldest ? Math.max(0, clock() - oldest.at) : 0;
  }

  /** Subscribe `keys` (a key or a list); `onInvalidate({key: version}, rows)` gets changes of these keys
   *  only. `rows` ({key: row, or null for a deleted row}) holds the payload the invalidate carried for
   *  some of them (rules' `payload`, docs/protocol.md `data`): apply those as they are, refetch the rest.
   *  Returns an unsubscribe function whose `ready` promise resolves once every key is live on the
   *  gateway (across reconnects if need be), or rejects with a FreshwireError (`forbidden`,
   *  `too_many_keys`, … with `.keys`: the refused keys, which are dropped; the others stay) or `closed`.
   *  Calls made in one tick share frames.
   *  `since` ({key: version}) names the versions the caller's data already reflects (say, the versions
   *  a server render read): a key new to this client is subscribed from there, so only later changes
   *  reach the listener; a key held at a newer version already is handed to the listener at once. */
  subscribe(keys, onInvalidate, { since } = {}) {
    const list = [...new Set(typeof keys === "string" ? [keys] : Array.from(keys))];
    for (const key of list) {
      if (typeof key !== "string" || !KEY_RE.test(key)) throw new TypeError(`freshwire: invalid key ${JSON.stringify(key)}`);
    }
    if (typeof onInvalidate !== "function") throw new TypeError("freshwire: onInvalidate must be a function");
    if (since != null && typeof since !== "object") throw new TypeError("freshwire: since must be an object of versions");
    const sub = { keys: new Set(list), fn: onInvalidate, active: true };
    const ticket = {};
    const ready = new Promise((resolve, reject) => { ticket.resolve = resolve; ticket.reject = reject; });
    ready.catch(() => {});               // refusals are also "error" events: awaiting `ready` is optional
    const off = () => this._unsubscribe(sub);
    off.ready = ready;
    if (this._state === "closed") {
      sub.active = false;
      ticket.reject(new FreshwireError("closed", "the client is closed"));
      return off;
    }
    const behind = {};                                  // held newer than what the caller has seen
    for (const key of list) {
      const seen = since?.[key];
      const given = typeof seen === "string" && VERSION_RE.test(seen) ? seen : null;
      let set = this._subs.get(key);
      if (!set) {
        this._subs.set(key, (set = new Set()));
        if (!this.versions.has(key)) this.versions.set(key, given);
      } else {
        const held = this.versions.get(key);
        // Never raise a key other listeners share: they may not have seen that version.
        if (held != null && given !== null && held > given) behind[key] = held;
      }
      set.add(sub);
    }
    if (Object.keys(behind).length) {
      queueMicrotask(() => { if (sub.active) this._deliver(sub.fn, behind, { at: clock(), open: 0 }); });
    }
    this._outbox.want(list, ticket);
    this._changed();
    return off;
  }

  _unsubscribe(sub) {
    if (!sub.active) return;
    sub.active = false;
    const gone = [];
    for (const key of sub.keys) {
      const set = this._subs.get(key);
      if (!set || !set.delete(sub)) continue;
      if (set.size === 0) {
        this._subs.delete(key);
        this.versions.delete(key);
        gone.push(key);
      }
    }
    if (!gone.length) return;
    this._outbox.unwant(gone);
    this._changed();
  }

  /** Wait until the transaction of a write token is released. Resolves {version, token}; rejects with
   *  a FreshwireError whose .code is the gateway's (`timeout`, `bad_token`, `too_many_awaits`, …),
   *  `disconnected` (the socket dropped meanwhile: retry) or `closed`. */
  await(writeToken, { timeoutMs = 5000 } = {}) {
    return new Promise((resolve, reject) => {
      if (this._state === "closed") { reject(new FreshwireError("closed", "the client is closed")); return; }
      const entry = { kind: "await", body: { op: "await", token: writeToken, timeout_ms: timeoutMs }, resolve, reject, id: null };
      entry.timer = setTimeout(() => {
        this._forget(entry);
        reject(new FreshwireError("timeout", `no answer within ${timeoutMs + AWAIT_GRACE_MS} ms`));
      }, timeoutMs + AWAIT_GRACE_MS);
      this._outbox.enqueue(entry);
      this._pump(true);                  // at once if a token is free; subscribes still gather per tick
    });
  }

  close() {
    if (this._state === "closed") return;
    this._setState("closed");
    this._shutdown("closed", "the client is closed");
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("offline", this._offline);
      globalThis.removeEventListener("online", this._online);
    }
  }

  // -- internals: state and events

  _emit(event, arg) {
    for (const fn of [...(this._listeners.get(event) ?? [])]) {
      try { fn(arg); } catch (err) { report(err); }
    }
  }

  _emitState(state) {
    if (this._onState) { try { this._onState(state); } catch (err) { report(err); } }
    this._emit("state", state);
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emitState(state);
  }

  // -- internals: connection

  async _connect() {
    this._timer = null;
    if (this._state === "closed") return;
    let token = this._token;
    if (this._getToken) {
      try {
        token = await this._getToken();
        this._token = token;
      } catch (err) {
        if (this._state === "closed") return;
        this._emit("error", { type: "error", code: "get_token_failed", message: String(err?.message ?? err) });
        this._setState("reconnecting");
        this._schedule();
        return;
      }
      if (this._state === "closed") return;
    }
    let ws;
    try {
      ws = new this._WS(withToken(this.url, token), [SUBPROTOCOL]);
    } catch (err) {
      this._emit("error", { type: "error", code: "connect_failed", message: String(err?.message ?? err) });
      this._setState("reconnecting");
      this._schedule();
      return;
    }
    this._ws = ws;
    ws.onopen = () => this._onOpen(ws);
    ws.onmessage = (event) => this._onMessage(ws, event);
    ws.onclose = (event) => this._drop(ws, event?.code ?? 1006);
    ws.onerror = () => {};                               // a close event follows
    if (this._openTimeout > 0) this._openTimer = setTimeout(() => this._drop(ws, 1006), this._openTimeout);
  }

  _onOpen(ws) {
    if (ws !== this._ws) return;
    clearTimeout(this._openTimer);
    this._openTimer = null;
    this._open = true;
    this._openedAt = clock();
    this._outbox.reset(this._openedAt);                  // exact resume: every key, with `since`
    this._pump();
    this._startPing(ws);
    this._setState("open");
  }

  /** The socket `ws` is gone (closed by either side, timed out, or the browser went offline). */
  _drop(ws, code) {
    if (ws !== this._ws) return;
    this._ws = null;
    const wasOpen = this._open;
    this._open = false;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { if (ws.readyState <= OPEN) ws.close(4000, "freshwire: dropped"); } catch { /* already closing */ }
    this._stopTimers();
    this._rejectPending("disconnected", `the connection was lost (close ${code})`);
    if (this._state === "closed") return;
    if (wasOpen) this._attempt = attemptAfterClose(this._attempt, clock() - this._openedAt, code);
    if (code === CLOSE_AUTH && !this._getToken) {
      this._emit("error", { type: "error", code: "auth_failed", message: "the gateway refused the token (close 4001)" });
      this.close();
      return;
    }
    this._setState("reconnecting");
    this._schedule();
  }

  _schedule() {
    const delay = backoffDelay(this._attempt, this._minBackoff, this._maxBackoff, this._random);
    this._attempt += 1;
    this._clearTimer();
    this._timer = setTimeout(() => {
      const nav = globalThis.navigator;
      if (nav && nav.onLine === false && typeof globalThis.addEventListener === "function") {
        this._schedule();                                // offline: wait (the "online" event reconnects at once)
        return;
      }
      this._connect();
    }, delay);
  }

  _clearTimer() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }

  _startPing(ws) {
    if (!(this._pingInterval > 0)) return;
    this._awaitingPong = false;
    this._pingTimer = setInterval(() => {
      if (this._awaitingPong) { this._drop(ws, 1006); return; }   // nothing heard for a whole interval
      if (!this._outbox.spend(clock())) return;                   // no token: ping next time
      this._awaitingPong = true;
      const id = this._nextId++;
      this._pending.set(id, { kind: "ping", id });
      this._send({ op: "ping", id });
    }, this._pingInterval);
  }

  _stopTimers() {
    clearTimeout(this._openTimer);
    clearInterval(this._pingTimer);
    clearTimeout(this._pumpTimer);
    this._openTimer = this._pingTimer = this._pumpTimer = null;
  }

  _shutdown(code, message) {
    this._clearTimer();
    const ws = this._ws;
    if (ws) {
      this._ws = null;
      this._open = false;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, "client closed"); } catch { /* ignore */ }
    }
    this._stopTimers();
    this._rejectPending(code, message);
    for (const entry of this._outbox.failAll(code, message)) this._fail(entry, code, message);
    this._settle();
  }

  // -- internals: requests

  _send(body) {
    const ws = this._ws;
    if (!ws || !this._open) return false;
    try { ws.send(JSON.stringify(body)); return true; } catch { return false; }
  }

  /** Subscriptions changed: report what settled, and send at the end of this tick. */
  _changed() {
    this._settle();
    this._wakeIn(0);
  }

  _wakeIn(ms) {
    if (!this._open) return;
    const at = clock() + ms;
    if (this._pumpTimer !== null && this._pumpAt <= at) return;
    clearTimeout(this._pumpTimer);
    this._pumpAt = at;
    this._pumpTimer = setTimeout(() => { this._pumpTimer = null; this._pump(); }, ms);
  }

  /** Send what the outbox allows now (only awaits when `othersOnly`), and wake up for the rest. */
  _pump(othersOnly = false) {
    while (this._open) {
      const id = this._nextId;
      const step = this._outbox.next(clock(), id, othersOnly);
      if (step === null) {                               // idle: no timer left behind
        if (!othersOnly) { clearTimeout(this._pumpTimer); this._pumpTimer = null; }
        break;
      }
      if (step.waitMs !== undefined) { this._wakeIn(step.waitMs); break; }
      if (step.op === "other") { this._sendEntry(step.item); continue; }
      this._nextId += 1;
      const body = { op: step.op, id, keys: step.keys };
      if (step.op === "subscribe") {
        body.since = {};
        for (const key of step.keys) body.since[key] = this.versions.get(key) ?? null;
      }
      this._send(body);                                  // a failed send: the socket is closing, a resume follows
    }
    this._settle();
  }

  _sendEntry(entry) {
    const id = this._nextId++;
    entry.id = id;
    this._pending.set(id, entry);
    if (this._send({ ...entry.body, id })) return;
    this._pending.delete(id);
    this._fail(entry, "disconnected", "the request could not be sent");
  }

  /** Hand the outbox's events to the callers: settled tickets, and keys the gateway (or we) refused. */
  _settle() {
    for (const event of this._outbox.take()) {
      if (event.type === "refused") {
        for (const key of event.keys) {
          this._subs.delete(key);
          this.versions.delete(key);
        }
        if (event.frame === undefined) this._emit("error", { type: "error", code: event.code, message: event.message, keys: event.keys });
      } else if (event.error) {
        const { code, message, frame, keys } = event.error;
        event.ticket.reject(new FreshwireError(code, message, frame, keys));
      } else {
        event.ticket.resolve();
      }
    }
  }

  _fail(entry, code, message, frame) {
    clearTimeout(entry.timer);
    entry.reject?.(new FreshwireError(code, message, frame));
  }

  _forget(entry) {
    if (entry.id !== null && this._pending.get(entry.id) === entry) this._pending.delete(entry.id);
    this._outbox.cancel(entry);
  }

  _rejectPending(code, message) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const entry of pending) if (entry.kind === "await") this._fail(entry, code, message);
  }

  // -- internals: messages

  _onMessage(ws, event) {
    if (ws !== this._ws) return;
    this._awaitingPong = false;
    if (typeof event?.data !== "string") return;         // the protocol speaks text frames only
    let msg;
    try { msg = JSON.parse(event.data); } catch { return; }
    if (msg === null || typeof msg !== "object" || Array.isArray(msg)) return;
    if (msg.type === "invalidate") { this._onInvalidate(msg.keys, msg.data); return; }
    if (msg.type === "lapse") { this._emit("lapse", msg); return; }    // after its invalidate's listeners
    if (msg.type === "error") this._emit("error", msg);
    if (msg.type === "error" && msg.code === "rate_limited") {   // no id: a frame was dropped
      this._outbox.onRateLimited(clock());
      this._pump();
      return;
    }
    if (typeof msg.id !== "number") return;
    if (this._outbox.onReply(msg, clock())) { this._pump(); return; }
    const entry = this._pending.get(msg.id);
    if (!entry) return;
    if (msg.type === "visible" && entry.kind === "await") {
      this._pending.delete(msg.id);
      clearTimeout(entry.timer);
      entry.resolve({ version: msg.version, token: msg.token });
    } else if (msg.type === "error") {
      this._pending.delete(msg.id);
      if (entry.kind === "await") this._fail(entry, String(msg.code), String(msg.message ?? ""), msg);
    } else if (msg.type === "pong") {
      this._pending.delete(msg.id);
    }                                                    // unknown type: ignore
  }

  /** `data` (optional, docs/protocol.md): key -> the row's payload (null: deleted) for some keys; each
   *  listener gets the data of its own fresh keys as a second argument ({} when none). */
  _onInvalidate(keys, data) {
    if (keys === null || typeof keys !== "object") return;
    const rows = data !== null && typeof data === "object" && !Array.isArray(data) ? data : {};
    const fresh = {};
    const freshRows = {};
    let any = false;
    const perSub = new Map();
    for (const [key, version] of Object.entries(keys)) {
      const subs = this._subs.get(key);
      if (!subs || typeof version !== "string") continue;
      const held = this.versions.get(key);
      if (held != null && version <= held) continue;     // stale or duplicate: versions only increase
      this.versions.set(key, version);
      fresh[key] = version;
      const has = Object.prototype.hasOwnProperty.call(rows, key);
      if (has) freshRows[key] = rows[key];
      any = true;
      for (const sub of subs) {
        let entry = perSub.get(sub);
        if (!entry) perSub.set(sub, (entry = { changes: {}, rows: {} }));
        entry.changes[key] = version;
        if (has) entry.rows[key] = rows[key];
      }
    }
    if (!any) return;
    const waiting = { at: clock(), open: 0 };
    for (const [sub, entry] of perSub) {
      if (!sub.active) continue;                         // unsubscribed by an earlier callback
      this._deliver(sub.fn, entry.changes, waiting, entry.rows);
    }
    for (const fn of [...(this._listeners.get("invalidate") ?? [])]) this._deliver(fn, fresh, waiting, freshRows);
  }

  /** Call a listener of changes (and their rows); while the promise it returns is pending, lagMs()
   *  counts `waiting`. */
  _deliver(fn, changes, waiting, rows = {}) {
    let result;
    try { result = fn(changes, rows); } catch (err) { report(err); return; }
    if (typeof result?.then !== "function") return;                    // done when it returned
    if (waiting.open === 0 && this._waiting.size >= LAG_TRACKED) return;
    if (waiting.open++ === 0) this._waiting.add(waiting);
    const done = () => { if (--waiting.open === 0) this._waiting.delete(waiting); };
    Promise.resolve(result).then(done, (err) => { done(); report(err); });
  }
}

/** Open a client; it connects (and reconnects) by itself. */
export function connect(url, options = {}) {
  return new Freshwire(url, options);
}

export default connect;
