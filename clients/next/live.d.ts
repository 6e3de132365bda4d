// Types of @freshwire/next/live.
import type { Changes, ConnectOptions, Freshwire, State, Unsubscribe } from "@freshwire/client";

export interface LiveOptions {
  connect: (url: string, options?: ConnectOptions) => Freshwire;
  url: string;
  connectOptions?: ConnectOptions;
  /** Called once per batch of changes of listeners without their own callback. */
  refresh?: (changes: Changes) => void;
  /** Coalescing window in ms (default 0: the same tick). */
  delayMs?: number;
  /** After a `replica_lag` lapse, the lapsed keys are handed on again after each of these delays
   *  (default LAPSE_RETRY_MS: 500, 1500, 4000): the refresh they caused may have read old data. */
  lapseRetryMs?: number[];
}

export declare const LAPSE_RETRY_MS: number[];

export interface Live {
  readonly state: State | "closed";
  readonly client: Freshwire | null;
  retain(): () => void;
  watch(keys: string[], since: Record<string, string | null> | null, onChange?: ((changes: Changes) => unknown) | null): Unsubscribe;
  onState(fn: (state: State) => void): () => void;
  close(): void;
}

export declare function createLive(options: LiveOptions): Live;
