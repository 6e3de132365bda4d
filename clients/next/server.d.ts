// Types of @freshwire/next/server.

/** 16 lowercase hex digits, increasing in commit order. */
export type Version = string;

/** Anything that runs SQL like node-postgres: `query(sql)` resolving `{rows}`. */
export interface Queryable {
  query(sql: string, params?: unknown[]): Promise<{ rows: any[]; rowCount?: number | null }>;
}

/** A node-postgres `Pool` (or anything whose `connect()` gives a client with `release()`). */
export interface PoolLike {
  connect(): Promise<Queryable & { release(err?: unknown): void }>;
}

export declare const WRITE_TOKEN_SQL: string;
export declare const DEFAULT_TIMEOUT_MS: 5000;

/** The write token ("fw1:<xid>") of the transaction `client` is in; call after the writes, before COMMIT. */
export declare function writeToken(client: Queryable): Promise<string>;

export interface MintOptions {
  subject?: string;
  /** Key patterns the token covers (default ["*"]). */
  keys?: string[];
  ttlS?: number;
  /** The claim the gateway reads (FRESHWIRE_JWT_KEYS_CLAIM, default "fw_keys"). */
  claim?: string;
  now?: number;
}
/** An HS256 JWT signed with the gateway's FRESHWIRE_JWT_SECRET. */
export declare function mintToken(secret: string, options?: MintOptions): string;

export type Credential = string | (() => string | Promise<string>);

export interface WaitResult {
  visible: boolean;
  token: string;
  /** The transaction's version, when visible. */
  version?: Version;
  /** Why not visible: "timeout" | "unavailable" | "too_many_awaits" | "auth_failed" | "bad_token" | "unreachable" | "skipped" | … */
  code?: string;
  message?: string;
  waitedMs: number;
}

export interface GatewayOptions {
  /** The gateway: http(s)://host:port, or its ws(s)://host:port/ws URL. */
  gatewayUrl: string;
  credential: Credential;
  fetch?: typeof globalThis.fetch;
}

/** GET /v1/wait: resolves (never rejects) once visible, or with visible false and a code. */
export declare function waitVisible(token: string, options: GatewayOptions & { timeoutMs?: number }): Promise<WaitResult>;

/** GET /v1/versions: the keys' current versions (null: never changed) and the watermark. */
/** Given to every key when the gateway cannot tell versions (503 or unreachable, after retries). */
export declare const UNKNOWN_VERSION: Version;
export declare const VERSION_RETRY_MS: number[];

/** The versions of `keys` (GET /v1/versions), asked again after each of `retryMs` while the gateway
 *  answers 503 or not at all; then every key is UNKNOWN_VERSION and `unknown` is true. */
export declare function readVersions(keys: Iterable<string>,
                                     options: GatewayOptions & { timeoutMs?: number; retryMs?: number[] }):
  Promise<{ versions: Record<string, Version | null>; watermark: Version | null; unknown?: boolean }>;

/** The parts of next/cache used (injectable for tests). */
export interface NextCacheApi {
  revalidateTag(tag: string, profile?: unknown): void;
  revalidatePath(path: string, type?: "page" | "layout"): void;
  updateTag?: (tag: string) => void;
}

export type PathSpec = string | [string, "page" | "layout"];

export declare function revalidate(options: {
  tags?: string[];
  paths?: PathSpec[];
  /** In a Server Action (default true): tags use updateTag where Next has it. */
  inAction?: boolean;
  cache?: NextCacheApi;
}): Promise<void>;

export interface WriteOptions<T> {
  /** Tags to revalidate, or a function of the transaction's value. */
  tags?: string[] | ((value: T) => string[]);
  paths?: PathSpec[] | ((value: T) => PathSpec[]);
  /** false: skip the wait (revalidate at once; replicas may still serve the old data). */
  wait?: boolean;
  timeoutMs?: number;
}

export interface FreshwireOptions {
  gatewayUrl: string;
  /** A JWT the gateway accepts, or a function returning one... */
  credential?: Credential;
  /** ...or the gateway's HS256 secret, to mint (and renew) a server token. */
  jwtSecret?: string;
  subject?: string;
  timeoutMs?: number;
  fetch?: typeof globalThis.fetch;
  cache?: NextCacheApi;
  /** Called when a wait did not see the write (timeout, gateway down, …); the action still returns. */
  onTimeout?: (result: WaitResult) => void;
}

export interface Freshwire {
  /** BEGIN; fn(client); writeToken; COMMIT — then wait until visible, then revalidate. A throw from
   *  `fn` rolls back and is rethrown (nothing waited, nothing revalidated). */
  transaction<T>(pool: PoolLike, fn: (client: Queryable) => Promise<T>, options?: WriteOptions<T>):
    Promise<WaitResult & { value: T }>;
  /** Wait, then revalidate, for a token taken in a transaction you ran yourself (Drizzle, Prisma). */
  afterWrite<T = undefined>(token: string, options?: WriteOptions<T> & { result?: T }): Promise<WaitResult>;
  waitVisible(token: string, options?: { timeoutMs?: number }): Promise<WaitResult>;
  readVersions(keys: Iterable<string>):
    Promise<{ versions: Record<string, Version | null>; watermark: Version | null; unknown?: boolean }>;
  credential: () => string | Promise<string>;
}

export declare function createFreshwire(options: FreshwireOptions): Freshwire;
