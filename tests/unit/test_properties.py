"""Property test of the whole release path in pure form.

Random committed transactions -> the Debezium-like record stream (BEGIN, row changes, tombstones,
END, heartbeats) -> decode -> Assembler, with crashes that restart a NEW Assembler (last_version="")
from any offset committed so far -> a pure model of the Redis release script (RELEASE_LUA).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from debezium_json import begin_json, change_value, enc, end_json, heartbeat_json
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.assembler import Assembler
from cdc.decode import decode
from cdc.model import Batch, Record
from cdc.rules import parse_rules
from contract.redis_layout import Published, decode_published, effective_version, hops_arg, release_args
from contract.versions import version_of_lsn

RULES = parse_rules({"tables": {"public.items": {"keys": ["item:{id}"]}}})
ALPHABET = "abcdef"
TRUNCATED = "item:"


class RedisModel:
    """RELEASE_LUA in pure Python: advance a key (or prefix) only to a greater version, move the
    watermark forward, publish only what advanced (or a moved watermark)."""

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self.prefixes: dict[str, str] = {}
        self.watermark: str | None = None
        self.published: list[Published] = []

    def release(self, argv: list[str]) -> int:
        v, nkeys = argv[0], int(argv[3])
        keys = self._advance(self.versions, argv[9:9 + nkeys], v)
        prefixes = self._advance(self.prefixes, argv[9 + nkeys:], v)
        moved = self.watermark is None or self.watermark < v
        if moved:
            self.watermark = v
        if keys or prefixes or moved:
            # cjson encodes an empty Lua table as {}.
            message: dict[str, object] = {"v": v, "k": keys or {}, "p": prefixes or {}, "ts": int(argv[2]),
                                          "wm": self.watermark, "x": argv[4]}
            if argv[6]:
                message["h"] = argv[6]
            if argv[7]:
                message["l"] = argv[7]
            rows = json.loads(argv[8]) if argv[8] else {}
            if any(k in rows for k in keys):
                message["d"] = {k: rows[k] for k in keys if k in rows}
            self.published.append(decode_published(json.dumps(message)))
        return len(keys)

    @staticmethod
    def _advance(table: dict[str, str], names: list[str], v: str) -> list[str]:
        advanced = []
        for name in names:
            cur = table.get(name)
            if cur is None or cur < v:
                table[name] = v
                advanced.append(name)
        return advanced

    def apply(self, batch: Batch) -> int:
        return self.release(release_args(batch.version, batch.commit_ts_ms, batch.keys, batch.prefixes,
                                         lapse=batch.lapse))


def test_properties_redis_model_mirrors_release_script() -> None:
    redis = RedisModel()
    assert redis.release(release_args("0000000000000002", 7, ("a", "b", "a"), ("p:",))) == 2
    assert redis.release(release_args("0000000000000001", 8, ("a", "c"), ("p:",))) == 1  # c only
    assert redis.release(release_args("0000000000000002", 9, ("a",), ())) == 0  # nothing: no message
    assert redis.release(release_args("0000000000000003", 10, (), ())) == 0  # watermark only
    assert redis.published == [
        Published("0000000000000002", ("a", "b"), ("p:",), 7, "0000000000000002"),
        Published("0000000000000001", ("c",), (), 8, "0000000000000002"),
        Published("0000000000000003", (), (), 10, "0000000000000003"),
    ]
    assert redis.versions == {"a": "0000000000000002", "b": "0000000000000002", "c": "0000000000000001"}


@dataclass(frozen=True)
class Tx:
    xid: str
    rows: tuple[tuple[str, str, int], ...]  # (op, row id, the change's own source.lsn)
    end_lsn: int

    @property
    def version(self) -> str:
        return version_of_lsn(self.end_lsn)

    @property
    def keys(self) -> set[str]:
        return {f"item:{row_id}" for op, row_id, _ in self.rows if op != "t"}

    @property
    def prefixes(self) -> set[str]:
        return {TRUNCATED} if any(op == "t" for op, _, _ in self.rows) else set()


@st.composite
def transactions(draw: st.DrawFn) -> list[Tx]:
    """Committed transactions in commit order: END LSNs strictly increase; a change's own LSN does
    not (a later-committing transaction may have written earlier, as with concurrent writers)."""
    txs = []
    end = draw(st.integers(min_value=100, max_value=10_000))
    for i in range(draw(st.integers(min_value=1, max_value=8))):
        end += draw(st.integers(min_value=1, max_value=3_000))
        rows = draw(st.lists(st.tuples(st.sampled_from("cuudt" if i % 3 else "cud"), st.sampled_from(ALPHABET),
                                       st.integers(min_value=1, max_value=end - 1)), max_size=5))
        txs.append(Tx(xid=str(700 + i), rows=tuple(rows), end_lsn=end))
    return txs


def stream(txs: list[Tx], heartbeats: list[bool]) -> list[tuple[bytes | None, bytes | None]]:
    """What Debezium puts in the one `freshwire.cdc` partition for these transactions."""
    records: list[tuple[bytes | None, bytes | None]] = []
    for tx, beat in zip(txs, heartbeats, strict=True):
        if beat:
            records.append(heartbeat_json(tx.end_lsn))
        begin_lsn = min([lsn for _, _, lsn in tx.rows], default=tx.end_lsn - 1)
        records.append(begin_json(tx.xid, begin_lsn))
        for op, row_id, lsn in tx.rows:
            tx_id = f"{tx.xid}:{lsn}"
            if op == "t":
                records.append((None, enc(change_value("items", "t", tx=tx_id, lsn=lsn))))
                continue
            before = {"id": row_id, "n": 0} if op in ("u", "d") else None
            after = {"id": row_id, "n": 1} if op in ("c", "u") else None
            key = enc({"id": row_id})
            records.append((key, enc(change_value("items", op, before=before, after=after, tx=tx_id, lsn=lsn))))
            if op == "d":
                records.append((key, None))  # Debezium's tombstone follows a delete
        records.append(end_json(tx.xid, tx.end_lsn, len(tx.rows), ts_ms=tx.end_lsn))
    return records


@settings(max_examples=300, deadline=None)
@given(txs=transactions(), data=st.data())
def test_properties_release_path_survives_restarts_and_replays(txs: list[Tx], data: st.DataObject) -> None:
    heartbeats = data.draw(st.lists(st.booleans(), min_size=len(txs), max_size=len(txs)), label="heartbeats")
    records: list[Record] = [decode(k, v) for k, v in stream(txs, heartbeats)]
    by_xid = {tx.xid: tx for tx in txs}
    redis = RedisModel()
    committed = {0}  # every offset the consumer could have committed so far
    released: set[str] = set()
    crashes = data.draw(st.integers(min_value=0, max_value=4), label="crashes")
    for session in range(crashes + 1):
        # A crash or rebalance: a NEW assembler resumes from a committed offset (the last one, or an
        # older one if later commits were lost), replaying everything after it.
        start = data.draw(st.sampled_from(sorted(committed)), label="restart at")
        stop = len(records) if session == crashes else data.draw(
            st.integers(min_value=start, max_value=len(records)), label="crash before")
        assembler = Assembler(RULES, last_version="")
        versions: list[str] = []
        for offset in range(start, stop):
            batch = assembler.feed(records[offset], offset)
            if batch is not None:
                tx = by_xid[batch.tx_id]
                assert batch.version == tx.version
                assert len(batch.keys) == len(set(batch.keys))
                assert set(batch.keys) == tx.keys, "a batch carries its whole transaction, never a part"
                assert set(batch.prefixes) == tx.prefixes
                versions.append(batch.version)
                released.add(batch.tx_id)
                redis.apply(batch)
            if assembler.safe_offset is not None:
                committed.add(assembler.safe_offset)
        assert versions == sorted(set(versions)), "versions strictly increase within a session"
    assert released == set(by_xid)

    published: dict[str, list[str]] = {}
    for message in redis.published:
        for name in (*message.keys, *message.prefixes):
            published.setdefault(name, []).append(message.version)
    for name, versions in published.items():
        assert versions == sorted(set(versions)), f"{name} published out of order or twice: {versions}"
    # Exactly once: every (key, version) of every transaction, and nothing else.
    expected = {(k, tx.version) for tx in txs for k in tx.keys} | {(p, tx.version) for tx in txs for p in tx.prefixes}
    assert {(name, v) for name, vs in published.items() for v in vs} == expected

    for row_id in ALPHABET:
        key = f"item:{row_id}"
        touching = [tx.version for tx in txs if key in tx.keys]
        truncating = [tx.version for tx in txs if tx.prefixes]
        assert redis.versions.get(key) == (touching[-1] if touching else None)
        assert effective_version(redis.versions.get(key), key, redis.prefixes) == max(
            touching + truncating, default=None)
    assert redis.watermark == txs[-1].version


def test_hop_timestamps_travel_with_the_published_batch() -> None:
    redis = RedisModel()
    redis.release(release_args("0000000000000005", 7, ("a",), (), hops=hops_arg(1000, 1001.25, 1002.5)))
    carried = redis.published[-1]
    assert carried.hops == (1000.0, 1001.25, 1002.5)
    redis.release(release_args("0000000000000006", 8, ("a",), ()))
    assert redis.published[-1].hops == ()
    assert decode_published('{"v": "0000000000000007", "h": "not numbers"}').hops == ()
