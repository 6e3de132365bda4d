"""The version store spread over buckets, for a Redis Cluster (docs/scaling.md, "The Redis layout").

With one bucket (the default, and the single-node stack) the layout is redis_layout.py's: one hash tag
`{fw}`, one script call per transaction, one classic pub/sub channel. With N buckets:

- a key lives in bucket crc32(key) % N; each bucket has its own hash tag, chosen so the N tags' slots
  spread evenly over 16384 (and so over the masters), holding
  HASH {tag}:versions, ZSET {tag}:changed, STR {tag}:horizon and the shard channel {tag}:inv;
- the control slot `{fw}` keeps what is global: {fw}:prefixes, {fw}:watermark, {fw}:tx:<xid>,
  {fw}:layout (the bucket count, written by the consumer, read by gateways) and the shard channel
  {fw}:ctl;
- a transaction is released as one PART call per bucket it touches (advance the keys, SPUBLISH the
  ones that advanced on the bucket's channel), then one CONTROL call (advance prefixes, set the tx
  marker, move the watermark, SPUBLISH which buckets it touched). The watermark and the tx marker
  move only after every part: `await`, `visible` and the watermark never run ahead of the versions.
- a gateway joins the parts and the control message of one version back into one `Published`
  (`Joiner`), so a connection still gets one `invalidate` per transaction.

Pure: names, scripts, argument lists and the joiner; the I/O is in cdc/effects.py and
gateway/backend_redis.py.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from contract.redis_layout import ADVANCE_LUA, Published, data_arg, data_of, hops_of, strings_of

CONTROL_TAG = "fw"
LAYOUT = "{fw}:layout"
CONTROL_CHANNEL = "{fw}:ctl"
MAX_BUCKETS = 1024
TAG_SEARCH = 100_000  # candidates tried per bucket for a tag in its slot range (a few dozen suffice)


class LayoutError(ValueError):
    """The bucket count is out of range, or differs from the one the version store was written with."""


@lru_cache(maxsize=16)
def bucket_tags(buckets: int) -> tuple[str, ...]:
    """Hash tags for `buckets` buckets, the i-th in the i-th of `buckets` equal slot ranges: Redis
    Cluster's default slot split puts the same number of buckets on every master."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise LayoutError(f"FRESHWIRE_REDIS_BUCKETS must be 1..{MAX_BUCKETS}, not {buckets}")
    if buckets == 1:
        return (CONTROL_TAG,)
    tags = []
    for i in range(buckets):
        low, high = i * REDIS_CLUSTER_HASH_SLOTS // buckets, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // buckets
        for n in range(TAG_SEARCH):
            tag = f"fw:b{i}.{n}"
            if low <= key_slot(tag.encode()) < high:
                tags.append(tag)
                break
        else:  # pragma: no cover - crc16 covers every range within a few hundred candidates
            raise LayoutError(f"no hash tag found for bucket {i} of {buckets}")
    return tuple(tags)


@dataclass(frozen=True)
class Layout:
    """Where a key's version lives and where its release is published."""

    buckets: int = 1

    def __post_init__(self) -> None:
        bucket_tags(self.buckets)  # validates

    @property
    def spread(self) -> bool:
        return self.buckets > 1

    def bucket_of(self, key: str) -> int:
        return zlib.crc32(key.encode()) % self.buckets if self.buckets > 1 else 0

    def tag(self, bucket: int) -> str:
        return bucket_tags(self.buckets)[bucket]

    def versions(self, bucket: int) -> str:
        return f"{{{self.tag(bucket)}}}:versions"

    def changed(self, bucket: int) -> str:
        return f"{{{self.tag(bucket)}}}:changed"

    def horizon(self, bucket: int) -> str:
        return f"{{{self.tag(bucket)}}}:horizon"

    def channel(self, bucket: int) -> str:
        return f"{{{self.tag(bucket)}}}:inv"

    def channels(self) -> list[str]:
        """Every shard channel a gateway listens to: the control channel, then each bucket's."""
        return [CONTROL_CHANNEL, *(self.channel(b) for b in range(self.buckets))]

    def by_bucket(self, keys: tuple[str, ...] | list[str]) -> dict[int, list[str]]:
        grouped: dict[int, list[str]] = {}
        for key in keys:
            grouped.setdefault(self.bucket_of(key), []).append(key)
        return grouped


