// Type declarations for freshwire.js (protocol freshwire.v1).

/** 16 lowercase hex digits; compare as plain strings. */
export type Version = string;
export type State = "connecting" | "open" | "reconnecting" | "closed";
/** key -> new version */
export type Changes = Record<string, Version>;
/** The payload an invalidate carried (docs/protocol.md `data`), for some of the changed keys: the rule's
 *  payload columns of the row, or null when the row was deleted. A changed key without an entry is
 *  refetched as usual. */
export type Rows = Record<string, Record<string, unknown> | null>;
/** A listener of changes (and of the rows carried for some of them, `{}` when none). A returned promise
 *  tells the client the app is busy with them until it settles (counted by `lagMs()`; a rejection is
 *  reported like a throw). */
export type ChangesListener = (changes: Changes, rows: Rows) => void | PromiseLike<unknown>;

/** What lapsed (docs/protocol.md, "lapse"): the replica may still serve old data of `keys`
 *  (`replica_lag`), invalidations were lost upstream and every key was invalidated (`flush`), or live
 *  delivery was interrupted and every key re-read (`resync`). Other reasons may come later. */
export type LapseReason = "replica_lag" | "flush" | "resync";

/** A `lapse` message: a guarantee did not hold for these subscribed keys. It follows the invalidate it concerns. */
export interface Lapse {
  type: "lapse";
  reason: LapseReason | (string & {});
  /** The keys of this connection it concerns (for `resync`: all of them). */
  keys: string[];
  /** The transaction's version (`resync`: the watermark after the re-read); null when unknown. */
  version: Version | null;
  [field: string]: unknown;
}

/** An `error` frame of the gateway, or a client-side one (`auth_failed`, `get_token_failed`, `connect_failed`). */
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  id?: number;
  keys?: string[];
  [field: string]: unknown;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** Static token (JWT), sent as the `token` query parameter. */
  token?: string;
  /** Called before every (re)connect, so also after a 4001 close; takes precedence over `token`. */
  getToken?: () => Promise<string> | string;
  /** WebSocket implementation; defaults to `globalThis.WebSocket` (Node 20 needs `--experimental-websocket`). */
  WebSocket?: WebSocketConstructor;
  /** Backoff base in ms (default 100): delay = random() * min(maxBackoffMs, minBackoffMs * 2^attempt),
   *  `attempt` reset after a connection stayed up 30 s or the gateway restarted (1001/1012). */
  minBackoffMs?: number;
  /** Backoff cap in ms (default 10000). */
  maxBackoffMs?: number;
  /** Called on every state change, starting with "connecting". */
  onState?: (state: State) => void;
  /** Application-level ping interval in ms (default 15000; 0: off). A connection silent for a whole
   *  interval after a ping is dropped and resumed. */
  pingIntervalMs?: number;
  /** A socket not open after this many ms is abandoned and retried (default 10000; 0: off). */
  openTimeoutMs?: number;
  /** Random source in [0, 1) for the jitter (default Math.random; for tests). */
  random?: () => number;
  /** Frames sent per second at most (default 40: under the gateway's max_messages_per_s, 50). */
  framesPerSecond?: number;
  /** Frames sent at once at most (default 40: under the gateway's burst, 100). */
  frameBurst?: number;
  /** Keys per connection and per frame (default 1000, the gateway's max_subscriptions); keys past it
   *  are refused with `too_many_keys`. */
  maxSubscriptions?: number;
  /** A subscribe/unsubscribe frame unanswered this long (ms, default 10000) is sent again. */
  replyTimeoutMs?: number;
}

/** What subscribe() returns: call it to unsubscribe. */
export interface Unsubscribe {
  (): void;
  /** Resolves once every key is live on the gateway (waiting across reconnects); rejects with a
   *  FreshwireError: `forbidden`, `too_many_keys`, `invalid_key`, … (`keys`: the refused keys, which
   *  are dropped; the call's other keys stay subscribed), or `closed`. Awaiting it is optional. */
  readonly ready: Promise<void>;
}

export interface SubscribeOptions {
  /** key -> the version the caller's data reflects (null or missing: unknown). */
  since?: Record<string, Version | null | undefined>;
}

export interface AwaitOptions {
  /** Sent as `timeout_ms` (default 5000, at most the gateway's `await_max_ms`). */
  timeoutMs?: number;
}

export interface Visible {
  version: Version;
  token: string;
}

export declare const SUBPROTOCOL: "freshwire.v1";

