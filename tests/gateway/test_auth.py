"""gateway.auth: token verification (HS256, RS256 from a PEM file or a JWKS file; keys from a JWKS URL
are in test_jwks.py), audience and issuer, and key patterns."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from gw_support import SECRET
from jwt.algorithms import RSAAlgorithm

from gateway.auth import MAX_PATTERNS, MAX_TOKEN_BYTES, WRONG_AUDIENCE, WRONG_ISSUER, Grant, Verifier, mint
from gateway.errors import AuthError, SettingsError
from gateway.settings import GatewaySettings


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


RSA_KEY = _rsa()
OTHER_RSA_KEY = _rsa()


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _claims(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"sub": "alice", "fw_keys": ["tenant:1:*"], "exp": int(time.time()) + 6 * 3600}
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _rs(key: rsa.RSAPrivateKey = RSA_KEY, kid: str | None = None, **over: Any) -> str:
    return jwt.encode(_claims(**over), key, algorithm="RS256", headers={"kid": kid} if kid else None)


def _hs(secret: str = SECRET, **over: Any) -> str:
    return jwt.encode(_claims(**over), secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _handmade(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret else ""
    return f"{signing_input}.{sig}"


@pytest.fixture
def pem_file(tmp_path: Path) -> str:
    path = tmp_path / "public.pem"
    path.write_text(_pem(RSA_KEY))
    return str(path)


@pytest.fixture
def jwks_file(tmp_path: Path) -> str:
    jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return str(path)


HS = Verifier(GatewaySettings(jwt_secret=SECRET))


# -- HS256


def test_verifier_hs256_returns_grant() -> None:
    grant = HS.verify(_hs())
    assert grant.subject == "alice"
    assert grant.patterns == ("tenant:1:*",)
    assert grant.expires_at > time.time()


def test_verifier_accepts_minted_token() -> None:
    grant = HS.verify(mint(SECRET, "bob", ["a", "b:*"], 60))
    assert (grant.subject, grant.patterns) == ("bob", ("a", "b:*"))


def test_verifier_hs256_wrong_secret_refused() -> None:
    with pytest.raises(AuthError, match="bad signature"):
        HS.verify(_hs("another-secret-that-is-also-32-bytes-long"))


def test_verifier_hs256_tampered_payload_refused() -> None:
    head, _, sig = _hs().split(".")
    forged = _b64(json.dumps(_claims(fw_keys=["*"])).encode())
    with pytest.raises(AuthError):
        HS.verify(f"{head}.{forged}.{sig}")


@pytest.mark.parametrize("tok", [None, ""])
def test_verifier_missing_token_refused(tok: str | None) -> None:
    with pytest.raises(AuthError, match="missing"):
        HS.verify(tok)


@pytest.mark.parametrize("tok", ["x", "a.b.c", "....", "eyJhbGciOi.e30.x"])
def test_verifier_malformed_token_refused(tok: str) -> None:
    with pytest.raises(AuthError):
        HS.verify(tok)


def test_verifier_too_long_token_refused() -> None:
    with pytest.raises(AuthError, match="too long"):
        HS.verify(_hs(fw_keys=[f"key:{i}" for i in range(MAX_TOKEN_BYTES // 8)]))


def test_verifier_expired_refused() -> None:
    with pytest.raises(AuthError, match="expired"):
        HS.verify(_hs(exp=int(time.time()) - 1))


def test_verifier_expired_at_given_now_refused() -> None:
    tok = _hs(exp=int(time.time()) + 60)
    HS.verify(tok, now=time.time())
    with pytest.raises(AuthError, match="expired"):
        HS.verify(tok, now=time.time() + 61)


def test_verifier_tolerates_small_clock_skew_on_iat_and_nbf() -> None:
    """A token minted on a machine whose clock is a little ahead has iat/nbf slightly in the future."""
    now = int(time.time())
    assert HS.verify(_hs(iat=now + 2)).subject == "alice"
    assert HS.verify(_hs(nbf=now + 2)).subject == "alice"
    with pytest.raises(AuthError):
        HS.verify(_hs(nbf=now + 120))


def test_verifier_exp_is_strict_despite_skew_tolerance() -> None:
    with pytest.raises(AuthError, match="expired"):
        HS.verify(_hs(exp=int(time.time()) - 1))
    tok = _hs(exp=int(time.time()) + 60)
    with pytest.raises(AuthError, match="expired"):
        HS.verify(tok, now=time.time() + 60)


def test_verifier_missing_exp_refused() -> None:
    with pytest.raises(AuthError):
        HS.verify(_hs(exp=None))


@pytest.mark.parametrize("keys", [None, "tenant:1:*", [], [""], [1], ["*"] * (MAX_PATTERNS + 1)])
def test_verifier_missing_or_bad_keys_claim_refused(keys: Any) -> None:
    claims = _claims()
    if keys is None:
        del claims["fw_keys"]
    else:
        claims["fw_keys"] = keys
    tok = jwt.encode(claims, SECRET, algorithm="HS256")
    if keys == []:
        assert HS.verify(tok).patterns == ()  # an empty list is valid: the token allows no keys
        return
    with pytest.raises(AuthError, match="fw_keys"):
        HS.verify(tok)


def test_verifier_custom_keys_claim() -> None:
    verifier = Verifier(GatewaySettings(jwt_secret=SECRET, jwt_keys_claim="scopes"))
    assert verifier.verify(mint(SECRET, "s", ["x:*"], 60, claim="scopes")).patterns == ("x:*",)
    with pytest.raises(AuthError, match="scopes"):
        verifier.verify(mint(SECRET, "s", ["x:*"], 60))


def test_verifier_alg_none_refused() -> None:
    tok = jwt.encode(_claims(), "", algorithm="none")  # "": no key (PyJWT reads it as None, which its types refuse)
    with pytest.raises(AuthError, match="not accepted"):
        HS.verify(tok)
    with pytest.raises(AuthError, match="not accepted"):
        HS.verify(_handmade({"alg": "none", "typ": "JWT"}, _claims(), None))


@pytest.mark.parametrize("alg", ["HS384", "HS512", "RS512", "ES256", "None", "NONE"])
def test_verifier_other_algorithms_refused(alg: str) -> None:
    with pytest.raises(AuthError, match="not accepted"):
        HS.verify(_handmade({"alg": alg, "typ": "JWT"}, _claims(), SECRET.encode()))


@pytest.mark.parametrize("alg", ["X" * 300, "é" * 200, "\U0001f600" * 100])
def test_verifier_refusal_reason_fits_a_close_frame(alg: str) -> None:
    """A WebSocket close reason is at most 123 bytes: a longer one would turn 4001 into an abnormal close."""
    with pytest.raises(AuthError, match="not accepted") as info:
        HS.verify(_handmade({"alg": alg}, _claims(), SECRET.encode()))
    assert len(info.value.reason.encode()) <= 123


def test_verifier_rs256_token_refused_without_rs_keys() -> None:
    with pytest.raises(AuthError, match="not accepted"):
        HS.verify(_rs())


# -- RS256


def test_verifier_rs256_pem_file(pem_file: str) -> None:
    verifier = Verifier(GatewaySettings(jwt_public_key_file=pem_file))
    assert verifier.verify(_rs()).patterns == ("tenant:1:*",)


def test_verifier_rs256_jwks_file(jwks_file: str) -> None:
    verifier = Verifier(GatewaySettings(jwks_file=jwks_file))
    assert verifier.verify(_rs(kid="k1")).subject == "alice"
    assert verifier.verify(_rs()).subject == "alice"  # no kid: every key is tried


def test_verifier_rs256_wrong_key_refused(pem_file: str, jwks_file: str) -> None:
    for settings in (GatewaySettings(jwt_public_key_file=pem_file), GatewaySettings(jwks_file=jwks_file)):
        with pytest.raises(AuthError, match="bad signature"):
            Verifier(settings).verify(_rs(OTHER_RSA_KEY))


def test_verifier_rs256_expired_refused(pem_file: str) -> None:
    with pytest.raises(AuthError, match="expired"):
        Verifier(GatewaySettings(jwt_public_key_file=pem_file)).verify(_rs(exp=int(time.time()) - 5))


def test_verifier_rs_only_refuses_hs256_signed_with_the_public_key(pem_file: str) -> None:
    """Algorithm confusion: an HS256 token whose HMAC secret is the (public) PEM must not pass."""
    tok = _handmade({"alg": "HS256", "typ": "JWT"}, _claims(), _pem(RSA_KEY).encode())
    with pytest.raises(AuthError, match="not accepted"):
        Verifier(GatewaySettings(jwt_public_key_file=pem_file)).verify(tok)


def test_verifier_both_hs_and_rs(pem_file: str) -> None:
    verifier = Verifier(GatewaySettings(jwt_secret=SECRET, jwt_public_key_file=pem_file))
    assert verifier.verify(_hs()).subject == "alice"
    assert verifier.verify(_rs()).subject == "alice"
    tok = _handmade({"alg": "HS256", "typ": "JWT"}, _claims(), _pem(RSA_KEY).encode())
    with pytest.raises(AuthError, match="bad signature"):
        verifier.verify(tok)


def test_verifier_private_pem_file_serves_with_its_public_half(tmp_path: Path) -> None:
    path = tmp_path / "private.pem"
    path.write_bytes(RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    assert Verifier(GatewaySettings(jwt_public_key_file=str(path))).verify(_rs()).subject == "alice"


@pytest.mark.parametrize(("setting", "content"), [
    ("jwt_public_key_file", "not a key"),
    ("jwks_file", "{not json"),
    ("jwks_file", json.dumps({"keys": []})),
    ("jwks_file", json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})),
])
def test_verifier_unusable_key_file_fails_at_start_with_its_name(tmp_path: Path, setting: str, content: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    key_file: dict[str, Any] = {setting: str(path)}
    with pytest.raises(SettingsError, match=f"FRESHWIRE_{setting.upper()}"):
        Verifier(GatewaySettings(**key_file))


# -- audience and issuer


def test_verifier_aud_not_checked_without_audience_setting() -> None:
    """Almost every identity provider adds `aud`: without jwt_audience it is accepted, whatever it is."""
    for aud in ("freshwire", ["a", "b"], "", 7):
        assert HS.verify(_hs(aud=aud)).subject == "alice"


AUD = Verifier(GatewaySettings(jwt_secret=SECRET, jwt_audience="freshwire"))


@pytest.mark.parametrize("aud", ["freshwire", ["account", "freshwire"], ["freshwire"]])
def test_verifier_audience_contained_is_served(aud: Any) -> None:
    assert AUD.verify(_hs(aud=aud)).subject == "alice"


@pytest.mark.parametrize("aud", [None, "", [], "account", ["account"], "Freshwire", "freshwire ", ["freshwire", 1],
                                 7, {"freshwire": True}])
def test_verifier_audience_missing_or_other_refused(aud: Any) -> None:
    with pytest.raises(AuthError) as info:
        AUD.verify(_hs(aud=aud))
    assert info.value.reason == WRONG_AUDIENCE


def test_verifier_audience_checked_after_the_signature() -> None:
    """A forged token for another audience learns nothing: it is refused for its signature."""
    with pytest.raises(AuthError, match="bad signature"):
        AUD.verify(_hs("another-secret-that-is-also-32-bytes-long", aud="account"))


ISS = Verifier(GatewaySettings(jwt_secret=SECRET, jwt_issuer="https://idp.example/"))


def test_verifier_issuer_equal_is_served() -> None:
    assert ISS.verify(_hs(iss="https://idp.example/")).subject == "alice"
    assert HS.verify(_hs(iss="https://anyone.example/")).subject == "alice"  # not checked when unset


@pytest.mark.parametrize("iss", [None, "", "https://idp.example", "https://evil.example/", ["https://idp.example/"], 1])
def test_verifier_issuer_missing_or_other_refused(iss: Any) -> None:
    tok = _handmade({"alg": "HS256", "typ": "JWT"}, _claims(iss=iss), SECRET.encode())  # PyJWT encodes str only
    with pytest.raises(AuthError) as info:
        ISS.verify(tok)
    assert info.value.reason == WRONG_ISSUER


def test_verifier_rs256_audience_and_issuer(pem_file: str) -> None:
    verifier = Verifier(GatewaySettings(jwt_public_key_file=pem_file, jwt_audience="fw", jwt_issuer="idp"))
    assert verifier.verify(_rs(aud=["fw", "other"], iss="idp")).subject == "alice"
    with pytest.raises(AuthError, match=WRONG_AUDIENCE):
        verifier.verify(_rs(aud="other", iss="idp"))
    with pytest.raises(AuthError, match=WRONG_ISSUER):
        verifier.verify(_rs(aud="fw", iss="other"))
    with pytest.raises(AuthError, match="expired"):
        verifier.verify(_rs(aud="fw", iss="idp", exp=int(time.time()) - 5))


# -- patterns


@pytest.mark.parametrize(("patterns", "key", "allowed"), [
    (["tenant:1:*"], "tenant:1:x", True),
    (["tenant:1:*"], "tenant:1:", True),
    (["tenant:1:*"], "tenant:10:x", False),
    (["tenant:1:*"], "tenant:1", False),
    (["tenant:1*"], "tenant:10:x", True),        # no separator before `*`: a plain prefix
    (["card:7"], "card:7", True),
    (["card:7"], "card:70", False),
    (["card:7"], "card:", False),
    (["*"], "anything/at:all", True),
    (["a*b"], "axb", False),                     # `*` only counts at the end
    (["a*b"], "a*b", True),
    (["x", "tenant:2:*"], "tenant:2:y", True),
    ([], "a", False),
])
def test_grant_allows_patterns(patterns: list[str], key: str, allowed: bool) -> None:
    assert Grant("s", tuple(patterns), 0.0).allows(key) is allowed