def layout_value(layout: Layout) -> str:
    return f"buckets={layout.buckets}"


def parse_layout_value(raw: bytes | str | None) -> Layout:
    """The layout a version store was written with ({fw}:layout); none recorded means one bucket."""
    if raw is None:
        return Layout(1)
    text = raw.decode() if isinstance(raw, bytes) else raw
    name, _, count = text.partition("=")
    if name != "buckets" or not count.isdigit():
        raise LayoutError(f"{LAYOUT} holds {text!r}, not buckets=<n>")
    return Layout(int(count))


# KEYS: the bucket's versions[, changed]. ARGV: version, channel, commit_ts_ms, tx_id, data, keys...
# Advances each key only if the new version is greater; publishes the part (even with no key advanced:
# a replayed part then still completes its transaction at the gateways), with the payload (`d`) of the
# bucket's keys that advanced: the data travels with its key. Returns how many advanced.
PART_LUA = ADVANCE_LUA + """
local advanced = advance(KEYS[1], 6, #ARGV, KEYS[2])
redis.call('SPUBLISH', ARGV[2], cjson.encode(payload({v = v, k = advanced, x = ARGV[4]}, ARGV[5], advanced)))
return #advanced
"""

# KEYS: prefixes, watermark, tx marker. ARGV: version, channel, commit_ts_ms, tx_id, tx_ttl_s, hops,
# lapse, buckets (space-separated indexes of the parts published before this call), prefixes...
# `pw` is the watermark before this call: a gateway that sees it ahead of the last watermark it knows
# has missed a control message, and resyncs.
CONTROL_LUA = ADVANCE_LUA + """
local advanced = advance(KEYS[1], 9, #ARGV, nil)
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], v, 'EX', tonumber(ARGV[5]))
end
local wm = redis.call('GET', KEYS[2])
local pw = wm or ''
if (not wm) or wm < v then
  redis.call('SET', KEYS[2], v)
  wm = v
end
local message = {v = v, p = advanced, ts = tonumber(ARGV[3]), wm = wm, pw = pw, x = ARGV[4], b = ARGV[8]}
redis.call('SPUBLISH', ARGV[2], cjson.encode(extras(message, ARGV[6], ARGV[7])))
return #advanced
"""


@dataclass(frozen=True)
class ScriptCall:
    """One script call of a release: the script, its keys and its arguments."""

    script: str
    keys: list[str]
    args: list[str]


def release_calls(layout: Layout, version: str, commit_ts_ms: int, keys: tuple[str, ...],
                  prefixes: tuple[str, ...], tx_id: str, tx_ttl_s: int, hops: str, lapse: str,
                  track_changes: bool, data: dict[str, str] | None = None) -> tuple[list[ScriptCall], ScriptCall]:
    """A spread release: the part calls (one per bucket touched; run them first, in any order), then
    the control call (run it only once every part has succeeded)."""
    from contract.redis_layout import PREFIXES, WATERMARK, tx_key

    parts = []
    for bucket, bucket_keys in sorted(layout.by_bucket(keys).items()):
        extra = [layout.changed(bucket)] if track_changes else []
        parts.append(ScriptCall(PART_LUA, [layout.versions(bucket), *extra],
                                [version, layout.channel(bucket), str(commit_ts_ms), tx_id,
                                 data_arg(data or {}, bucket_keys), *bucket_keys]))
    touched = " ".join(str(b) for b in sorted(layout.by_bucket(keys)))
    control = ScriptCall(CONTROL_LUA, [PREFIXES, WATERMARK, tx_key(tx_id)],
                         [version, CONTROL_CHANNEL, str(commit_ts_ms), tx_id, str(tx_ttl_s), hops, lapse, touched,
                          *prefixes])
    return parts, control


# ---------------------------------------------------------------------------------------- gateways


@dataclass(frozen=True, slots=True)
class Part:
    bucket: int
    version: str
    keys: tuple[str, ...]
    data: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Control:
    version: str
    prefixes: tuple[str, ...]
    commit_ts_ms: int
    watermark: str
    previous_watermark: str
    tx_id: str
    buckets: tuple[int, ...]
    hops: tuple[float, ...] = ()
    lapse: str = ""


