"""gateway.jwks and the Verifier with FRESHWIRE_JWKS_URL (issue #11): keys come from a real HTTP endpoint
served here on a free 127.0.0.1 port, refreshed in the background; no token, valid or not, makes the
event loop wait for the identity provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_support import SECRET, SUBPROTOCOL, token
from jwt.algorithms import RSAAlgorithm
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Subprotocol

from gateway import errors as E
from gateway.app import create_app
from gateway.auth import UNKNOWN_KEY, WRONG_AUDIENCE, WRONG_ISSUER, Verifier
from gateway.backend_memory import MemoryBackend
from gateway.errors import AuthError, SettingsError
from gateway.jwks import MAX_JWKS_KEYS, JwksError, JwksTiming, RefreshPolicy, parse_jwks
from gateway.settings import GatewaySettings, load_gateway_settings

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SLOW_IDP_S = 2.0      # the reproduction's identity provider answers after 2 s
STALL_BOUND_S = 0.5   # generous: a loop that waited on the fetch stalls for SLOW_IDP_S
WAIT_S = 5.0          # upper bound of every wait in this module


def jwk(key: rsa.RSAPrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    if kid is not None:
        body["kid"] = kid
    body.update(extra)
    return body


def jwks(*members: object) -> dict[str, Any]:
    return {"keys": list(members)}


def rs(key: rsa.RSAPrivateKey = KEY, kid: str | None = "k1", **over: Any) -> str:
    claims: dict[str, Any] = {"sub": "alice", "fw_keys": ["tenant:1:*"], "exp": int(time.time()) + 6 * 3600}
    claims.update(over)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm="RS256",
                      headers={"kid": kid} if kid else None)


def settings(**over: Any) -> GatewaySettings:
    return replace(GatewaySettings(redis_url="memory://"), **over)


def reason(verifier: Verifier, tok: str) -> str:
    """The refusal reason, or "ok" when the token is served."""
    try:
        verifier.verify(tok)
    except AuthError as exc:
        return exc.reason
    return "ok"


def eventually(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class JwksServer:
    """A JWKS endpoint on a free 127.0.0.1 port, served by threads: answers `doc` with `status` after
    `delay_s`, and counts the requests it received and answered."""

    def __init__(self, doc: dict[str, Any], delay_s: float = 0.0) -> None:
        self.doc, self.delay_s, self.status = doc, delay_s, 200
        self.hits = 0
        self.answered = 0
        self._release = threading.Event()  # set on exit: cuts delays short
        self._lock = threading.Lock()
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with idp._lock:
                    idp.hits += 1
                idp._release.wait(idp.delay_s)
                body = json.dumps(idp.doc).encode()
                self.send_response(idp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(body)
                with idp._lock:
                    idp.answered += 1

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"

    @property
    def in_flight(self) -> bool:
        with self._lock:
            return self.hits > self.answered

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(WAIT_S)


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """The app under uvicorn on a free 127.0.0.1 port, in a thread with its own event loop: host:port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert eventually(lambda: server.started or not thread.is_alive()) and server.started, "uvicorn did not start"
        yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)


# -- the regression tests of issue #11 (item 1)


