"""Tokens: JWTs (HS256 with a shared secret, or RS256 with a PEM key or JWKS) carrying `exp` and a
claim listing the key patterns the holder may subscribe to (and, when configured, an audience and an
issuer). A pattern is an exact key, or a prefix followed by a single trailing `*` (e.g. `tenant:42:*`);
`*` anywhere else matches only itself."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from jwt.algorithms import RSAAlgorithm
from starlette.requests import HTTPConnection

from gateway.errors import REASON_TOKEN_EXPIRED, AuthError, SettingsError
from gateway.jwks import Fetch, JwksError, JwksRefresher, JwksTiming, fetch_jwks, parse_jwks
from gateway.settings import GatewaySettings

MAX_TOKEN_BYTES = 8192
MAX_PATTERNS = 256
CLOCK_SKEW_S = 5  # iat / nbf may be this far in the future (issuer's clock ahead); exp is checked strictly below
MAX_SHOWN_ALG = 40  # characters of a refused `alg` quoted in the refusal reason
START_MARGIN_S = 0.5  # start() waits for the first JWKS fetch this much longer than its timeout

# Refusal reasons with a fixed text (the WebSocket close reason with 4001, the HTTP 401 message).
BAD_SIGNATURE = "bad signature or claims"
UNKNOWN_KEY = "unknown key"        # the token's `kid` names no key held (or no JWKS_URL key is held yet)
WRONG_AUDIENCE = "wrong audience"  # jwt_audience is set and `aud` is absent or does not contain it
WRONG_ISSUER = "wrong issuer"      # jwt_issuer is set and `iss` is absent or not equal to it


def token_from(conn: HTTPConnection, query: bool = True) -> str | None:
    """The `token` query parameter (browsers cannot set headers on WebSockets), else a Bearer header.

    With `query=False` only the header counts (/v1/wait uses `token` for the write token).
    """
    token = conn.query_params.get("token") if query else None
    if token:
        return token
    header = conn.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


@dataclass(frozen=True, slots=True)
class Grant:
    subject: str
    patterns: tuple[str, ...]
    expires_at: float

    def allows(self, key: str) -> bool:
        for pattern in self.patterns:
            if pattern.endswith("*"):
                if key.startswith(pattern[:-1]):
                    return True
            elif key == pattern:
                return True
        return False


class Verifier:
    """Checks tokens on the caller's thread without I/O: a token, valid or not, costs a few signature
    checks at most and never waits. Keys from FRESHWIRE_JWKS_URL come from a background refresher
    (gateway.jwks) whose life `start()` and `aclose()` bound; the first verify() starts it if nothing
    did. A token whose `kid` names no key held is refused with UNKNOWN_KEY at once, and asks the
    refresher for a (rate-limited) refetch."""

    def __init__(self, settings: GatewaySettings, fetch: Fetch = fetch_jwks) -> None:
        self._claim = settings.jwt_keys_claim
        self._hs_secret = settings.jwt_secret or None
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._rs_keys: list[Any] = []  # from files, read once here: tried for every RS256 token
        if settings.jwt_public_key_file:
            self._rs_keys.append(_pem_key(Path(settings.jwt_public_key_file).read_text()))
        if settings.jwks_file:
            try:
                keys = parse_jwks(json.loads(Path(settings.jwks_file).read_text()))
            except (JwksError, ValueError) as exc:
                raise SettingsError(f"FRESHWIRE_JWKS_FILE: {exc}") from None
            self._rs_keys.extend(keys.for_kid(None)[0])
        timing = JwksTiming.from_settings(settings)
        self._start_s = timing.timeout_s + START_MARGIN_S
        self.jwks = JwksRefresher(settings.jwks_url, timing, fetch) if settings.jwks_url else None

    async def start(self) -> None:
        """Start the JWKS refresher (if FRESHWIRE_JWKS_URL is set) and wait, without blocking the loop,
        until its first fetch has ended or jwks_timeout_s has passed. Tokens are served either way."""
        if self.jwks is not None:
            self.jwks.start()
            await self.jwks.wait_first(self._start_s)

    async def aclose(self) -> None:
        """Stop the JWKS refresher (final); a fetch in flight is abandoned."""
        if self.jwks is not None:
            await asyncio.to_thread(self.jwks.stop)

    def close(self) -> None:
        """aclose() for synchronous callers."""
        if self.jwks is not None:
            self.jwks.stop()

    def problem(self) -> str | None:
        """None when every configured key source is usable; else why not (for readiness)."""
        return self.jwks.problem() if self.jwks is not None else None

    def _candidates(self, alg: str, kid: str | None) -> tuple[list[Any], str]:
        """The keys to try, and the reason to give when none of them verifies the token."""
        if alg == "HS256" and self._hs_secret:
            return [self._hs_secret], BAD_SIGNATURE
        if alg != "RS256" or not (self._rs_keys or self.jwks):
            shown = ascii(alg)  # the token's own text, quoted in a close reason (at most 123 bytes)
            if len(shown) > MAX_SHOWN_ALG:
                shown = shown[:MAX_SHOWN_ALG] + "..."
            return [], f"algorithm {shown} not accepted"
        if self.jwks is None:
            return self._rs_keys, BAD_SIGNATURE
        self.jwks.start()  # no-op once started (or stopped)
        fetched, known = self.jwks.keys.for_kid(kid)
        if not known:
            self.jwks.unknown_kid()  # returns at once; the refetch, if any, runs in the background
        return [*fetched, *self._rs_keys], BAD_SIGNATURE if known else UNKNOWN_KEY

    def verify(self, token: str | None, now: float | None = None) -> Grant:
        if not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too long")
        try:
            header = jwt.get_unverified_header(token)  # also refuses a `kid` that is not a string
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        alg = header.get("alg")
        candidates, refusal = self._candidates(str(alg), header.get("kid"))
        if not candidates:
            raise AuthError(refusal)
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=[str(alg)], leeway=CLOCK_SKEW_S,
                                    options={"require": ["exp"], "verify_aud": self._audience is not None},
                                    audience=self._audience, issuer=self._issuer)
                break
            # Past the signature check: this key is the right one, and the claims are wrong.
            except jwt.ExpiredSignatureError:
                raise AuthError(REASON_TOKEN_EXPIRED) from None
            except jwt.InvalidAudienceError:
                raise AuthError(WRONG_AUDIENCE) from None
            except jwt.InvalidIssuerError:
                raise AuthError(WRONG_ISSUER) from None
            except jwt.MissingRequiredClaimError as exc:
                if exc.claim in ("aud", "iss"):
                    raise AuthError(WRONG_AUDIENCE if exc.claim == "aud" else WRONG_ISSUER) from None
                continue
            except jwt.InvalidTokenError:
                continue
        if claims is None:
            raise AuthError(refusal)
        patterns = claims.get(self._claim)
        if (not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS
                or not all(isinstance(p, str) and p for p in patterns)):
            raise AuthError(f"claim {self._claim!r} must be a list of key patterns")
        try:
            expires = float(claims["exp"])
        except (OverflowError, TypeError, ValueError):  # PyJWT accepts any int, e.g. 10**400
            raise AuthError("exp must be a number of seconds") from None
        if expires <= (now if now is not None else time.time()):
            raise AuthError(REASON_TOKEN_EXPIRED)
        return Grant(subject=str(claims.get("sub", "")), patterns=tuple(patterns), expires_at=expires)


def _pem_key(pem: str) -> Any:
    """The public key of FRESHWIRE_JWT_PUBLIC_KEY_FILE, parsed once (a private key yields its public half)."""
    try:
        key = RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise SettingsError(f"FRESHWIRE_JWT_PUBLIC_KEY_FILE holds no RSA key: {exc}") from None
    return key.public_key() if isinstance(key, RSAPrivateKey) else key


def mint(secret: str, subject: str, patterns: list[str], ttl_s: int, claim: str = "fw_keys") -> str:
    """An HS256 token for development and tests."""
    now = int(time.time())
    return jwt.encode({"sub": subject, claim: patterns, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")
