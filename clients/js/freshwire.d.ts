// Type declarations for freshwire.js (protocol freshwire.v1).

/** 16 lowercase hex digits; compare as plain strings. */
export type Version = string;
export type State = "connecting" | "open" | "reconnecting" | "closed";
/** key -> new version */
export type Changes = Record<string, Version>;

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
  /** Backoff base in ms (default 100): delay = random() * min(maxBackoffMs, minBackoffMs * 2^attempt). */
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
  /** The gateway's error code (`timeout`, `bad_token`, `too_many_awaits`, …) or `disconnected` / `closed`. */
  readonly code: string;
  /** The error frame, when the gateway sent one. */
  readonly frame?: ErrorFrame;
  constructor(code: string, message: string, frame?: ErrorFrame);
}

export interface FreshwireEvents {
  state: State;
  error: ErrorFrame;
  invalidate: Changes;
}

export declare class Freshwire {
  constructor(url: string, options?: ConnectOptions);
  readonly url: string;
  /** Newest version seen per subscribed key (null: none yet). */
  readonly versions: Map<string, Version | null>;
  readonly state: State;
  /** Subscribe keys; `onInvalidate` gets the changes of these keys only. Returns the unsubscribe
   *  function. Throws TypeError for a key outside the protocol's alphabet. */
  subscribe(keys: string | Iterable<string>, onInvalidate: (changes: Changes) => void): () => void;
  /** Read-your-writes: resolves once the write token's transaction is released. */
  await(writeToken: string, options?: AwaitOptions): Promise<Visible>;
  on<E extends keyof FreshwireEvents>(event: E, fn: (arg: FreshwireEvents[E]) => void): () => void;
  off<E extends keyof FreshwireEvents>(event: E, fn: (arg: FreshwireEvents[E]) => void): void;
  close(): void;
}

export declare function connect(url: string, options?: ConnectOptions): Freshwire;
export default connect;
