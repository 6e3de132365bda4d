"""Tokens: JWTs (HS256 with a shared secret, or RS256 with a PEM key or JWKS) carrying `exp` and a
claim listing the key patterns the holder may subscribe to. A pattern is an exact key, or a prefix
followed by a single trailing `*` (e.g. `tenant:42:*`); `*` anywhere else matches only itself."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from starlette.requests import HTTPConnection

from gateway.errors import AuthError
from gateway.settings import GatewaySettings

MAX_TOKEN_BYTES = 8192
MAX_PATTERNS = 256
CLOCK_SKEW_S = 5  # iat / nbf may be this far in the future (issuer's clock ahead); exp is checked strictly below


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
    def __init__(self, settings: GatewaySettings) -> None:
        self._claim = settings.jwt_keys_claim
        self._hs_secret = settings.jwt_secret or None
        self._rs_keys: list[Any] = []
        self._jwks_client: jwt.PyJWKClient | None = None
        if settings.jwt_public_key_file:
            self._rs_keys.append(Path(settings.jwt_public_key_file).read_text())
        if settings.jwks_file:
            doc = json.loads(Path(settings.jwks_file).read_text())
            self._rs_keys.extend(jwt.PyJWKSet.from_dict(doc).keys)
        if settings.jwks_url:
            self._jwks_client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True)

    def _candidates(self, token: str, alg: str) -> list[Any]:
        if alg == "HS256" and self._hs_secret:
            return [self._hs_secret]
        if alg == "RS256":
            keys = [k.key if isinstance(k, jwt.PyJWK) else k for k in self._rs_keys]
            if self._jwks_client is not None:
                with contextlib.suppress(jwt.PyJWKClientError):
                    keys.append(self._jwks_client.get_signing_key_from_jwt(token).key)
            return keys
        return []

    def verify(self, token: str | None, now: float | None = None) -> Grant:
        if not token:
            raise AuthError("missing token")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too long")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise AuthError("malformed token") from None
        candidates = self._candidates(token, str(alg))
        if not candidates:
            raise AuthError(f"algorithm {alg!r} not accepted")
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=[str(alg)], options={"require": ["exp"]},
                                    leeway=CLOCK_SKEW_S)
                break
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired") from None
            except jwt.InvalidTokenError:
                continue
        if claims is None:
            raise AuthError("bad signature or claims")
        patterns = claims.get(self._claim)
        if (not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS
                or not all(isinstance(p, str) and p for p in patterns)):
            raise AuthError(f"claim {self._claim!r} must be a list of key patterns")
        try:
            expires = float(claims["exp"])
        except (OverflowError, TypeError, ValueError):  # PyJWT accepts any int, e.g. 10**400
            raise AuthError("exp must be a number of seconds") from None
        if expires <= (now if now is not None else time.time()):
            raise AuthError("token expired")
        return Grant(subject=str(claims.get("sub", "")), patterns=tuple(patterns), expires_at=expires)


def mint(secret: str, subject: str, patterns: list[str], ttl_s: int, claim: str = "fw_keys") -> str:
    """An HS256 token for development and tests."""
    now = int(time.time())
    return jwt.encode({"sub": subject, claim: patterns, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")
