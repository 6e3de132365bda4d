"""Refused tokens: every way a token can be wrong closes the WebSocket with 4001 and answers HTTP 401 on
/v1/versions and /v1/wait (Bearer), with keys from a secret, a PEM file or a JWKS endpoint (served here
over real HTTP), with and without a required audience and issuer; a valid token for another tenant is
served but never covers its keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm
from sec_support import SECRET, SUBPROTOCOL, Gateway, recv, token
from starlette.websockets import WebSocketDisconnect
from test_jwks import JwksServer, jwk, jwks

from gateway import errors as E
from gateway.auth import UNKNOWN_KEY, WRONG_AUDIENCE, WRONG_ISSUER

N_GARBAGE = 120  # per transport family below: 3 x 40

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
WRONG_SECRET = "another-secret-of-at-least-32-bytes-0123"


# The tokens below are built when this module is imported, which may be long before a test uses them
# (the whole suite runs first): "valid" and "in the future" mean for hours, not minutes.
NOW = int(time.time())
VALID_S = 6 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sub": "mallory", "fw_keys": ["tenant:1:*"], "exp": NOW + VALID_S}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def handmade(header: dict[str, Any], claims: dict[str, Any] | str, secret: bytes | None = None,
             signature: str | None = None) -> str:
    """A JWT built byte by byte: HMAC-SHA256 with `secret`, else `signature` as given (default empty)."""
    payload = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(payload.encode())}"
    if secret is not None:
        signature = _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature or ''}"


def hs(secret: str = SECRET, alg: str = "HS256", **over: Any) -> str:
    return jwt.encode(_claims(**over), secret, algorithm=alg)


def rs(key: rsa.RSAPrivateKey = RSA_KEY, alg: str = "RS256", headers: dict[str, Any] | None = None,
       **over: Any) -> str:
    return jwt.encode(_claims(**over), key, algorithm=alg, headers=headers)


HS256 = {"alg": "HS256", "typ": "JWT"}

# Refused by a gateway with an HS256 secret (the default test gateway).
REFUSED_HS: dict[str, str] = {
    "expired": hs(exp=NOW - 3600),
    "expired-within-leeway": hs(exp=NOW - 2),           # exp is checked strictly, the leeway is for iat/nbf
    "alg-none": handmade({"alg": "none"}, _claims()),
    "alg-none-typ": handmade({"alg": "none", "typ": "JWT"}, _claims()),
    "alg-None": handmade({"alg": "None"}, _claims()),
    "alg-NONE": handmade({"alg": "NONE"}, _claims()),
    "alg-none-with-signature": handmade({"alg": "none"}, _claims(), signature=_b64(b"x" * 32)),
    "alg-missing": handmade({"typ": "JWT"}, _claims(), SECRET.encode()),
    "alg-null": handmade({"alg": None}, _claims(), SECRET.encode()),
    "alg-list": handmade({"alg": ["HS256"]}, _claims(), SECRET.encode()),
    "alg-lowercase": handmade({"alg": "hs256"}, _claims(), SECRET.encode()),
    "alg-HS512-right-secret": hs(alg="HS512"),           # only HS256 and RS256 are accepted
    "alg-HS384-right-secret": hs(alg="HS384"),
    "wrong-secret": hs(WRONG_SECRET),
    "empty-secret-signature": handmade(HS256, _claims(), b""),
    "stripped-signature": hs().rsplit(".", 1)[0] + ".",
    "truncated-signature": hs()[:-4],
    "signature-of-other-claims": hs().rsplit(".", 1)[0] + "." + hs(sub="x").rsplit(".", 1)[1],
    "rs256-no-rs-key-configured": rs(),
    "es256": jwt.encode(_claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
    "no-exp": hs(exp=None),
    "exp-string-in-past": handmade(HS256, _claims(exp=str(NOW - 60)), SECRET.encode()),  # PyJWT reads "123"
    "exp-not-a-number": handmade(HS256, _claims(exp="soon"), SECRET.encode()),
    "exp-huge-int": handmade(HS256, _claims(exp=10**400), SECRET.encode()),
    "exp-infinity": handmade(HS256, json.dumps(_claims()).replace(str(NOW + VALID_S), "Infinity"), SECRET.encode()),
    "exp-nan": handmade(HS256, json.dumps(_claims()).replace(str(NOW + VALID_S), "NaN"), SECRET.encode()),
    "nbf-future": hs(nbf=NOW + VALID_S),
    "iat-future": hs(iat=NOW + VALID_S),
    "iat-infinity": handmade(HS256, json.dumps(_claims(iat=1)).replace('"iat": 1', '"iat": 1e999'),
                             SECRET.encode()),
    "no-keys-claim": hs(fw_keys=None),
    "keys-claim-other-name": hs(fw_keys=None, keys=["*"]),
    "keys-claim-string": hs(fw_keys="*"),
    "keys-claim-null-entries": hs(fw_keys=[None]),
    "keys-claim-empty-pattern": hs(fw_keys=[""]),
    "keys-claim-number": hs(fw_keys=[1]),
    "keys-claim-object": hs(fw_keys={"*": True}),
    "keys-claim-too-many": hs(fw_keys=[f"k{i}" for i in range(257)]),
    "payload-not-object": handmade(HS256, "[1, 2]", SECRET.encode()),
    "payload-not-json": handmade(HS256, "{not json", SECRET.encode()),
    "header-not-object": f"{_b64(b'[]')}.{_b64(json.dumps(_claims()).encode())}.",
    "too-long-but-signed": hs(sub="x" * 9000),
    "garbage": "not-a-jwt",
    "two-segments": "a.b",
    "four-segments": hs() + ".x",
    "dots": "...",
    "bad-base64": "@@@.@@@.@@@",
}

# Refused by a gateway configured with an RS256 public key (PEM) only.
REFUSED_RS: dict[str, str] = {
    "hs256-signed-with-public-pem": handmade(HS256, _claims(), PEM.encode()),      # algorithm confusion
    "hs256-signed-with-stripped-pem": handmade(HS256, _claims(), PEM.strip().encode()),
    "hs256-signed-with-pem-body": handmade(HS256, _claims(), "".join(PEM.strip().splitlines()[1:-1]).encode()),
    "rs256-other-key": rs(OTHER_RSA_KEY),
    "rs256-other-key-embedded-jwk": rs(OTHER_RSA_KEY, headers={
        "jwk": json.loads(RSAAlgorithm.to_jwk(OTHER_RSA_KEY.public_key()))}),
    "rs256-kid-traversal": rs(OTHER_RSA_KEY, headers={"kid": "../../../../dev/null"}),
    "rs512-right-key": rs(alg="RS512"),
    "ps256-right-key": rs(alg="PS256"),
    "rs256-expired": rs(exp=NOW - 60),
    "rs256-no-keys-claim": rs(fw_keys=None),
    "alg-none": handmade({"alg": "none"}, _claims()),
}


AUDIENCE = "freshwire"
ISSUER = "https://idp.example/"
GOOD_AUD_ISS: dict[str, Any] = {"aud": AUDIENCE, "iss": ISSUER}  # claims, as _claims() takes them

# Refused by a gateway that requires jwt_audience and jwt_issuer (HS256), each for its documented reason.
REFUSED_AUD_ISS: dict[str, tuple[str, str]] = {
    "aud-missing": (hs(iss=ISSUER), WRONG_AUDIENCE),
    "aud-other": (hs(aud="account", iss=ISSUER), WRONG_AUDIENCE),
    "aud-empty": (hs(aud="", iss=ISSUER), WRONG_AUDIENCE),
    "aud-list-without": (hs(aud=["account", "api"], iss=ISSUER), WRONG_AUDIENCE),
    "aud-prefix": (hs(aud="freshwire-staging", iss=ISSUER), WRONG_AUDIENCE),
    "aud-case": (hs(aud="Freshwire", iss=ISSUER), WRONG_AUDIENCE),
    "aud-list-non-string": (hs(aud=["freshwire", 1], iss=ISSUER), WRONG_AUDIENCE),
    "aud-object": (hs(aud={"freshwire": True}, iss=ISSUER), WRONG_AUDIENCE),
    "iss-missing": (hs(aud=AUDIENCE), WRONG_ISSUER),
    "iss-other": (hs(aud=AUDIENCE, iss="https://evil.example/"), WRONG_ISSUER),
    "iss-no-trailing-slash": (hs(aud=AUDIENCE, iss=ISSUER.rstrip("/")), WRONG_ISSUER),
    "iss-list": (handmade(HS256, _claims(aud=AUDIENCE, iss=[ISSUER]), SECRET.encode()), WRONG_ISSUER),
    "good-claims-wrong-secret": (hs(WRONG_SECRET, aud=AUDIENCE, iss=ISSUER), "bad signature or claims"),
    "good-claims-expired": (hs(aud=AUDIENCE, iss=ISSUER, exp=NOW - 60), "token expired"),
    "good-claims-alg-none": (handmade({"alg": "none"}, _claims(aud=AUDIENCE, iss=ISSUER)),
                             "algorithm 'none' not accepted"),
}

# Refused by a gateway with keys from a JWKS endpoint (published: RSA_KEY as kid "k1"), which also
# requires the audience and issuer: every token below carries the right ones unless the case is about them.
REFUSED_JWKS: dict[str, tuple[str, str]] = {
    "unknown-kid": (rs(headers={"kid": "k9"}, **GOOD_AUD_ISS), UNKNOWN_KEY),
    "unknown-kid-other-key": (rs(OTHER_RSA_KEY, headers={"kid": "k9"}, **GOOD_AUD_ISS), UNKNOWN_KEY),
    "known-kid-other-key": (rs(OTHER_RSA_KEY, headers={"kid": "k1"}, **GOOD_AUD_ISS), "bad signature or claims"),
    "no-kid-other-key": (rs(OTHER_RSA_KEY, **GOOD_AUD_ISS), "bad signature or claims"),
    "kid-traversal": (rs(OTHER_RSA_KEY, headers={"kid": "../../../../dev/null"}, **GOOD_AUD_ISS), UNKNOWN_KEY),
    "kid-url": (rs(headers={"kid": "http://127.0.0.1:1/jwks.json"}, **GOOD_AUD_ISS), UNKNOWN_KEY),
    "kid-not-a-string": (handmade({"alg": "RS256", "kid": 1}, _claims(**GOOD_AUD_ISS)), "malformed token"),
    "embedded-jwk": (rs(OTHER_RSA_KEY, headers={"kid": "k1", "jwk": json.loads(
        RSAAlgorithm.to_jwk(OTHER_RSA_KEY.public_key()))}, **GOOD_AUD_ISS), "bad signature or claims"),
    "hs256-signed-with-public-pem": (handmade({**HS256, "kid": "k1"}, _claims(**GOOD_AUD_ISS), PEM.encode()),
                                     "algorithm 'HS256' not accepted"),
    "rs256-expired": (rs(headers={"kid": "k1"}, exp=NOW - 60, **GOOD_AUD_ISS), "token expired"),
    "rs256-no-audience": (rs(headers={"kid": "k1"}, iss=ISSUER), WRONG_AUDIENCE),
    "rs256-wrong-audience": (rs(headers={"kid": "k1"}, aud="account", iss=ISSUER), WRONG_AUDIENCE),
    "rs256-wrong-issuer": (rs(headers={"kid": "k1"}, aud=AUDIENCE, iss="https://evil.example/"), WRONG_ISSUER),
}


@pytest.fixture
def hs_gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(await_max_ms=50)


@pytest.fixture
def rs_gw(make_gateway: Callable[..., Gateway], tmp_path: Path) -> Gateway:
    path = tmp_path / "public.pem"
    path.write_text(PEM)
    return make_gateway(jwt_secret="", jwt_public_key_file=str(path), await_max_ms=50)


@pytest.fixture
def both_gw(make_gateway: Callable[..., Gateway], tmp_path: Path) -> Gateway:
    path = tmp_path / "public.pem"
    path.write_text(PEM)
    return make_gateway(jwt_public_key_file=str(path), await_max_ms=50)


@pytest.fixture
def aud_gw(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(jwt_audience=AUDIENCE, jwt_issuer=ISSUER, await_max_ms=50)


@pytest.fixture
def jwks_gw(make_gateway: Callable[..., Gateway]) -> Iterator[Gateway]:
    """RS256 keys from a JWKS endpoint only, audience and issuer required; the refresher started and
    stopped as the lifespan does."""
    with JwksServer(jwks(jwk(RSA_KEY, "k1", use="sig", alg="RS256"))) as idp:
        gw = make_gateway(jwt_secret="", jwks_url=idp.url, jwt_audience=AUDIENCE, jwt_issuer=ISSUER,
                          jwks_unknown_kid_s=60, await_max_ms=50)
        assert gw.client.portal is not None
        gw.client.portal.call(gw.state.verifier.start)
        try:
            yield gw
        finally:
            gw.state.verifier.close()
        assert idp.hits <= 2  # the first fetch, then at most one for all the unknown kids


TRANSPORTS = ["ws-query", "ws-bearer", "versions-query", "versions-bearer", "wait-bearer"]


def outcome(gw: Gateway, transport: str, tok: str) -> int:
    """4001 or 401 when refused; 1000 / 200-ish (anything else) when served."""
    if transport.startswith("ws"):
        if transport == "ws-query":
            ctx = gw.client.websocket_connect(f"/ws?token={quote(tok, safe='')}", subprotocols=[SUBPROTOCOL])
        else:
            ctx = gw.client.websocket_connect("/ws", subprotocols=[SUBPROTOCOL],
                                              headers={"Authorization": f"Bearer {tok}"})
        try:
            with ctx as ws:
                ws.send_json({"op": "ping", "id": 1})
                assert recv(ws) == {"type": "pong", "id": 1}
                return 1000
        except WebSocketDisconnect as exc:
            return int(exc.code)
    if transport == "versions-query":
        r = gw.client.get("/v1/versions", params={"keys": "tenant:1:a", "token": tok})
    elif transport == "versions-bearer":
        r = gw.client.get("/v1/versions", params={"keys": "tenant:1:a"}, headers={"Authorization": f"Bearer {tok}"})
    else:
        r = gw.client.get("/v1/wait", params={"token": "fw1:1", "timeout_ms": "0"},
                          headers={"Authorization": f"Bearer {tok}"})
    if r.status_code == 401:
        assert r.json()["error"]["code"] == "auth_failed"
    return int(r.status_code)


def refused(transport: str) -> int:
    return E.CLOSE_AUTH if transport.startswith("ws") else 401


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSED_HS))
def test_tokens_refused_by_hs256_gateway(hs_gw: Gateway, case: str, transport: str) -> None:
    assert outcome(hs_gw, transport, REFUSED_HS[case]) == refused(transport)
    assert not hs_gw.state.hub.sessions


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSED_RS))
def test_tokens_refused_by_rs256_gateway(rs_gw: Gateway, case: str, transport: str) -> None:
    assert outcome(rs_gw, transport, REFUSED_RS[case]) == refused(transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSED_AUD_ISS))
def test_tokens_refused_by_gateway_requiring_audience_and_issuer(aud_gw: Gateway, case: str,
                                                                 transport: str) -> None:
    assert outcome(aud_gw, transport, REFUSED_AUD_ISS[case][0]) == refused(transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(REFUSED_JWKS))
def test_tokens_refused_by_jwks_url_gateway(jwks_gw: Gateway, case: str, transport: str) -> None:
    assert outcome(jwks_gw, transport, REFUSED_JWKS[case][0]) == refused(transport)


def assert_refused_for(gw: Gateway, tok: str, reason: str) -> None:
    """The close reason (with 4001) and the HTTP 401 message are the documented reason."""
    with pytest.raises(WebSocketDisconnect) as info, gw.client.websocket_connect(
            f"/ws?token={quote(tok, safe='')}", subprotocols=[SUBPROTOCOL]) as ws:
        recv(ws)
    assert (info.value.code, info.value.reason) == (E.CLOSE_AUTH, reason)
    r = gw.client.get("/v1/versions", params={"keys": "tenant:1:a"}, headers={"Authorization": f"Bearer {tok}"})
    assert (r.status_code, r.json()["error"]) == (401, {"code": "auth_failed", "message": reason})


@pytest.mark.parametrize("case", sorted(REFUSED_AUD_ISS))
def test_tokens_audience_and_issuer_refusal_reasons(aud_gw: Gateway, case: str) -> None:
    assert_refused_for(aud_gw, *REFUSED_AUD_ISS[case])


@pytest.mark.parametrize("case", sorted(REFUSED_JWKS))
def test_tokens_jwks_url_refusal_reasons(jwks_gw: Gateway, case: str) -> None:
    assert_refused_for(jwks_gw, *REFUSED_JWKS[case])


@pytest.mark.parametrize("case", ["hs256-signed-with-public-pem", "hs256-signed-with-stripped-pem",
                                  "rs256-other-key"])
def test_tokens_algorithm_confusion_refused_with_both_keys_configured(both_gw: Gateway, case: str) -> None:
    for transport in TRANSPORTS:
        assert outcome(both_gw, transport, REFUSED_RS[case]) == refused(transport)


@pytest.mark.parametrize("family", ["ws", "versions", "wait"])
def test_tokens_missing_or_not_bearer_refused(hs_gw: Gateway, family: str) -> None:
    good = hs()
    for header in [None, "", "Bearer", "Bearer ", "Basic " + good, "Token " + good, "Bearer" + good,
                   "bearer\t" + good, "Bearer " + good + "x"]:
        headers = {} if header is None else {"Authorization": header}
        if family == "ws":
            with pytest.raises(WebSocketDisconnect) as info, hs_gw.client.websocket_connect("/ws",
                                                                                            headers=headers) as ws:
                recv(ws)
            assert info.value.code == E.CLOSE_AUTH, header
        else:
            path = "/v1/versions?keys=tenant:1:a" if family == "versions" else "/v1/wait?token=fw1:1&timeout_ms=0"
            assert hs_gw.client.get(path, headers=headers).status_code == 401, header


def test_tokens_wait_ignores_query_token(hs_gw: Gateway) -> None:
    """/v1/wait authenticates by header only: a JWT in `token` is a (bad) write token, not credentials."""
    r = hs_gw.client.get("/v1/wait", params={"token": hs(), "timeout_ms": "0"})
    assert r.status_code == 401


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_controls_are_served(hs_gw: Gateway, rs_gw: Gateway, transport: str) -> None:
    """The refusals above are not vacuous: well-formed tokens of both kinds are served."""
    served = {1000, 200, 408}
    assert outcome(hs_gw, transport, hs()) in served
    assert outcome(hs_gw, transport, hs(exp=NOW + VALID_S, iat=int(time.time()) + 3)) in served   # iat within the skew
    assert outcome(rs_gw, transport, rs()) in served
    assert outcome(hs_gw, transport, hs(aud=["account", "api"])) in served  # aud not checked when unset
    assert outcome(hs_gw, transport, hs(aud="freshwire", iss="https://anyone.example/")) in served


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tokens_controls_with_audience_issuer_and_jwks_are_served(aud_gw: Gateway, jwks_gw: Gateway,
                                                                  transport: str) -> None:
    served = {1000, 200, 408}
    assert outcome(aud_gw, transport, hs(**GOOD_AUD_ISS)) in served
    assert outcome(aud_gw, transport, hs(aud=["account", AUDIENCE], iss=ISSUER)) in served
    assert outcome(jwks_gw, transport, rs(headers={"kid": "k1"}, **GOOD_AUD_ISS)) in served
    assert outcome(jwks_gw, transport, rs(aud=[AUDIENCE, "account"], iss=ISSUER)) in served  # no kid


def test_tokens_other_tenant_token_is_forbidden_not_served(hs_gw: Gateway) -> None:
    gw = hs_gw
    gw.release("0000000000000005", ["tenant:1:a", "tenant:2:a"])
    tenant2 = hs(fw_keys=["tenant:2:*"])
    with gw.connect(tok=tenant2) as ws:
        ws.send_json({"op": "subscribe", "id": 1, "keys": ["tenant:1:a", "tenant:1:*", "tenant:12:a"]})
        assert recv(ws)["code"] == E.INVALID_KEY  # `*` is no key
        ws.send_json({"op": "subscribe", "id": 2, "keys": ["tenant:1:a", "tenant:12:a", "tenant:2"]})
        err = recv(ws)
        assert (err["code"], err["keys"]) == (E.FORBIDDEN, ["tenant:1:a", "tenant:12:a", "tenant:2"])
        assert gw.ping(ws) == []
        assert gw.state.hub.subscriptions == 0
    for params, headers in [({"keys": "tenant:1:a", "token": tenant2}, {}),
                            ({"keys": "tenant:2:a,tenant:1:a"}, {"Authorization": f"Bearer {tenant2}"})]:
        r = gw.client.get("/v1/versions", params=params, headers=headers)
        assert r.status_code == 403
        assert r.json()["error"] == {"code": E.FORBIDDEN, "message": "the token does not cover these keys",
                                     "keys": ["tenant:1:a"]}


def test_tokens_query_token_wins_over_a_good_header(hs_gw: Gateway) -> None:
    """A refused query token is not rescued by a valid header (the query parameter wins, as documented)."""
    headers = {"Authorization": f"Bearer {token()}"}
    with pytest.raises(WebSocketDisconnect) as info, hs_gw.client.websocket_connect(
            f"/ws?token={quote(REFUSED_HS['alg-none'])}", headers=headers) as ws:
        recv(ws)
    assert info.value.code == E.CLOSE_AUTH
    r = hs_gw.client.get("/v1/versions", params={"keys": "a", "token": REFUSED_HS["alg-none"]}, headers=headers)
    assert r.status_code == 401


_b64_segment = st.binary(max_size=60).map(_b64)
garbage_tokens = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="abcXYZ019-_.=+/", max_size=200),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", _b64_segment, _b64_segment, _b64_segment),
    st.builds(lambda h, c: f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(c).encode())}.",
              st.dictionaries(st.sampled_from(["alg", "typ", "kid", "jku", "x5u", "crit"]),
                              st.sampled_from(["none", "HS256", "RS256", "", None, "../x", ["HS256"]]), max_size=4),
              st.dictionaries(st.sampled_from(["exp", "fw_keys", "sub", "nbf", "iat", "aud"]),
                              st.integers() | st.text(max_size=5) | st.lists(st.text(max_size=3), max_size=3),
                              max_size=6)),
)


@pytest.mark.parametrize("family", ["ws", "versions", "wait"])
def test_tokens_garbage_refused(hs_gw: Gateway, family: str) -> None:
    @settings(max_examples=N_GARBAGE // 3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(tok=garbage_tokens, header=st.booleans())
    def check(tok: str, header: bool) -> None:
        if family == "wait" or header:
            tok = "".join(c for c in tok if 0x21 <= ord(c) < 0x7f)  # what an HTTP header can carry
            transport = f"{family}-bearer"
        else:
            transport = f"{family}-query"
        assert outcome(hs_gw, transport, tok) == refused(transport)

    check()
