"""The Redis layout shared by the cdc publisher and the gateways.

All keys share the hash tag {fw} so the script's keys live in one slot (Redis Cluster safe).

- HASH  {fw}:versions   cache key -> version of the last transaction that invalidated it
- HASH  {fw}:prefixes   key prefix -> version of the last truncate that invalidated every key under it
- STR   {fw}:watermark  highest version V such that every transaction up to V has been released
- STR   {fw}:tx:<xid>   version at which transaction <xid> was released (expires after tx_ttl_s):
                        what read-your-writes tokens wait for
- PUBSUB fw:inv         one message per released batch that advanced anything (see encode/decode)

A key's effective version is the greatest of its own version and the versions of the prefixes it
starts with. Versions are fixed-width hex, so Lua's string comparison orders them correctly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSIONS = "{fw}:versions"
PREFIXES = "{fw}:prefixes"
WATERMARK = "{fw}:watermark"
CHANNEL = "fw:inv"

# KEYS: versions, prefixes, watermark, tx marker.
# ARGV: version, channel, commit_ts_ms, n_keys, tx_id, tx_ttl_s, hops, lapse, keys..., prefixes...
# `hops` is "<kafka record ts ms> <consumer receipt ms> <publish call ms>" (or empty), carried to the
# gateways as `h` for the per-hop latency breakdown (bench/latency.py); it changes nothing else.
# Advances each key (and prefix) only if the new version is greater, moves the watermark, and
# publishes what advanced. Atomic: a reader sees either none or all of one batch.
RELEASE_LUA = """
local v = ARGV[1]
local nkeys = tonumber(ARGV[4])
local function advance(hash, first, last)
  local advanced = {}
  for i = first, last do
    local cur = redis.call('HGET', hash, ARGV[i])
    if (not cur) or cur < v then
      redis.call('HSET', hash, ARGV[i], v)
      advanced[#advanced + 1] = ARGV[i]
    end
  end
  return advanced
end
local keys = advance(KEYS[1], 9, 8 + nkeys)
local prefixes = advance(KEYS[2], 9 + nkeys, #ARGV)
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[4], v, 'EX', tonumber(ARGV[6]))
end
local wm = redis.call('GET', KEYS[3])
local moved = (not wm) or wm < v
if moved then
  redis.call('SET', KEYS[3], v)
  wm = v
end
if #keys > 0 or #prefixes > 0 or moved then
  local message = {v = v, k = keys, p = prefixes, ts = tonumber(ARGV[3]), wm = wm, x = ARGV[5]}
  if ARGV[7] ~= '' then
    message.h = ARGV[7]
  end
  if ARGV[8] ~= '' then
    message.l = ARGV[8]
  end
  redis.call('PUBLISH', ARGV[2], cjson.encode(message))
end
return #keys
"""


@dataclass(frozen=True, slots=True)
class Published:
    """One released batch as the gateways see it: only what advanced."""

    version: str
    keys: tuple[str, ...]
    prefixes: tuple[str, ...]
    commit_ts_ms: int
    watermark: str
    tx_id: str = ""
    hops: tuple[float, ...] = ()  # kafka record ts, consumer receipt, publish call (epoch ms), when carried
    lapse: str = ""  # a guarantee that lapsed for this batch's keys (cdc.model.Batch.lapse)


def _strings(value: Any) -> tuple[str, ...]:
    # cjson encodes an empty Lua table as {} rather than [].
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def decode_published(raw: bytes | str) -> Published:
    body = json.loads(raw)
    return Published(
        version=str(body["v"]),
        keys=_strings(body.get("k")),
        prefixes=_strings(body.get("p")),
        commit_ts_ms=int(body.get("ts") or 0),
        watermark=str(body.get("wm") or body["v"]),
        tx_id=str(body.get("x") or ""),
        hops=_hops(body.get("h")),
        lapse=str(body.get("l") or ""),
    )


def _hops(value: Any) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in str(value or "").split())
    except ValueError:
        return ()


def hops_arg(kafka_ts_ms: float, received_ms: float, publish_ms: float) -> str:
    return f"{kafka_ts_ms:.0f} {received_ms:.3f} {publish_ms:.3f}"


TX_TTL_S = 600


def tx_key(tx_id: str) -> str:
    return f"{{fw}}:tx:{tx_id}"


def release_args(version: str, commit_ts_ms: int, keys: tuple[str, ...], prefixes: tuple[str, ...],
                 tx_id: str = "", tx_ttl_s: int = TX_TTL_S, hops: str = "", lapse: str = "") -> list[str]:
    return [version, CHANNEL, str(commit_ts_ms), str(len(keys)), tx_id, str(tx_ttl_s), hops, lapse, *keys,
            *prefixes]


class PrefixSet:
    """Released prefixes, grouped by length: the ones a key starts with are found with one lookup per
    distinct prefix length, not one comparison per prefix (a degraded batch carries hundreds)."""

    __slots__ = ("lengths", "versions")

    def __init__(self, versions: dict[str, str]) -> None:
        self.versions = versions
        self.lengths = sorted({len(p) for p in versions})

    def covering(self, key: str) -> list[str]:
        """The prefixes `key` starts with."""
        found = []
        for length in self.lengths:
            if length > len(key):
                break
            if key[:length] in self.versions:
                found.append(key[:length])
        return found

    def version_of(self, own: str | None, key: str) -> str | None:
        """A key's version, counting truncates and degraded batches of any prefix it starts with."""
        best = own
        for prefix in self.covering(key):
            version = self.versions[prefix]
            if best is None or version > best:
                best = version
        return best


def effective_version(own: str | None, key: str, prefix_versions: dict[str, str]) -> str | None:
    """A key's version, counting truncates of any prefix it starts with."""
    return PrefixSet(prefix_versions).version_of(own, key)
