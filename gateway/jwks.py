"""RS256 keys from a JWKS endpoint, kept fresh in the background so that verifying a token never waits.

The pure core is `parse_jwks` (a JWKS document in, a `KeySet` out) and `RefreshPolicy` (when to fetch,
given the clock as an argument). `JwksRefresher` is the thin shell: one daemon thread that fetches the
document with a short timeout whenever the policy says so, and publishes each good key set by swapping
one reference. The event loop only reads that reference and, for a `kid` it does not know, asks for a
refresh without waiting for it.

Guarantees:
- nothing on the caller's side blocks: `keys`, `unknown_kid` and `start` return at once;
- a fetch gives up after about `jwks_timeout_s` (connecting and each read wait at most that long, and
  reading stops once it has passed; name resolution is not bounded), and never runs on the event loop;
- a failed fetch keeps the last good key set, and no fetch is made for `jwks_retry_s` after it;
- unknown `kid`s cause at most one fetch per `jwks_unknown_kid_s`, whoever sends them;
- a good key set is refetched every `jwks_refresh_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from gateway.errors import SettingsError
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1 << 20   # a larger document is a failed fetch (providers publish a few kB)
MAX_JWKS_KEYS = 100        # more keys than this is a failed fetch (each one may be tried per kid-less token)
READ_CHUNK = 65536
STOP_JOIN_S = 1.0          # how long stop() waits for the thread; a fetch in flight is abandoned (daemon thread)


class JwksError(Exception):
    """A JWKS document could not be fetched or holds no usable RS256 key; the message says why."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """RS256 public keys by `kid`; keys published without a `kid` are in `unnamed`."""

    named: Mapping[str, tuple[RSAPublicKey, ...]] = field(default_factory=dict)
    unnamed: tuple[RSAPublicKey, ...] = ()

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.named.values()) + len(self.unnamed)

    def for_kid(self, kid: str | None) -> tuple[tuple[RSAPublicKey, ...], bool]:
        """The keys worth trying for a token with this `kid` (None: every key), and whether any of them
        was published for it (for None: whether there is any key). Keys without a `kid` are tried for
        any token."""
        if kid is None:
            every = tuple(k for keys in self.named.values() for k in keys) + self.unnamed
            return every, bool(every)
        named = self.named.get(kid, ())
        return named + self.unnamed, bool(named)


EMPTY = KeySet()


def parse_jwks(doc: object) -> KeySet:
    """The RS256 signing keys of a JWKS document: RSA keys whose `use` (if any) is `sig` and whose `alg`
    (if any) is `RS256`; other members are skipped. JwksError when none is left or there are too many."""
    members = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(members, list):
        raise JwksError('not a JWKS document (an object with a "keys" list)')
    named: dict[str, tuple[RSAPublicKey, ...]] = {}
    unnamed: list[RSAPublicKey] = []
    for member in members:
        if (not isinstance(member, dict) or member.get("kty") != "RSA" or member.get("use", "sig") != "sig"
                or member.get("alg", "RS256") != "RS256"):
            continue
        try:
            key = jwt.PyJWK(member, algorithm="RS256").key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if not isinstance(key, RSAPublicKey):  # a private key published by mistake is not used
            continue
        kid = member.get("kid")
        if isinstance(kid, str):
            named[kid] = (*named.get(kid, ()), key)
        else:
            unnamed.append(key)
    found = KeySet(named, tuple(unnamed))
    if not len(found):
        raise JwksError("no usable RS256 key")
    if len(found) > MAX_JWKS_KEYS:
        raise JwksError(f"{len(found)} keys, more than {MAX_JWKS_KEYS}")
    return found


@dataclass(frozen=True, slots=True)
class JwksTiming:
    timeout_s: float        # longest fetch
    refresh_s: float        # refetch a good key set this often
    retry_s: float          # a failed fetch is cached this long
    unknown_kid_s: float    # at most one fetch per this interval for unknown kids

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> JwksTiming:
        timing = cls(settings.jwks_timeout_s, settings.jwks_refresh_s, settings.jwks_retry_s,
                     settings.jwks_unknown_kid_s)
        for f in fields(timing):
            if not 0 < getattr(timing, f.name) < math.inf:  # also refuses nan
                raise SettingsError(f"FRESHWIRE_JWKS_{f.name.upper()} must be a finite number of seconds above 0")
        return timing


class RefreshPolicy:
    """When to fetch: at once at first, every `refresh_s` after a success, `retry_s` after a failure
    (the failure is cached: nothing shortens it), and early when an unknown `kid` asks, at most once
    per `unknown_kid_s`. Pure: every method takes the time."""

    def __init__(self, timing: JwksTiming) -> None:
        self.timing = timing
        self.succeeded_at: float | None = None
        self.failed_at: float | None = None      # set while the last attempt is a failure
        self.error = ""
        self.fetching = False
        self.requested = False                   # an unknown kid asked for a fetch
        self.kid_fetch_at: float | None = None   # when an unknown kid last caused one

    def wait_s(self, now: float) -> float:
        """Seconds until the next fetch is due (0: now)."""
        if self.failed_at is not None:
            return max(0.0, self.failed_at + self.timing.retry_s - now)
        if self.succeeded_at is None or self.requested:
            return 0.0
        return max(0.0, self.succeeded_at + self.timing.refresh_s - now)

    def unknown_kid(self, now: float) -> bool:
        """A token named a kid outside the key set: True if that is to cause a fetch now."""
        if self.fetching or self.requested or (self.succeeded_at is None and self.failed_at is None):
            return False  # a fetch is under way or already due: its result will do
        if self.failed_at is not None and now < self.failed_at + self.timing.retry_s:
            return False
        if self.kid_fetch_at is not None and now < self.kid_fetch_at + self.timing.unknown_kid_s:
            return False
        self.requested = True
        self.kid_fetch_at = now
        return True

    def begin(self) -> None:
        self.fetching = True
        self.requested = False

    def succeeded(self, now: float) -> None:
        self.fetching = False
        self.succeeded_at, self.failed_at, self.error = now, None, ""

    def failed(self, now: float, error: str) -> None:
        self.fetching = False
        self.failed_at, self.error = now, error


def fetch_jwks(url: str, timeout_s: float) -> KeySet:
    """GET the document and parse it, giving up after about `timeout_s` (blocking: call it off the
    loop). JwksError for any failure."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": "freshwire-gateway"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = bytearray()
            while chunk := response.read1(READ_CHUNK):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise JwksError(f"not read within {timeout_s:g}s")
    except urllib.error.HTTPError as exc:
        raise JwksError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:  # refused, timed out, reset, bad URL
        raise JwksError(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise JwksError("not JSON") from None
    return parse_jwks(doc)


Fetch = Callable[[str, float], KeySet]


class JwksRefresher:
    """The key set of one JWKS URL, refreshed by a background thread (see the module docstring).

    `start()` is idempotent and `stop()` final. Until the first fetch succeeds the key set is empty.
    """

    def __init__(self, url: str, timing: JwksTiming, fetch: Fetch = fetch_jwks,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise SettingsError(f"FRESHWIRE_JWKS_URL must be an http:// or https:// URL, got {url!r}")
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._policy = RefreshPolicy(timing)
        self._lock = threading.Lock()        # guards the policy; never held across I/O
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._first = threading.Event()      # the first fetch has ended, well or not
        self._thread: threading.Thread | None = None
        self.keys: KeySet = EMPTY            # replaced whole by the thread: readers need no lock

    def start(self) -> None:
        if self._thread is not None or self._stopping.is_set():
            return
        self._thread = threading.Thread(target=self._run, name="jwks-refresh", daemon=True)
        self._thread.start()

    async def wait_first(self, timeout_s: float) -> bool:
        """Wait (off the loop) until the first fetch has ended, at most `timeout_s`; True if it has."""
        return self._first.is_set() or await asyncio.to_thread(self._first.wait, timeout_s)

    def stop(self, join_s: float = STOP_JOIN_S) -> None:
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def unknown_kid(self) -> None:
        """Ask for a refresh because a token named an unknown kid; rate-limited, returns at once."""
        with self._lock:
            wanted = self._policy.unknown_kid(self._clock())
        if wanted:
            self._wake.set()

    def problem(self) -> str | None:
        """None while the key set is loaded and the thread runs; else what is wrong, for readiness."""
        with self._lock:
            policy = self._policy
            error, loaded = policy.error, policy.succeeded_at is not None
        if self._thread is not None and not self._thread.is_alive() and not self._stopping.is_set():
            return "JWKS refresher stopped"
        if not loaded:
            return f"no JWKS keys yet ({error})" if error else "no JWKS keys yet"
        return None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:  # the thread must outlive any bug: log it, count it as a failed fetch
                log.exception("JWKS refresher failed")
                with self._lock:
                    self._policy.failed(self._clock(), f"refresher error: {exc!r}")
                self._first.set()

    def _step(self) -> None:
        with self._lock:
            wait = self._policy.wait_s(self._clock())
            if wait <= 0:
                self._policy.begin()
        if wait > 0:
            if self._wake.wait(wait):
                self._wake.clear()  # a wake-up lost between wait() and clear() is harmless: the policy
            return                  # is read again just below, and it holds the request
        try:
            keys, error = self._fetch(self.url, self._policy.timing.timeout_s), ""
        except JwksError as exc:
            keys, error = None, str(exc)
        with self._lock:
            if keys is None:
                self._policy.failed(self._clock(), error)
            else:
                self.keys = keys
                self._policy.succeeded(self._clock())
        self._first.set()
        if keys is None:
            log.warning("JWKS fetch from %s failed: %s; keeping %d keys, next try in %gs",
                        self.url, error, len(self.keys), self._policy.timing.retry_s)
        else:
            log.info("JWKS from %s: %d keys", self.url, len(keys))
