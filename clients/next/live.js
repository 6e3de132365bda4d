// @freshwire/next/live: the hook's core, without React: one shared JS client for a page, subscriptions
// that start from the versions the server render read, and refreshes coalesced across components.

/** Refetch delays after a `replica_lag` lapse (docs/protocol.md): the transaction was released before
 *  every replica had it, so the refresh it caused may have read old data; the page refreshes again. */
export const LAPSE_RETRY_MS = [500, 1500, 4000];

/** `connect(url, options)` is @freshwire/client's. `refresh(changes)` runs once for all the changes of
 *  listeners without a callback that arrived within `delayMs` (0: the same tick): one router refresh for
 *  a transaction that touched the keys of many components. After a `replica_lag` lapse the lapsed keys
 *  are handed on again (to their callback, or a refresh) after each of `lapseRetryMs`. */
export function createLive({ connect, url, connectOptions = {}, refresh = () => {}, delayMs = 0,
                             lapseRetryMs = LAPSE_RETRY_MS } = {}) {
  if (typeof connect !== "function") throw new TypeError("freshwire: createLive needs connect (from @freshwire/client)");
  let fw = null;
  let users = 0;
  let state = "closed";
  const stateFns = new Set();
  let pending = null;
  let timer = null;
  const handlers = new Map();   // key -> the callbacks of its watchers (scheduleRefresh for the plain ones)
  const retries = new Set();    // timers of lapse retries, cleared on close

  function setState(next) {
    state = next;
    for (const fn of [...stateFns]) fn(next);
  }

  function client() {
    if (fw === null || fw.state === "closed") {
      fw = connect(url, {
        ...connectOptions,
        onState: (s) => { setState(s); connectOptions.onState?.(s); },
      });
      fw.onLapse?.(onLapse);
    }
    return fw;
  }

  function onLapse(lapse) {
    if (lapse.reason !== "replica_lag") return;   // flush and resync arrive as invalidations already
    const changes = Object.fromEntries((lapse.keys ?? []).map((k) => [k, lapse.version ?? null]));
    for (const ms of lapseRetryMs) {
      const t = setTimeout(() => { retries.delete(t); handOn(changes); }, ms);
      retries.add(t);
    }
  }

  function handOn(changes) {
    const byHandler = new Map();
    for (const [key, version] of Object.entries(changes)) {
      for (const fn of handlers.get(key) ?? []) {
        byHandler.set(fn, { ...byHandler.get(fn), [key]: version });
      }
    }
    for (const [fn, own] of byHandler) fn(own);
  }

  function scheduleRefresh(changes) {
    pending = { ...pending, ...changes };
    if (timer !== null) return;
    timer = setTimeout(() => {
      const all = pending;
      pending = null;
      timer = null;
      refresh(all);
    }, delayMs);
  }

  return {
    get state() { return state; },
    get client() { return fw; },
    /** Keep the connection open while at least one user holds it; returns the release function. The
     *  last release closes it after the current tick (React's StrictMode re-mounts at once). */
    retain() {
      users += 1;
      client();
      let released = false;
      return () => {
        if (released) return;
        released = true;
        users -= 1;
        setTimeout(() => {
          if (users === 0 && fw !== null) { fw.close(); fw = null; }
        }, 0);
      };
    },
    /** Subscribe `keys` from `since` ({key: version the render used}); `onChange(changes)` when given,
     *  else a coalesced `refresh`. Returns the unsubscribe function (with `ready`). */
    watch(keys, since, onChange) {
      const handler = typeof onChange === "function" ? onChange : scheduleRefresh;
      for (const key of keys) {
        if (!handlers.has(key)) handlers.set(key, new Set());
        handlers.get(key).add(handler);
      }
      const off = client().subscribe(keys, handler, { since: since ?? {} });
      const unwatch = () => {
        for (const key of keys) {
          handlers.get(key)?.delete(handler);
          if (handlers.get(key)?.size === 0) handlers.delete(key);
        }
        off();
      };
      unwatch.ready = off.ready;
      return unwatch;
    },
    onState(fn) {
      stateFns.add(fn);
      return () => stateFns.delete(fn);
    },
    close() {
      clearTimeout(timer);
      for (const t of retries) clearTimeout(t);
      retries.clear();
      timer = null;
      pending = null;
      fw?.close();
      fw = null;
    },
  };
}