async def test_jwks_unknown_kid_never_stalls_the_loop() -> None:
    """While the identity provider takes 2 s to answer, tokens with unknown kids are refused at once and
    the event loop keeps ticking (before: each one froze the loop for the whole fetch)."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def ticker() -> None:
        last = loop.time()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(loop.time() - last)
            last = loop.time()

    with JwksServer(jwks(jwk(KEY, "k1")), delay_s=SLOW_IDP_S) as idp:
        verifier = Verifier(settings(jwks_url=idp.url, jwks_timeout_s=WAIT_S))
        tick = asyncio.create_task(ticker())
        try:
            await asyncio.sleep(0.05)
            reasons = []
            for i in range(3):
                try:
                    verifier.verify(rs(kid=f"junk-{i}"))
                except AuthError as exc:
                    reasons.append(exc.reason)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            in_flight = idp.in_flight
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
            await asyncio.to_thread(verifier.close)
    assert max(gaps) < STALL_BOUND_S, f"the event loop stalled for {max(gaps):.2f}s"
    assert in_flight, "the fetch had ended: the test proved nothing"
    assert reasons == [UNKNOWN_KEY] * 3


def test_jwks_slow_endpoint_never_delays_health_or_other_connections() -> None:
    """The real gateway under uvicorn: while a connection's unknown-kid token has the identity provider
    fetched (2 s), /healthz and another connection's ping are answered, and that connection gets 4001."""
    with JwksServer(jwks(jwk(KEY, "k1")), delay_s=SLOW_IDP_S) as idp:
        app = create_app(settings(jwt_secret=SECRET, jwks_url=idp.url, jwks_timeout_s=WAIT_S),
                         backend=MemoryBackend())
        try:
            with served(app) as host, connect(f"ws://{host}/ws?token={token()}",
                                               subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=WAIT_S) as witness:
                witness.send(json.dumps({"op": "ping", "id": 1}))
                assert json.loads(witness.recv(timeout=WAIT_S)) == {"type": "pong", "id": 1}
                assert eventually(lambda: not idp.in_flight)  # a fetch at start (if any) is over
                hits = idp.hits
                closed: list[tuple[int, str]] = []

                def junk_connection() -> None:
                    try:
                        with connect(f"ws://{host}/ws?token={rs(kid='junk')}", subprotocols=[Subprotocol(SUBPROTOCOL)],
                                     open_timeout=3 * WAIT_S) as ws:
                            ws.recv(timeout=3 * WAIT_S)
                    except ConnectionClosed as exc:
                        closed.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (0, ""))

                junk = threading.Thread(target=junk_connection, daemon=True)
                junk.start()
                assert eventually(lambda: idp.hits > hits), "the unknown kid caused no fetch"
                started = time.monotonic()
                health = httpx.get(f"http://{host}/healthz", timeout=3 * WAIT_S)
                health_s = time.monotonic() - started
                started = time.monotonic()
                witness.send(json.dumps({"op": "ping", "id": 2}))
                pong = json.loads(witness.recv(timeout=3 * WAIT_S))
                ping_s = time.monotonic() - started
                in_flight = idp.in_flight
                junk.join(3 * WAIT_S)
        finally:
            app.state.fw.verifier.close()
    assert health.status_code == 200
    assert pong == {"type": "pong", "id": 2}
    assert health_s < STALL_BOUND_S, f"/healthz waited {health_s:.2f}s for the identity provider"
    assert ping_s < STALL_BOUND_S, f"another connection's ping waited {ping_s:.2f}s"
    assert in_flight, "the fetch had ended: the test proved nothing"
    assert closed and closed[0][0] == E.CLOSE_AUTH


# -- keys from the endpoint


