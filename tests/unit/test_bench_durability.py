"""The pure parts of bench/redis_durability.py: the loss counter, which shard a release writes to, the table."""

from __future__ import annotations

from bench.redis_durability import LAYOUT, batch_of, lost_versions, per_s, table, writes_to


def test_an_acknowledged_batch_is_lost_when_a_key_is_below_its_version_or_missing() -> None:
    acked = [("0000000000000001", ("a", "b")), ("0000000000000002", ("a", "c")), ("0000000000000003", ("d",))]
    versions = {"a": "0000000000000002", "b": "0000000000000001", "c": "0000000000000001"}
    # 1: a was raised by 2 (later batch), b holds 1: kept. 2: c holds 1 < 2: lost. 3: d missing: lost.
    assert lost_versions(acked, versions) == ["0000000000000002", "0000000000000003"]


def test_nothing_lost_when_every_key_is_at_or_past_every_acknowledged_version() -> None:
    acked = [(batch_of(i).version, batch_of(i).keys) for i in range(1, 1000)]
    versions = {k: batch_of(999).version for _, keys in acked for k in keys}
    assert lost_versions(acked, versions) == []
    assert lost_versions([], {}) == []


def test_batches_are_two_keys_at_a_fixed_width_version() -> None:
    b = batch_of(1234)
    assert (b.version, b.tx_id, b.commit_ts_ms, b.keys) == ("00000000000004d2", "1234", 1234, ("k234", "j457"))
    assert batch_of(9).version < batch_of(10).version < batch_of(255).version < batch_of(256).version


def test_a_release_writes_to_a_shard_through_its_buckets_or_the_control_slot() -> None:
    keys = ("k1", "j1")
    own = frozenset(LAYOUT.bucket_of(k) for k in keys)
    other = frozenset(range(LAYOUT.buckets)) - own
    assert writes_to(keys, own, control=False)
    assert not writes_to(keys, other, control=False)
    assert writes_to(keys, other, control=True)  # every release ends with its control call on {fw}


def test_rate_and_table() -> None:
    assert per_s(300, 2.0) == 150.0
    assert per_s(5, 0.0) == 0.0
    row = {"mode": "1", "acknowledged": 10, "lost_at_failover": 0, "lost_at_end": 0,
           "releases_per_s_before_kill": 800.5, "kill_to_promotion_s": 3.9, "kill_to_first_ack_s": None,
           "kill_to_rejoined_s": 9.04, "acknowledged_while_promoted_master_had_no_replica": 0,
           "releases_per_s_after_recovery": 700.0, "errors_after_kill": 3}
    lines = table([row])
    assert len(lines) == 3 and "lost at failover" in lines[0]
    assert " 1 |" in lines[2] and "never" in lines[2] and "3.90 s" in lines[2] and "9.04 s" in lines[2]
