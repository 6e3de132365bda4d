"""The Redis layout shared by the cdc publisher and the gateways.

All keys share the hash tag {fw} so the script's keys live in one slot (Redis Cluster safe).

- HASH  {fw}:versions   cache key -> version of the last transaction that invalidated it
- HASH  {fw}:prefixes   key prefix -> version of the last truncate that invalidated every key under it
- STR   {fw}:watermark  highest version V such that every transaction up to V has been released
- STR   {fw}:tx:<xid>   version at which transaction <xid> was released (expires after tx_ttl_s):
                        what read-your-writes tokens wait for
- PUBSUB fw:inv         one message per released batch that advanced anything (see encode/decode); its
                        optional `d` carries the payload of advanced keys (key -> JSON text of the row)
- ZSET  {fw}:changed    cache key -> commit ms of its last change; only with a retention horizon
- STR   {fw}:horizon    the newest version of any key trimmed from {fw}:versions (the retention
                        horizon): a key without a version of its own reports it instead of nothing

A key's effective version is the greatest of its own version and the versions of the prefixes it
starts with. Versions are fixed-width hex, so Lua's string comparison orders them correctly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERSIONS = "{fw}:versions"
PREFIXES = "{fw}:prefixes"
WATERMARK = "{fw}:watermark"
CHANGED = "{fw}:changed"
HORIZON = "{fw}:horizon"
CHANNEL = "fw:inv"

# Shared by every release script: advance ARGV[first..last] in `hash` to version ARGV[1] where it is
# greater (recording the commit ms in `changed`, when given), returning what advanced; and the optional
# fields of a published message.
ADVANCE_LUA = """
local v = ARGV[1]
local function advance(hash, first, last, changed)
  local advanced = {}
  for i = first, last do
    local cur = redis.call('HGET', hash, ARGV[i])
    if (not cur) or cur < v then
      redis.call('HSET', hash, ARGV[i], v)
      advanced[#advanced + 1] = ARGV[i]
      if changed then
        redis.call('ZADD', changed, tonumber(ARGV[3]), ARGV[i])
      end
    end
  end
  return advanced
end
-- The payload (ARGV `data`: a JSON object, key -> the row's JSON text, or '') of the keys that advanced:
-- a key that did not advance is not announced, and neither is its data. The texts pass through as strings.
local function payload(message, data, advanced)
  if data == '' then
    return message
  end
  local rows = cjson.decode(data)
  local out, any = {}, false
  for _, k in ipairs(advanced) do
    if rows[k] then
      out[k] = rows[k]
      any = true
    end
  end
  if any then
    message.d = out
  end
  return message
end
local function extras(message, hops, lapse)
  if hops ~= '' then
    message.h = hops
  end
  if lapse ~= '' then
    message.l = lapse
  end
  return message
end
"""

# KEYS: versions, prefixes, watermark, tx marker[, changed: when given, each advanced key's commit ms is
# recorded there for trimming (TRIM_LUA)].
# ARGV: version, channel, commit_ts_ms, n_keys, tx_id, tx_ttl_s, hops, lapse, data, keys..., prefixes...
# `hops` is "<kafka record ts ms> <consumer receipt ms> <publish call ms>" (or empty), carried to the
# gateways as `h` for the per-hop latency breakdown (bench/latency.py); it changes nothing else. `data` is
# the batch's payload (data_arg), published as `d` for the keys that advanced.
# Advances each key (and prefix) only if the new version is greater, moves the watermark, and
# publishes what advanced. Atomic: a reader sees either none or all of one batch.
RELEASE_LUA = ADVANCE_LUA + """
local nkeys = tonumber(ARGV[4])
local keys = advance(KEYS[1], 10, 9 + nkeys, KEYS[5])
local prefixes = advance(KEYS[2], 10 + nkeys, #ARGV, nil)
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
  redis.call('PUBLISH', ARGV[2], cjson.encode(payload(extras(message, ARGV[7], ARGV[8]), ARGV[9], keys)))
end
return #keys
"""


# The retention horizon (docs/protocol.md "Versions"): drop the versions of keys whose last change is
# older than a cutoff, or the oldest past a count, and remember the newest version dropped. A key without
# a version of its own then reports that horizon instead of nothing: a resume can never miss a change
# (at worst one extra refetch). Atomic with releases; at most `batch` keys per call.
# KEYS: versions, changed, horizon. ARGV: cutoff ms (keys changed at or before it go), max keys (0: no
# bound), batch. Returns how many keys were dropped.
TRIM_LUA = """
local cutoff, maxkeys, batch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local victims = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, batch)
if maxkeys > 0 then
  local over = redis.call('ZCARD', KEYS[2]) - maxkeys
  if over > 0 then
    for _, k in ipairs(redis.call('ZRANGE', KEYS[2], 0, math.min(over, batch) - 1)) do
      victims[#victims + 1] = k
    end
  end
end
local horizon = redis.call('GET', KEYS[3]) or ''
local dropped = 0
for _, k in ipairs(victims) do
  local v = redis.call('HGET', KEYS[1], k)
  if v then
    if v > horizon then
      horizon = v
    end
    redis.call('HDEL', KEYS[1], k)
    dropped = dropped + 1
  end
  redis.call('ZREM', KEYS[2], k)
end
if horizon ~= '' then
  redis.call('SET', KEYS[3], horizon)
end
return dropped
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
    # key -> the row's payload as compact JSON text ("null": deleted), for keys that carry one
    data: dict[str, str] = field(default_factory=dict)


def strings_of(value: Any) -> tuple[str, ...]:
    # cjson encodes an empty Lua table as {} rather than [].
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()


def decode_published(raw: bytes | str) -> Published:
    body = json.loads(raw)
    return Published(
        version=str(body["v"]),
        keys=strings_of(body.get("k")),
        prefixes=strings_of(body.get("p")),
        commit_ts_ms=int(body.get("ts") or 0),
        watermark=str(body.get("wm") or body["v"]),
        tx_id=str(body.get("x") or ""),
        hops=hops_of(body.get("h")),
        lapse=str(body.get("l") or ""),
        data=data_of(body.get("d")),
    )


def data_of(value: Any) -> dict[str, str]:
    """A published `d` (key -> the row's JSON text) as key -> compact JSON text; anything that is not
    valid JSON text is left out (the key then goes without data: the client refetches)."""
    if not isinstance(value, dict):
        return {}
    data = {}
    for key, text in value.items():
        if not isinstance(text, str):
            continue
        try:
            data[str(key)] = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
        except (ValueError, RecursionError):
            continue
    return data


def data_arg(data: dict[str, str], keys: tuple[str, ...] | list[str] | None = None) -> str:
    """The `data` argument of a release script: the payload of `keys` (all of them when None), or ''."""
    chosen = data if keys is None else {k: data[k] for k in keys if k in data}
    return json.dumps(chosen, separators=(",", ":"), ensure_ascii=False) if chosen else ""


def hops_of(value: Any) -> tuple[float, ...]:
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
                 tx_id: str = "", tx_ttl_s: int = TX_TTL_S, hops: str = "", lapse: str = "",
                 data: dict[str, str] | None = None) -> list[str]:
    return [version, CHANNEL, str(commit_ts_ms), str(len(keys)), tx_id, str(tx_ttl_s), hops, lapse,
            data_arg(data or {}, keys), *keys, *prefixes]


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

    def version_of(self, own: str | None, key: str, horizon: str | None = None) -> str | None:
        """A key's version, counting truncates and degraded batches of any prefix it starts with; a key
        without a version of its own (never changed, or trimmed) starts from the retention horizon."""
        best = own if own is not None else horizon
        for prefix in self.covering(key):
            version = self.versions[prefix]
            if best is None or version > best:
                best = version
        return best


def effective_version(own: str | None, key: str, prefix_versions: dict[str, str]) -> str | None:
    """A key's version, counting truncates of any prefix it starts with."""
    return PrefixSet(prefix_versions).version_of(own, key)
