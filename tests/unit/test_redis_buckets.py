"""The spread layout's pure core (contract/redis_buckets.py): bucket tags spread over the masters,
keys land in one bucket, and the Joiner puts each release back together, once, in release order,
whatever order its parts and control messages arrive in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from contract.redis_buckets import (
    CONTROL_CHANNEL,
    Control,
    Joiner,
    Layout,
    LayoutError,
    Part,
    bucket_tags,
    cluster_nodes,
    decode_control,
    decode_part,
    parse_layout_value,
    release_calls,
)


def _master_of(slot: int, masters: int) -> int:
    # redis-cli --cluster create splits the 16384 slots into equal ranges, in order
    return min(slot * masters // 16384, masters - 1)


@pytest.mark.parametrize("buckets", [3, 6, 12, 24])
def test_bucket_tags_put_the_same_number_of_buckets_on_every_master(buckets: int) -> None:
    masters = [_master_of(key_slot(tag.encode()), 3) for tag in bucket_tags(buckets)]
    assert [masters.count(m) for m in range(3)] == [buckets // 3] * 3
    assert len({key_slot(t.encode()) for t in bucket_tags(buckets)}) == buckets


def test_one_bucket_is_todays_layout() -> None:
    layout = Layout(1)
    assert layout.versions(0) == "{fw}:versions" and not layout.spread
    assert layout.bucket_of("anything") == 0


@pytest.mark.parametrize("bad", [0, -1, 1025])
def test_a_bucket_count_out_of_range_is_refused_by_name(bad: int) -> None:
    with pytest.raises(LayoutError, match="FRESHWIRE_REDIS_BUCKETS"):
        Layout(bad)


def test_the_layout_value_round_trips_and_nothing_recorded_means_one_bucket() -> None:
    assert parse_layout_value(b"buckets=12") == Layout(12)
    assert parse_layout_value(None) == Layout(1)
    with pytest.raises(LayoutError):
        parse_layout_value("twelve")


def test_cluster_urls_name_their_seed_nodes() -> None:
    assert cluster_nodes("redis+cluster://127.0.0.1:27001,127.0.0.1:27002") == [("127.0.0.1", 27001),
                                                                                 ("127.0.0.1", 27002)]
    assert cluster_nodes("redis://127.0.0.1:6379/0") is None
    with pytest.raises(LayoutError):
        cluster_nodes("redis+cluster://nohost")


def test_a_release_is_one_part_per_bucket_touched_then_the_control_call() -> None:
    layout = Layout(4)
    keys = tuple(f"k{i}" for i in range(20))
    parts, control = release_calls(layout, "00000000000000aa", 5, keys, ("p:",), "77", 600, "", "", False)
    assert sorted(k for p in parts for k in p.args[5:]) == sorted(keys)
    assert all(len({layout.bucket_of(k) for k in p.args[5:]}) == 1 for p in parts)
    assert control.args[7] == " ".join(str(b) for b in sorted({layout.bucket_of(k) for k in keys}))
    assert control.args[8:] == ["p:"] and control.keys[2] == "{fw}:tx:77"


def _control(v: str, buckets: tuple[int, ...], pw: str, prefixes: tuple[str, ...] = ()) -> Control:
    return Control(v, prefixes, 0, v, pw, "", buckets)


def test_parts_and_control_in_any_order_make_one_release() -> None:
    joiner = Joiner()
    joiner.reset("a0")
    assert joiner.feed_part(Part(2, "a1", ("x",)), 0) == []
    assert joiner.feed_control(_control("a1", (0, 2), "a0"), 0) == []
    [done] = joiner.feed_part(Part(0, "a1", ("y", "z")), 0) or []
    assert (done.version, sorted(done.keys), done.watermark) == ("a1", ["x", "y", "z"], "a1")


def test_a_part_that_never_comes_ends_the_stream_after_the_wait() -> None:
    joiner = Joiner(part_wait_s=2)
    joiner.reset("a0")
    assert joiner.feed_control(_control("a1", (1,), "a0"), 0) == []
    assert joiner.tick(1.9) == []
    assert joiner.tick(2.1) is None


def test_a_missed_control_message_ends_the_stream() -> None:
    joiner = Joiner()
    joiner.reset("a0")
    assert joiner.feed_control(_control("a2", (), "a1"), 0) is None  # a1 was never seen


def test_a_replayed_release_joins_the_parts_of_both_runs() -> None:
    joiner = Joiner()
    joiner.reset("a0")
    joiner.feed_part(Part(1, "a1", ("x",)), 0)  # the consumer died before its control call
    joiner.feed_part(Part(1, "a1", ()), 1)  # the replay: nothing advances any more
    [done] = joiner.feed_control(_control("a1", (1,), "a0"), 1) or []
    assert done.keys == ("x",)


def test_a_replay_of_a_release_already_seen_yields_nothing() -> None:
    joiner = Joiner()
    joiner.reset("a1")
    joiner.feed_part(Part(1, "a1", ()), 0)
    assert joiner.feed_control(_control("a1", (1,), "a1"), 0) == []


def test_messages_decode_as_the_scripts_encode_them() -> None:
    part = decode_part(3, b'{"v":"00000000000000aa","k":{},"x":"9"}')
    assert part == Part(3, "00000000000000aa", ())
    control = decode_control('{"v":"b","p":["t:"],"ts":5,"wm":"b","pw":"a","x":"9","b":"0 3","l":"flush"}')
    assert (control.buckets, control.prefixes, control.previous_watermark, control.lapse) == ((0, 3), ("t:",), "a",
                                                                                                "flush")
    assert CONTROL_CHANNEL == "{fw}:ctl"


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 12))
def test_any_interleaving_yields_every_release_once_in_order_with_all_its_keys(seed: int, n: int) -> None:
    rng = random.Random(seed)
    layout = Layout(4)
    streams: dict[str, list[tuple[str, object]]] = {c: [] for c in layout.channels()}
    expected = []
    for i in range(1, n + 1):
        v, pw = f"{i:016x}", f"{i - 1:016x}"
        keys = tuple(dict.fromkeys(f"k{rng.randrange(30)}" for _ in range(rng.randint(0, 5))))
        groups = layout.by_bucket(keys)
        for b, ks in groups.items():
            streams[layout.channel(b)].append(("part", Part(b, v, tuple(ks))))
        streams[CONTROL_CHANNEL].append(("control", _control(v, tuple(sorted(groups)), pw)))
        expected.append((v, sorted(keys)))
    joiner = Joiner()
    joiner.reset(f"{0:016x}")
    out: list[tuple[str, list[str]]] = []
    while any(streams.values()):
        channel = rng.choice([c for c, s in streams.items() if s])  # per-channel order holds, nothing else
        kind, message = streams[channel].pop(0)
        got = (joiner.feed_part(message, 0) if kind == "part" else  # type: ignore[arg-type]
               joiner.feed_control(message, 0))  # type: ignore[arg-type]
        assert got is not None
        out.extend((p.version, sorted(p.keys)) for p in got)
    assert out == expected


@pytest.mark.parametrize(("env", "named"), [
    ({"FRESHWIRE_REDIS_BUCKETS": "0"}, "FRESHWIRE_REDIS_BUCKETS"),
    ({"FRESHWIRE_REDIS_URL": "redis+cluster://127.0.0.1"}, "host:port"),
    ({"FRESHWIRE_REDIS_WAIT_REPLICAS": "-1"}, "FRESHWIRE_REDIS_WAIT_REPLICAS"),
])
def test_the_consumer_refuses_a_bad_layout_setting_at_start_by_name(monkeypatch: pytest.MonkeyPatch,
                                                                     env: dict[str, str], named: str) -> None:
    from cdc.errors import SettingsError
    from cdc.settings import load_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=named):
        load_settings([])
