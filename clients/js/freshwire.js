// Freshwire JS client: protocol freshwire.v1 (docs/protocol.md) for browsers and Node >= 20.
// One dependency-free ES module. Reconnects with exponential backoff and full jitter, resumes
// exactly (`since` = newest version seen per key), shares one server subscription per key.
//
//   import { connect } from "./freshwire.js";
//   const fw = connect("wss://gw.example/ws", { getToken: async () => (await fetch("/token")).text() });
//   const off = fw.subscribe(["card:1"], (changes) => refetch(changes));   // {"card:1": "00000000019d0138"}
//   const { version } = await fw.await(writeToken);                        // read-your-writes

export const SUBPROTOCOL = "freshwire.v1";

const KEY_RE = /^[A-Za-z0-9_.:@/+=-]{1,256}$/;
const CLOSE_AUTH = 4001;
// Closes by which the gateway refuses or sheds a connection right after accepting it: they do not
// count as a successful open, so the backoff keeps growing instead of hammering the gateway.
const REFUSALS = new Set([4001, 4008, 4013]);
const FRAME_BUDGET = 60000;      // bytes per subscribe frame (the gateway's limit is 65536)
const KEYS_PER_FRAME = 1000;     // max_subscriptions
const AWAIT_GRACE_MS = 5000;     // client-side guard on top of an await's timeout_ms
const OPEN = 1;                  // WebSocket.OPEN

/** An error reply of the gateway (`code` from the protocol's error table) or a client-side failure
 *  (`disconnected`, `closed`, `timeout`). */
export class FreshwireError extends Error {
  constructor(code, message, frame) {
    super(`${code}: ${message}`);
    this.name = "FreshwireError";
    this.code = code;
    if (frame !== undefined) this.frame = frame;
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

export class Freshwire {
  constructor(url, options = {}) {
    const {
      token, getToken, WebSocket: WS = globalThis.WebSocket, minBackoffMs = 100, maxBackoffMs = 10000,
      onState, pingIntervalMs = 15000, openTimeoutMs = 10000, random = Math.random,
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
    this._ws = null;
    this._open = false;
    this._attempt = 0;
    this._attemptBeforeOpen = 0;
    this._nextId = 1;
    this._pending = new Map();           // id -> request sent on the current socket
    this._queue = [];                    // awaits made while not open, sent on open
    this._timer = null;                  // reconnect delay
    this._openTimer = null;
    this._pingTimer = null;
    this._awaitingPong = false;
    this._retries = new Set();           // timers re-sending subscribes refused with `unavailable`
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

  /** Listen to "state" (state string), "error" (error frame object) or "invalidate" (changes). Returns an off function. */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) this._listeners.set(event, (set = new Set()));
    set.add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) { this._listeners.get(event)?.delete(fn); }

  /** Subscribe `keys` (a key or a list); `onInvalidate({key: version})` gets changes of these keys only.
   *  Returns an unsubscribe function. */
  subscribe(keys, onInvalidate) {
    const list = [...new Set(typeof keys === "string" ? [keys] : Array.from(keys))];
    for (const key of list) {
      if (typeof key !== "string" || !KEY_RE.test(key)) throw new TypeError(`freshwire: invalid key ${JSON.stringify(key)}`);
    }
    if (typeof onInvalidate !== "function") throw new TypeError("freshwire: onInvalidate must be a function");
    const sub = { keys: new Set(list), fn: onInvalidate, active: true };
    if (this._state === "closed") return () => {};
    const fresh = [];
    for (const key of list) {
      let set = this._subs.get(key);
      if (!set) {
        this._subs.set(key, (set = new Set()));
        if (!this.versions.has(key)) this.versions.set(key, null);
        fresh.push(key);
      }
      set.add(sub);
    }
    if (fresh.length && this._open) this._sendSubscribe(fresh);   // else: the resume on open includes them
    return () => this._unsubscribe(sub);
  }

  _unsubscribe(sub) {
    if (!sub.active) return;
    sub.active = false;
    const gone = [];
    for (const key of sub.keys) {
      const set = this._subs.get(key);
      if (!set) continue;
      set.delete(sub);
      if (set.size === 0) {
        this._subs.delete(key);
        this.versions.delete(key);
        gone.push(key);
      }
    }
    if (gone.length && this._open) this._request({ op: "unsubscribe", keys: gone }, { kind: "unsubscribe" });
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
      if (this._open) this._sendEntry(entry);
      else this._queue.push(entry);
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
    this._attemptBeforeOpen = this._attempt;
    this._attempt = 0;
    if (this._subs.size) this._sendSubscribe([...this._subs.keys()]);   // exact resume
    const queued = this._queue;
    this._queue = [];
    for (const entry of queued) this._sendEntry(entry);
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
    if (wasOpen && REFUSALS.has(code)) this._attempt = this._attemptBeforeOpen;
    if (code === CLOSE_AUTH && !this._getToken) {
      this._emit("error", { type: "error", code: "auth_failed", message: "the gateway refused the token (close 4001)" });
      this.close();
      return;
    }
    this._setState("reconnecting");
    this._schedule();
  }

  _schedule() {
    const delay = this._random() * Math.min(this._maxBackoff, this._minBackoff * 2 ** this._attempt);
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
      this._awaitingPong = true;
      this._request({ op: "ping" }, { kind: "ping" });
    }, this._pingInterval);
  }

