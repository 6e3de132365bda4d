"""The gateway's settings: FRESHWIRE_* environment variables (mirrored by flags in __main__),
loaded once into a frozen object; a malformed value fails at start with its name."""

from __future__ import annotations

import math
from dataclasses import dataclass

from contract import envflags
from gateway.errors import SettingsError


@dataclass(frozen=True)
class GatewaySettings:
    redis_url: str = "redis://127.0.0.1:16379/0"   # or memory:// for one process without Redis
    jwt_secret: str = ""                            # HS256 shared secret
    jwt_public_key_file: str = ""                   # RS256 public key (PEM)
    jwks_file: str = ""                             # RS256 keys as a JWKS document on disk
    jwks_url: str = ""                              # RS256 keys from a JWKS endpoint
    jwt_keys_claim: str = "fw_keys"                 # claim listing the key patterns a token may subscribe to
    jwt_audience: str = ""                          # when set, a token's `aud` must contain it (unset: not checked)
    jwt_issuer: str = ""                            # when set, a token's `iss` must equal it
    jwks_timeout_s: float = 2.0                     # longest JWKS_URL fetch (in the background, never on the loop)
    jwks_refresh_s: float = 300.0                   # refetch a good JWKS_URL key set this often
    jwks_retry_s: float = 10.0                      # a failed fetch is cached this long (last good keys kept)
    jwks_unknown_kid_s: float = 10.0                # at most one refetch per this interval for unknown `kid`s
    max_connections: int = 20000                    # per process; beyond: close 4013
    max_subscriptions: int = 1000                   # keys per connection; beyond: too_many_keys
    max_frame_bytes: int = 65536                    # inbound frame limit; beyond: close 1009
    max_data_bytes: int = 65536                     # payload bytes in one invalidate; beyond: keys go without data
    max_messages_per_s: float = 50.0                # inbound messages per connection per second (burst 2x)
    max_rate_strikes: int = 20                      # rate_limited errors in a row before close 4008
    control_queue: int = 64                         # unsent replies per connection before close 4008
    ping_interval_s: float = 20.0                   # WebSocket ping interval (0: off)
    max_awaits: int = 10000                         # pending awaits per process (WebSocket and HTTP)
    max_awaits_per_connection: int = 100            # pending awaits per WebSocket connection
    await_max_ms: int = 30000                       # longest timeout_ms an await or /v1/wait accepts
    max_stream_stall_s: float = 30.0                # /readyz fails when the watermark has not moved this long (0: off)
    resync_chunk: int = 1000                        # keys per version read when resyncing after a Redis outage
    per_message_deflate: bool = False
    direct_writes: bool = False                     # fan-out writes frames without a writer task per connection
    #                                                 (gateway/uvicorn_ws.py): faster to many fast readers, worse for
    #                                                 a client holding many busy connections (docs/tuning.md)
    unread_bytes: int = 16384                       # bytes a client may have unread before its changes coalesce
    #                                                 (acknowledged by WebSocket pongs, gateway/uvicorn_ws.py; 0: off)
    dev_mode: bool = False                          # accept the published development secret (make up sets it)


MIN_UNREAD_BYTES = 1024  # a smaller budget would hold a connection after almost every frame, a ping each
JWKS_TIMING = ("jwks_timeout_s", "jwks_refresh_s", "jwks_retry_s", "jwks_unknown_kid_s")

# The secret the README, the demo and `make up` use. Anyone can mint tokens for "*" with it, so a
# gateway refuses it unless started in development mode.
DEV_SECRET = "freshwire-dev-secret-change-me-in-production"


def load_gateway_settings(overrides: dict[str, str] | None = None) -> GatewaySettings:
    """Environment first, then `overrides` (command-line flags), field by field."""
    settings = GatewaySettings(**envflags.values(GatewaySettings, "FRESHWIRE_", overrides or {},  # type: ignore[arg-type]
                                                 SettingsError))
    if not (settings.jwt_secret or settings.jwt_public_key_file or settings.jwks_file or settings.jwks_url):
        raise SettingsError("set FRESHWIRE_JWT_SECRET (HS256) or FRESHWIRE_JWT_PUBLIC_KEY_FILE / "
                            "FRESHWIRE_JWKS_FILE / FRESHWIRE_JWKS_URL (RS256)")
    for name in JWKS_TIMING:
        if not 0 < getattr(settings, name) < math.inf:  # also refuses nan
            raise SettingsError(f"FRESHWIRE_{name.upper()} must be a finite number of seconds above 0")
    if settings.unread_bytes != 0 and settings.unread_bytes < MIN_UNREAD_BYTES:
        raise SettingsError(f"FRESHWIRE_UNREAD_BYTES must be 0 (off) or at least {MIN_UNREAD_BYTES}")
    if settings.jwt_secret == DEV_SECRET and not settings.dev_mode:
        raise SettingsError("FRESHWIRE_JWT_SECRET is the published development secret: anyone can mint tokens "
                            "with it. Set a secret of your own (e.g. `openssl rand -hex 32`), or "
                            "FRESHWIRE_DEV_MODE=1 for local development only")
    return settings
