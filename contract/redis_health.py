"""Can this Redis keep Freshwire's version store? Read once at start by the consumer and the gateways
(the doctor, connectors/doctor.py, reports the same with every other check).

An `allkeys-*` eviction policy drops `{fw}:versions` whole under memory pressure, and a TTL on the
layout's keys expires them: afterwards every resuming client is told nothing changed. Both are refused.
"""

from __future__ import annotations

import redis

from contract.redis_layout import PREFIXES, VERSIONS, WATERMARK

LAYOUT_KEYS = (VERSIONS, PREFIXES, WATERMARK)


def evicts_version_store(policy: str | None) -> bool:
    """True for eviction policies that may drop keys without a TTL (the version store has none)."""
    return policy is not None and policy.startswith("allkeys-")


def read_policy(client: redis.Redis) -> str | None:
    """maxmemory-policy from CONFIG GET, or INFO where a managed Redis refuses CONFIG; None if unknown."""
    try:
        value = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.ResponseError:
        try:
            value = client.info("memory").get("maxmemory_policy")
        except redis.ResponseError:
            return None
    return value.decode() if isinstance(value, bytes) else value


def refusal(client: redis.Redis, check_ttls: bool = True) -> str | None:
    """Why this Redis cannot hold the version store, with the fix; None when it can (or cannot tell).
    `check_ttls` False for one node of a cluster (the layout's keys live on one of them)."""
    policy = read_policy(client)
    if evicts_version_store(policy):
        return (f"Redis maxmemory-policy is {policy}: under memory pressure it evicts {VERSIONS} whole and resuming "
                "clients are told nothing changed. Fix: CONFIG SET maxmemory-policy noeviction (and in redis.conf "
                "or the provider's settings); see docs/doctor.md")
    expiring = [key for key in LAYOUT_KEYS if check_ttls and int(client.pttl(key)) > 0]
    if expiring:
        return f"{', '.join(expiring)} carry a TTL and would expire. Fix: PERSIST {' '.join(expiring)}"
    return None


def store_was_emptied(watermark: str | None, committed_offset: int | None) -> bool:
    """The consumer has committed progress, yet Redis holds no watermark: Redis lost its data (a restart
    without persistence, a flush, a failover to an empty replica)."""
    return committed_offset is not None and committed_offset > 0 and not watermark