async def test_jwks_rs256_token_from_endpoint_served_with_audience_and_issuer() -> None:
    """Item 2: a provider's RS256 token (kid, aud list, iss) verified against keys fetched over HTTP."""
    with JwksServer(jwks(jwk(KEY, "k1", use="sig", alg="RS256"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url, jwt_audience="freshwire",
                                     jwt_issuer="https://idp.example/"))
        await verifier.start()
        try:
            grant = verifier.verify(rs(aud=["account", "freshwire"], iss="https://idp.example/"))
            assert (grant.subject, grant.patterns) == ("alice", ("tenant:1:*",))
            assert reason(verifier, rs(aud="freshwire", iss="https://idp.example/")) == "ok"
            assert reason(verifier, rs(aud="account", iss="https://idp.example/")) == WRONG_AUDIENCE
            assert reason(verifier, rs(iss="https://idp.example/")) == WRONG_AUDIENCE
            assert reason(verifier, rs(aud="freshwire", iss="https://evil.example/")) == WRONG_ISSUER
            assert reason(verifier, rs(aud="freshwire")) == WRONG_ISSUER
            assert reason(verifier, rs(NEW_KEY, aud="freshwire", iss="https://idp.example/")) == \
                "bad signature or claims"
            assert verifier.problem() is None
            assert idp.hits == 1
        finally:
            await verifier.aclose()


async def test_jwks_token_without_kid_tries_every_fetched_key() -> None:
    with JwksServer(jwks(jwk(NEW_KEY, "k0"), jwk(KEY, "k1"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url))
        await verifier.start()
        try:
            assert reason(verifier, rs(kid=None)) == "ok"
            assert reason(verifier, rs(rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                       kid=None)) == "bad signature or claims"
        finally:
            await verifier.aclose()


async def test_jwks_unknown_kids_refetch_at_most_once_per_interval() -> None:
    with JwksServer(jwks(jwk(KEY, "k1"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url, jwks_unknown_kid_s=60))
        await verifier.start()
        try:
            assert idp.hits == 1
            assert {reason(verifier, rs(kid=f"junk-{i}")) for i in range(200)} == {UNKNOWN_KEY}
            assert await asyncio.to_thread(eventually, lambda: idp.hits == 2 and not idp.in_flight)
            await asyncio.sleep(0.3)
            assert {reason(verifier, rs(kid=f"more-{i}")) for i in range(200)} == {UNKNOWN_KEY}
            await asyncio.sleep(0.3)
            assert idp.hits == 2
            assert reason(verifier, rs()) == "ok"
        finally:
            await verifier.aclose()


async def test_jwks_rotated_key_served_after_one_refetch() -> None:
    """The provider publishes a new key: the first token naming it is refused (unknown key, at once),
    and tokens naming it are served as soon as the background refetch it caused has landed."""
    with JwksServer(jwks(jwk(KEY, "k1"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url))
        await verifier.start()
        try:
            idp.doc = jwks(jwk(KEY, "k1"), jwk(NEW_KEY, "k2"))
            assert reason(verifier, rs(NEW_KEY, kid="k2")) == UNKNOWN_KEY
            assert await asyncio.to_thread(eventually, lambda: reason(verifier, rs(NEW_KEY, kid="k2")) == "ok")
            assert idp.hits == 2
            assert reason(verifier, rs()) == "ok"
        finally:
            await verifier.aclose()


async def test_jwks_failed_fetch_keeps_the_last_keys_and_is_cached() -> None:
    with JwksServer(jwks(jwk(KEY, "k1"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url, jwks_retry_s=60, jwks_unknown_kid_s=0.05))
        await verifier.start()
        try:
            idp.status = 500
            assert reason(verifier, rs(kid="junk")) == UNKNOWN_KEY
            assert await asyncio.to_thread(eventually, lambda: idp.hits == 2 and not idp.in_flight)
            await asyncio.sleep(0.2)  # the failure has landed, and the unknown-kid interval has passed
            for i in range(20):
                assert reason(verifier, rs(kid=f"junk-{i}")) == UNKNOWN_KEY
                await asyncio.sleep(0.01)
            assert reason(verifier, rs()) == "ok"
            await asyncio.sleep(0.2)
            assert idp.hits == 2  # the failure is cached for jwks_retry_s
            assert verifier.problem() is None  # keys are held
        finally:
            await verifier.aclose()


async def test_jwks_fetch_times_out_after_jwks_timeout_s() -> None:
    """An identity provider that does not answer: start() returns after about jwks_timeout_s, tokens are
    refused at once, and readiness is told why."""
    with JwksServer(jwks(jwk(KEY, "k1")), delay_s=3 * WAIT_S) as idp:
        verifier = Verifier(settings(jwks_url=idp.url, jwks_timeout_s=0.3))
        started = time.monotonic()
        await verifier.start()
        try:
            assert time.monotonic() - started < WAIT_S
            assert await asyncio.to_thread(eventually, lambda: verifier.problem() not in (None, "no JWKS keys yet"))
            assert "timed out" in str(verifier.problem())
            started = time.monotonic()
            assert reason(verifier, rs()) == UNKNOWN_KEY
            assert reason(verifier, rs(kid=None)) == UNKNOWN_KEY
            assert time.monotonic() - started < STALL_BOUND_S
        finally:
            await verifier.aclose()


async def test_jwks_unreachable_endpoint_refuses_tokens_and_reports_it() -> None:
    with JwksServer(jwks()) as idp:
        url = idp.url
    verifier = Verifier(settings(jwks_url=url, jwks_timeout_s=0.5))  # nothing listens there any more
    await verifier.start()
    try:
        assert "no JWKS keys yet" in str(verifier.problem())
        assert reason(verifier, rs()) == UNKNOWN_KEY
    finally:
        await verifier.aclose()


async def test_jwks_aclose_stops_the_refresher_for_good() -> None:
    with JwksServer(jwks(jwk(KEY, "k1"))) as idp:
        verifier = Verifier(settings(jwks_url=idp.url))
        await verifier.start()
        assert verifier.jwks is not None and verifier.jwks.alive
        await verifier.aclose()
        assert not verifier.jwks.alive
        assert reason(verifier, rs(kid="junk")) == UNKNOWN_KEY  # no fetch: the refresher is gone
        assert reason(verifier, rs()) == "ok"                   # the last keys still serve
        await asyncio.sleep(0.1)
        assert idp.hits == 1 and not verifier.jwks.alive


def test_jwks_first_verify_starts_the_refresher_when_the_lifespan_did_not() -> None:
    with JwksServer(jwks(jwk(KEY, "k1")), delay_s=0.5) as idp:
        verifier = Verifier(settings(jwks_url=idp.url))
        try:
            assert reason(verifier, rs()) == UNKNOWN_KEY  # nothing fetched yet: refused, never waited for
            assert eventually(lambda: reason(verifier, rs()) == "ok")
        finally:
            verifier.close()


def test_jwks_url_must_be_http() -> None:
    for url in ("file:///etc/passwd", "ftp://idp/jwks", "idp.example/jwks"):
        with pytest.raises(SettingsError, match="FRESHWIRE_JWKS_URL"):
            Verifier(settings(jwks_url=url))


@pytest.mark.parametrize("name", ["JWKS_TIMEOUT_S", "JWKS_REFRESH_S", "JWKS_RETRY_S", "JWKS_UNKNOWN_KID_S"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_jwks_timing_settings_must_be_positive(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("FRESHWIRE_JWT_SECRET", "4b1d" * 16)
    monkeypatch.setenv(f"FRESHWIRE_{name}", value)
    with pytest.raises(SettingsError, match=f"FRESHWIRE_{name}"):
        load_gateway_settings()
    with pytest.raises(SettingsError, match=f"FRESHWIRE_{name}"):
        Verifier(settings(jwt_secret=SECRET, **{name.lower(): float(value)}))


# -- parse_jwks (pure)


def test_parse_jwks_keeps_rs256_signing_keys_only() -> None:
    keys = parse_jwks(jwks(
        jwk(KEY, "sig"), jwk(KEY, "sig-alg", alg="RS256", use="sig"), jwk(KEY, None),
        jwk(KEY, "enc", use="enc"), jwk(KEY, "rs512", alg="RS512"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, {"kty": "EC", "kid": "ec", "crv": "P-256"},
        {"kty": "RSA", "kid": "broken", "n": "AQAB"}, "not-an-object", {"kid": "no-kty"},
    ))
    assert sorted(keys.named) == ["sig", "sig-alg"]
    assert len(keys.unnamed) == 1
    assert keys.for_kid("sig")[1] and not keys.for_kid("enc")[1]
    assert len(keys.for_kid("enc")[0]) == 1  # the key without a kid is still worth a try
    assert len(keys.for_kid(None)[0]) == 3


@pytest.mark.parametrize("doc", [None, [], {}, {"keys": {}}, {"keys": []}, jwks(jwk(KEY, "e", use="enc")),
                                 {"keys": [jwk(KEY, f"k{i}") for i in range(MAX_JWKS_KEYS + 1)]}])
def test_parse_jwks_refuses_documents_without_usable_keys(doc: object) -> None:
    with pytest.raises(JwksError):
        parse_jwks(doc)


def test_parse_jwks_ignores_private_members() -> None:
    private = RSAAlgorithm.to_jwk(KEY, as_dict=True)
    with pytest.raises(JwksError, match="no usable"):
        parse_jwks(jwks({**private, "kid": "oops"}))


# -- RefreshPolicy (pure)

TIMING = JwksTiming(timeout_s=2, refresh_s=300, retry_s=10, unknown_kid_s=5)


def test_refresh_policy_fetches_at_once_then_every_refresh_s() -> None:
    policy = RefreshPolicy(TIMING)
    assert policy.wait_s(0) == 0
    policy.begin()
    assert not policy.unknown_kid(0.5)  # the fetch under way will tell
    policy.succeeded(1)
    assert policy.wait_s(1) == 300
    assert policy.wait_s(250) == 51
    assert policy.wait_s(400) == 0


def test_refresh_policy_unknown_kid_refetches_at_most_once_per_interval() -> None:
    policy = RefreshPolicy(TIMING)
    policy.begin()
    policy.succeeded(0)
    assert policy.unknown_kid(1)
    assert policy.wait_s(1) == 0
    assert not policy.unknown_kid(1.1)  # already asked
    policy.begin()
    policy.succeeded(2)
    assert [policy.unknown_kid(t) for t in (2.5, 3, 5.9)] == [False, False, False]
    assert policy.wait_s(5.9) > 0
    assert policy.unknown_kid(6)
    assert policy.wait_s(6) == 0


def test_refresh_policy_failure_is_cached_for_retry_s() -> None:
    policy = RefreshPolicy(TIMING)
    policy.begin()
    policy.succeeded(0)
    assert policy.unknown_kid(100)
    policy.begin()
    policy.failed(101, "HTTP 503")
    assert policy.wait_s(101) == 10
    assert [policy.unknown_kid(t) for t in (106, 110.9)] == [False, False]  # the failure is cached
    assert policy.wait_s(111) == 0  # then retried, whatever the tokens say
    policy.begin()
    policy.succeeded(111.5)
    assert (policy.error, policy.wait_s(111.5)) == ("", 300)


async def test_jwks_refresher_outlives_an_unexpected_error() -> None:
    """A bug in a fetch is logged and counted as a failed fetch; the refresher goes on."""
    calls: list[str] = []

    def broken_fetch(url: str, timeout_s: float) -> Any:
        calls.append(url)
        raise RuntimeError("boom")

    verifier = Verifier(settings(jwks_url="https://idp.example/jwks", jwks_retry_s=0.05), fetch=broken_fetch)
    await verifier.start()
    try:
        assert "refresher error" in str(verifier.problem())
        assert await asyncio.to_thread(eventually, lambda: len(calls) >= 3)  # retried every jwks_retry_s
        assert verifier.jwks is not None and verifier.jwks.alive
        assert reason(verifier, rs()) == UNKNOWN_KEY
    finally:
        await verifier.aclose()
