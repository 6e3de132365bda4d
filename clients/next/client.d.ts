// Types of @freshwire/next/client.
import type { ReactNode } from "react";
import type { Changes, ConnectOptions, State } from "@freshwire/client";

export interface FreshwireProviderProps {
  /** The gateway's WebSocket URL, e.g. wss://gateway.example/ws. */
  url: string;
  /** A browser token (JWT) minted on the server for this user's key patterns. */
  token?: string;
  /** Called before every (re)connect; a Server Action works. */
  getToken?: () => Promise<string> | string;
  /** The versions the server render read (readVersions before the data). */
  versions?: Record<string, string | null>;
  /** What a change does for hooks without a callback (default: router.refresh() in a transition). */
  refresh?: (changes: Changes) => void;
  delayMs?: number;
  options?: Omit<ConnectOptions, "token" | "getToken">;
  children?: ReactNode;
}

export declare function FreshwireProvider(props: FreshwireProviderProps): ReactNode;
export declare function useFreshwire(keys: string | Iterable<string>, onChange?: (changes: Changes) => unknown): void;
export declare function useFreshwireState(): State | "closed";