def decode_part(bucket: int, raw: bytes | str) -> Part:
    body = json.loads(raw)
    return Part(bucket, str(body["v"]), strings_of(body.get("k")), data_of(body.get("d")))


def decode_control(raw: bytes | str) -> Control:
    body = json.loads(raw)
    buckets = tuple(int(b) for b in str(body.get("b") or "").split())
    return Control(str(body["v"]), strings_of(body.get("p")), int(body.get("ts") or 0),
                   str(body.get("wm") or body["v"]), str(body.get("pw") or ""), str(body.get("x") or ""), buckets,
                   hops_of(body.get("h")), str(body.get("l") or ""))


PART_WAIT_S = 2.0      # longest a control message waits for its parts before the gateway resyncs
PART_TTL_S = 60.0      # a part whose control never came (a consumer died between them) is dropped after this
MAX_PENDING = 10_000   # parts and controls held at most; past it the gateway resyncs


@dataclass
class Joiner:
    """Joins the parts and the control message of each release back into one `Published`, in release
    order (the order of the control channel). Messages of different channels arrive in any order.

    `feed_*` return the releases now complete, or None when the stream has a gap (a control message
    missed, a part that did not come within PART_WAIT_S, too much held): the caller then resyncs from
    the versions (RESYNC) and calls `reset`.
    """

    part_wait_s: float = PART_WAIT_S
    part_ttl_s: float = PART_TTL_S
    max_pending: int = MAX_PENDING
    watermark: str | None = None  # the last watermark seen on the control channel (or read at a resync)
    _parts: OrderedDict[tuple[str, int], tuple[set[str], float, dict[str, str]]] = field(default_factory=OrderedDict)
    _controls: list[tuple[Control, float]] = field(default_factory=list)

    def reset(self, watermark: str | None) -> None:
        self._parts.clear()
        self._controls.clear()
        self.watermark = watermark

    @property
    def pending(self) -> int:
        return len(self._parts) + len(self._controls)

    def feed_part(self, part: Part, now: float) -> list[Published] | None:
        held = self._parts.get((part.version, part.bucket))
        if held is None:
            self._parts[(part.version, part.bucket)] = (set(part.keys), now, dict(part.data))
        else:
            held[0].update(part.keys)
            held[2].update(part.data)
        return self._drain(now)

    def feed_control(self, control: Control, now: float) -> list[Published] | None:
        if self.watermark is not None and control.previous_watermark > self.watermark:
            return None  # a control message between the two was missed
        if self.watermark is None or control.watermark > self.watermark:
            self.watermark = control.watermark
        self._controls.append((control, now))
        return self._drain(now)

    def tick(self, now: float) -> list[Published] | None:
        """Called when nothing arrived for a while: expires what waited too long."""
        return self._drain(now)

    def _drain(self, now: float) -> list[Published] | None:
        done: list[Published] = []
        while self._controls:
            control, since = self._controls[0]
            if not all((control.version, b) in self._parts for b in control.buckets):
                if now - since > self.part_wait_s:
                    return None
                break
            keys: list[str] = []
            data: dict[str, str] = {}
            for b in control.buckets:
                part_keys, _since, part_data = self._parts.pop((control.version, b))
                keys.extend(sorted(part_keys))
                data.update(part_data)
            self._controls.pop(0)
            if keys or control.prefixes or control.previous_watermark < control.version:
                done.append(Published(control.version, tuple(keys), control.prefixes, control.commit_ts_ms,
                                      control.watermark, control.tx_id, control.hops, control.lapse, data))
        while self._parts and now - next(iter(self._parts.values()))[1] > self.part_ttl_s:
            self._parts.popitem(last=False)
        if self.pending > self.max_pending:
            return None
        return done


CLUSTER_SCHEME = "redis+cluster://"


def cluster_nodes(url: str) -> list[tuple[str, int]] | None:
    """The seed nodes of a `redis+cluster://host:port[,host:port...]` URL; None for any other URL."""
    if not url.startswith(CLUSTER_SCHEME):
        return None
    nodes = []
    for part in url[len(CLUSTER_SCHEME):].split("/")[0].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise LayoutError(f"{url!r}: each node must be host:port")
        nodes.append((host, int(port)))
    return nodes
