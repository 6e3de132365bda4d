// Types of @freshwire/next/route.

export declare const ALL_TAG: "freshwire:all";
export declare const TOLERANCE_S: 300;

/** One batch of the sink (docs/sink.md, "The request"). */
export interface Batch {
  version: string;
  txId?: string;
  commitTs?: number;
  keys: string[];
  prefixes: string[];
  ops?: Record<string, Record<string, number>>;
  [field: string]: unknown;
}

/** Tags for a cached read of `keys`: each key, its prefix up to the first ":", and ALL_TAG. */
export declare function cacheTags(keys: Iterable<string>): string[];
/** A batch's tags: its keys and prefixes ("" as ALL_TAG). */
export declare function tagsOfBatch(batch: Batch): string[];
export declare function verifySignature(secret: string, timestamp: string | null, body: Uint8Array | string,
  signature: string | null, options?: { toleranceS?: number; nowS?: number }): boolean;

/** Where applied versions are remembered: sync or async. */
export interface SeenStore {
  has(key: string): boolean | Promise<boolean>;
  add(key: string): void | Promise<void>;
}
export declare function memorySeen(limit?: number): SeenStore;

export interface PurgeOptions {
  /** FRESHWIRE_SINK_SECRET, shared with the sink. */
  secret: string;
  toleranceS?: number;
  seen?: SeenStore;
  tagsFor?: (batch: Batch) => string[];
  /** Defaults to next/cache's. */
  revalidateTag?: (tag: string, profile?: unknown) => void;
  now?: () => number;
}

export declare function createPurgeHandler(options: PurgeOptions): (request: Request) => Promise<Response>;
