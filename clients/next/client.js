"use client";
// @freshwire/next/client: a provider and a hook for client components (docs/nextjs.md).
//
//   <FreshwireProvider url={wsUrl} token={browserToken} versions={renderVersions}>   (in a server page)
//   useFreshwire([`card:${id}`])            // a change refreshes the route (coalesced across components)
//   useFreshwire([`card:${id}`], onChange)  // or calls you instead
import { createContext, createElement, startTransition, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { useRouter } from "next/navigation";
import { connect } from "@freshwire/client";
import { createLive } from "./live.js";

const FreshwireContext = createContext(null);

/** One connection for the components below it. `versions`: the versions the server render read
 *  (readVersions on the server, before reading the data), so a subscription starts exactly where the
 *  render stopped. `refresh(changes)`: what a change does when a hook has no callback (default: a
 *  router refresh in a transition). */
export function FreshwireProvider({ url, token, getToken, versions, refresh, delayMs = 0, options, children }) {
  const router = useRouter();
  const refreshRef = useRef(null);
  refreshRef.current = refresh ?? (() => startTransition(() => router.refresh()));
  const [live] = useState(() => (typeof window === "undefined" ? null : createLive({
    connect, url, delayMs,
    connectOptions: { ...options, ...(token ? { token } : {}), ...(getToken ? { getToken } : {}) },
    refresh: (changes) => refreshRef.current(changes),
  })));
  useEffect(() => live?.retain(), [live]);
  const value = useMemo(() => ({ live, versions: versions ?? {} }), [live, versions]);
  return createElement(FreshwireContext.Provider, { value }, children);
}

/** Subscribe `keys` while mounted, from the versions the server render used. A change calls
 *  `onChange(changes)`, or (without one) refreshes the route once for all components. */
export function useFreshwire(keys, onChange) {
  const ctx = useContext(FreshwireContext);
  if (ctx === null) throw new Error("freshwire: useFreshwire needs a <FreshwireProvider> above it");
  const callback = useRef(onChange);
  useEffect(() => { callback.current = onChange; });
  const signature = (typeof keys === "string" ? [keys] : [...keys]).join("\n");
  const hasCallback = typeof onChange === "function";
  const { live, versions } = ctx;
  const versionsRef = useRef(versions);
  versionsRef.current = versions;
  useEffect(() => {
    if (live === null || signature === "") return undefined;
    const list = signature.split("\n");
    const since = Object.fromEntries(list.map((k) => [k, versionsRef.current[k] ?? null]));
    return live.watch(list, since, hasCallback ? (changes) => callback.current?.(changes) : null);
  }, [live, signature, hasCallback]);
}

const noop = () => () => {};

/** The connection's state: "connecting" | "open" | "reconnecting" | "closed". */
export function useFreshwireState() {
  const ctx = useContext(FreshwireContext);
  const live = ctx?.live ?? null;
  return useSyncExternalStore(live ? live.onState : noop, () => (live ? live.state : "closed"), () => "connecting");
}