  _stopTimers() {
    clearTimeout(this._openTimer);
    clearInterval(this._pingTimer);
    this._openTimer = this._pingTimer = null;
    for (const t of this._retries) clearTimeout(t);
    this._retries.clear();
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
    const queued = this._queue;
    this._queue = [];
    for (const entry of queued) this._fail(entry, code, message);
  }

  // -- internals: requests

  _send(body) {
    const ws = this._ws;
    if (!ws || !this._open) return false;
    try { ws.send(JSON.stringify(body)); return true; } catch { return false; }
  }

  _request(body, entry) {
    const id = this._nextId++;
    entry.id = id;
    this._pending.set(id, entry);
    if (this._send({ op: body.op, id, ...body })) return true;
    this._pending.delete(id);
    return false;
  }

  _sendEntry(entry) {
    if (!this._request(entry.body, entry)) this._fail(entry, "disconnected", "the request could not be sent");
  }

  /** One or a few `subscribe` frames (under the frame and key limits) with `since` for every key. */
  _sendSubscribe(keys) {
    let chunk = [];
    let size = 64;
    const flush = () => {
      if (!chunk.length) return;
      const since = {};
      for (const key of chunk) since[key] = this.versions.get(key) ?? null;
      this._request({ op: "subscribe", keys: chunk, since }, { kind: "subscribe", keys: chunk, tries: 0 });
      chunk = [];
      size = 64;
    };
    for (const key of keys) {
      const cost = 2 * key.length + 30;
      if (chunk.length && (size + cost > FRAME_BUDGET || chunk.length >= KEYS_PER_FRAME)) flush();
      chunk.push(key);
      size += cost;
    }
    flush();
  }

  _fail(entry, code, message, frame) {
    clearTimeout(entry.timer);
    entry.reject?.(new FreshwireError(code, message, frame));
  }

  _forget(entry) {
    if (entry.id !== null && this._pending.get(entry.id) === entry) this._pending.delete(entry.id);
    const i = this._queue.indexOf(entry);
    if (i >= 0) this._queue.splice(i, 1);
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
    if (msg.type === "invalidate") { this._onInvalidate(msg.keys); return; }
    const entry = typeof msg.id === "number" ? this._pending.get(msg.id) : undefined;
    if (msg.type === "error") this._emit("error", msg);
    if (!entry) return;
    switch (msg.type) {
      case "visible":
        if (entry.kind === "await") {
          this._pending.delete(msg.id);
          clearTimeout(entry.timer);
          entry.resolve({ version: msg.version, token: msg.token });
        }
        break;
      case "error":
        if (entry.kind === "subscribe" && msg.code === "forbidden") break;   // the rest is subscribed: a reply follows
        this._pending.delete(msg.id);
        if (entry.kind === "await") this._fail(entry, String(msg.code), String(msg.message ?? ""), msg);
        else if (entry.kind === "subscribe" && msg.code === "unavailable") this._retrySubscribe(entry);
        break;
      case "subscribed":
      case "unsubscribed":
      case "pong":
        this._pending.delete(msg.id);
        break;
      default:                                           // unknown type: ignore
    }
  }

  _retrySubscribe(entry) {
    const ws = this._ws;
    const tries = entry.tries + 1;
    const delay = this._random() * Math.min(this._maxBackoff, this._minBackoff * 2 ** tries);
    const timer = setTimeout(() => {
      this._retries.delete(timer);
      if (ws !== this._ws || !this._open) return;         // a reconnect resubscribes everything anyway
      const keys = entry.keys.filter((key) => this._subs.has(key));
      if (!keys.length) return;
      const since = {};
      for (const key of keys) since[key] = this.versions.get(key) ?? null;
      this._request({ op: "subscribe", keys, since }, { kind: "subscribe", keys, tries });
    }, delay);
    this._retries.add(timer);
  }

  _onInvalidate(keys) {
    if (keys === null || typeof keys !== "object") return;
    const fresh = {};
    let any = false;
    const perSub = new Map();
    for (const [key, version] of Object.entries(keys)) {
      const subs = this._subs.get(key);
      if (!subs || typeof version !== "string") continue;
      const held = this.versions.get(key);
      if (held != null && version <= held) continue;     // stale or duplicate: versions only increase
      this.versions.set(key, version);
      fresh[key] = version;
      any = true;
      for (const sub of subs) {
        let changes = perSub.get(sub);
        if (!changes) perSub.set(sub, (changes = {}));
        changes[key] = version;
      }
    }
    if (!any) return;
    for (const [sub, changes] of perSub) {
      if (!sub.active) continue;                         // unsubscribed by an earlier callback
      try { sub.fn(changes); } catch (err) { report(err); }
    }
    this._emit("invalidate", fresh);
  }
}

/** Open a client; it connects (and reconnects) by itself. */
export function connect(url, options = {}) {
  return new Freshwire(url, options);
}

export default connect;
