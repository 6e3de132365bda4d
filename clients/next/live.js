// @freshwire/next/live: the hook's core, without React: one shared JS client for a page, subscriptions
// that start from the versions the server render read, and refreshes coalesced across components.

/** `connect(url, options)` is @freshwire/client's. `refresh(changes)` runs once for all the changes of
 *  listeners without a callback that arrived within `delayMs` (0: the same tick): one router refresh for
 *  a transaction that touched the keys of many components. */
export function createLive({ connect, url, connectOptions = {}, refresh = () => {}, delayMs = 0 } = {}) {
  if (typeof connect !== "function") throw new TypeError("freshwire: createLive needs connect (from @freshwire/client)");
  let fw = null;
  let users = 0;
  let state = "closed";
  const stateFns = new Set();
  let pending = null;
  let timer = null;

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
    }
    return fw;
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
      return client().subscribe(keys, handler, { since: since ?? {} });
    },
    onState(fn) {
      stateFns.add(fn);
      return () => stateFns.delete(fn);
    },
    close() {
      clearTimeout(timer);
      timer = null;
      pending = null;
      fw?.close();
      fw = null;
    },
  };
}