export declare class FreshwireError extends Error {
  /** The gateway's error code (`timeout`, `bad_token`, `too_many_awaits`, `forbidden`, …) or `disconnected` / `closed`. */
  readonly code: string;
  /** The error frame, when the gateway sent one. */
  readonly frame?: ErrorFrame;
  /** For a refused subscribe: the keys refused (no longer subscribed). */
  readonly keys?: string[];
  constructor(code: string, message: string, frame?: ErrorFrame, keys?: string[]);
}

/** The reconnect delay before attempt `attempt` (0, 1, …): random() * min(maxMs, minMs * 2^attempt). */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;
/** The attempt count after a connection open `uptimeMs` closed with `code`: 0 after 30 s up or a
 *  1001/1012 close, else unchanged (docs/protocol.md, "Client reconnect policy"). */
export declare function attemptAfterClose(attempt: number, uptimeMs: number, code: number): number;

export interface OutboxOptions {
  rate?: number;
  burst?: number;
  maxKeys?: number;
  keysPerFrame?: number;
  frameBytes?: number;
  replyTimeoutMs?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  random?: () => number;
  /** The clock's reading at creation, in ms. */
  now?: number;
}

export interface Refusal {
  code: string;
  message: string;
  keys: string[];
  /** The gateway's error frame; undefined when the client refused the keys itself (past maxKeys). */
  frame?: ErrorFrame;
}

export type OutboxStep<T> =
  | { op: "subscribe" | "unsubscribe"; id: number; keys: string[] }
  | { op: "other"; item: T }
  | { waitMs: number };

export type OutboxEvent<K> =
  | { type: "settled"; ticket: K; error: Refusal | { code: string; message: string; keys: string[] } | null }
  | ({ type: "refused" } & Refusal);

/** The client's sans-I/O scheduler of subscribe/unsubscribe frames (batching per tick, pacing,
 *  re-sending dropped frames, settling tickets). Time (`now`, ms) is passed in. */
export declare class Outbox<K = unknown, T = unknown> {
  constructor(options?: OutboxOptions);
  want(keys: string[], ticket?: K): void;
  unwant(keys: string[], ticket?: K): void;
  enqueue(item: T): void;
  cancel(item: T): void;
  spend(now: number): boolean;
  reset(now: number): void;
  next(now: number, id: number, othersOnly?: boolean): OutboxStep<T> | null;
  onRateLimited(now: number): void;
  onReply(msg: { id: number; type: string; [field: string]: unknown }, now: number): boolean;
  failAll(code: string, message: string): T[];
  take(): OutboxEvent<K>[];
}

export interface FreshwireEvents {
  state: State;
  error: ErrorFrame;
  invalidate: Changes;
  lapse: Lapse;
}

export declare class Freshwire {
  constructor(url: string, options?: ConnectOptions);
  readonly url: string;
  /** Newest version seen per subscribed key (null: none yet). */
  readonly versions: Map<string, Version | null>;
  readonly state: State;
  /** Subscribe keys; `onInvalidate` gets the changes of these keys only. Returns the unsubscribe
   *  function, with `ready`. Calls made in one tick share frames. Throws TypeError for a key outside
   *  the protocol's alphabet. `since`: the versions the caller's data already reflects (e.g. those a
   *  server render read); a key new to this client is subscribed from there (no change between render
   *  and subscribe is lost, none before it is repeated), a key held newer is handed over at once. */
  subscribe(keys: string | Iterable<string>, onInvalidate: ChangesListener, options?: SubscribeOptions): Unsubscribe;
  /** Read-your-writes: resolves once the write token's transaction is released. */
  await(writeToken: string, options?: AwaitOptions): Promise<Visible>;
  /** `fn` for every `lapse` message, after the listeners of the invalidate it concerns; a throwing
   *  listener is reported and does not stop the others. Returns the off function. */
  onLapse(fn: (lapse: Lapse) => void): () => void;
  /** How far the application trails this client, in ms: the time since the oldest invalidation still
   *  waiting for the app (a listener's returned promise not settled) was read from the gateway; 0
   *  when none waits. Does not count time before the client read the frame. */
  lagMs(): number;
  on(event: "invalidate", fn: ChangesListener): () => void;
  on<E extends keyof FreshwireEvents>(event: E, fn: (arg: FreshwireEvents[E]) => void): () => void;
  off<E extends keyof FreshwireEvents>(event: E, fn: (arg: FreshwireEvents[E]) => void): void;
  close(): void;
}

export declare function connect(url: string, options?: ConnectOptions): Freshwire;
export default connect;

/** One column value as it appears inside a key (the consumer's encoding: =XX per UTF-8 byte outside A-Z a-z 0-9 _ . @ + -). */
export function encodeValue(value: string | number | boolean): string;
/** The key a rule template renders for these values, exactly as the consumer renders it. */
export function keyFor(template: string, values: Record<string, string | number | boolean>): string;
