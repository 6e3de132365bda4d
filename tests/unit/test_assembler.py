"""cdc.assembler over the real stack capture (decode -> Assembler with the demo rules), and built streams."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from debezium_json import DEMO_RULES, begin_json, change_value, enc, end_json, heartbeat_json, stack_capture
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc import assembler as assembler_module
from cdc.assembler import Assembler
from cdc.decode import decode
from cdc.keyset import KeyLimits
from cdc.model import Batch, LogicalMessage, Record, RowChange, TxBegin, TxEnd
from cdc.rules import Rules, load_rules
from contract.versions import version_of_lsn

RULES = load_rules(DEMO_RULES)
CAPTURE = [(c.offset, decode(c.key, c.value)) for c in stack_capture()]
ENDS = [(offset, r) for offset, r in CAPTURE if isinstance(r, TxEnd)]


def run(records: list[tuple[int, Record]], assembler: Assembler | None = None) -> tuple[Assembler, list[Batch]]:
    assembler = assembler or Assembler(RULES)
    batches = [b for offset, r in records if (b := assembler.feed(r, offset)) is not None]
    return assembler, batches


def test_assembler_capture_offsets_are_contiguous() -> None:
    assert [offset for offset, _ in CAPTURE] == list(range(len(CAPTURE)))
    assert len(ENDS) == 16


def test_assembler_each_end_releases_one_batch_at_its_end_lsn() -> None:
    assembler = Assembler(RULES)
    released = []
    for offset, record in CAPTURE:
        batch = assembler.feed(record, offset)
        if isinstance(record, TxEnd):
            assert batch is not None, f"END at {offset} released nothing"
            assert batch.version == version_of_lsn(record.end_lsn)
            assert batch.tx_id == record.tx_id
            assert batch.commit_ts_ms == record.ts_ms
            released.append(batch)
        else:
            assert batch is None, f"{record} at {offset} released a batch"
    assert [b.tx_id for b in released] == [str(x) for x in range(728, 744)]
    assert assembler.last_version == released[-1].version == version_of_lsn(26625528)


def test_assembler_versions_strictly_increase() -> None:
    _, batches = run(CAPTURE)
    versions = [b.version for b in batches]
    assert all(a < b for a, b in itertools.pairwise(versions))


def test_assembler_keys_are_deduplicated() -> None:
    _, batches = run(CAPTURE)
    by_tx = {b.tx_id: b for b in batches}
    for b in batches:
        assert len(b.keys) == len(set(b.keys))
        assert len(b.prefixes) == len(set(b.prefixes))
    cards = by_tx["734"]  # card 1 moves board 1 -> 2, card 2 changes status on board 1
    assert sorted(cards.keys) == sorted(["card:1", "board:1", "tenant:1:card:1", "tenant:1:board:1", "board:2",
                                         "tenant:1:board:2", "card:2", "tenant:1:card:2"])
    assert cards.ops == {"public.cards": {"u": 2}}
    outbox = by_tx["735"]  # truncate of the outbox, then an insert with an explicit keys column
    assert outbox.keys == ("order:7", "tenant:1:orders")
    assert outbox.prefixes == ()
    assert outbox.ops == {"public.outbox": {"t": 1, "c": 1}}


def test_assembler_heartbeat_transactions_release_empty_batches() -> None:
    _, batches = run(CAPTURE)
    beats = [b for b in batches if b.tx_id not in ("734", "735")]
    assert len(beats) == 14
    for b in beats:
        assert b.empty
        assert set(b.ops) == {"public.freshwire_heartbeat"}


def test_assembler_safe_offset_never_points_inside_an_open_transaction() -> None:
    assembler = Assembler(RULES)
    open_begin: int | None = None
    for offset, record in CAPTURE:
        assembler.feed(record, offset)
        if isinstance(record, TxBegin):
            open_begin = offset
        elif isinstance(record, TxEnd):
            open_begin = None
            assert assembler.safe_offset == offset + 1
        if open_begin is not None:
            assert assembler.safe_offset is None or assembler.safe_offset <= open_begin
        elif not isinstance(record, TxEnd):
            assert assembler.safe_offset == offset + 1  # heartbeats outside transactions move it on
    # The capture ends inside transaction 744 (BEGIN at 65, its change at 66, no END yet).
    assert assembler.safe_offset == 65


def test_assembler_restart_from_any_safe_offset_releases_the_same_batches() -> None:
    _, batches = run(CAPTURE)
    assembler = Assembler(RULES)
    safe_offsets = set()
    for offset, record in CAPTURE:
        assembler.feed(record, offset)
        if assembler.safe_offset is not None:
            safe_offsets.add(assembler.safe_offset)
    end_offset = {r.tx_id: offset for offset, r in ENDS}
    for safe in sorted(safe_offsets):
        _, again = run(CAPTURE[safe:])
        assert again == [b for b in batches if end_offset[b.tx_id] >= safe]


def test_assembler_replay_into_same_assembler_releases_nothing_more() -> None:
    assembler, batches = run(CAPTURE)
    assert len(batches) == 16
    assert assembler.skipped_replays == 0
    _, again = run(CAPTURE, assembler)
    assert again == []
    assert assembler.skipped_replays == len(ENDS)
    _, tail = run(CAPTURE[30:], assembler)
    assert tail == []
    assert assembler.skipped_replays == len(ENDS) + len([o for o, _ in ENDS if o >= 30])


def test_assembler_restart_with_last_version_skips_what_was_released() -> None:
    _, batches = run(CAPTURE)
    assembler, again = run(CAPTURE, Assembler(RULES, last_version=batches[7].version))
    assert again == batches[8:]
    assert assembler.skipped_replays == 8


def test_assembler_fifty_row_transaction_is_one_batch() -> None:
    records: list[tuple[bytes | None, bytes | None]] = [heartbeat_json(1), begin_json("900", 30_000_000)]
    for i in range(1, 51):
        row = {"id": i, "tenant_id": 1, "board_id": 1 + i % 5, "title": f"card {i}", "status": "todo",
               "owner": None, "version": 1}
        records.append((enc({"id": i}), enc(change_value("cards", "c", after=row, tx=f"900:{30_000_000 + 100 * i}",
                                                         lsn=30_000_000 + 100 * i))))
    records += [end_json("900", 30_100_000, 50), heartbeat_json(2)]
    assembler, batches = run([(o, decode(k, v)) for o, (k, v) in enumerate(records)])
    assert len(batches) == 1
    (batch,) = batches
    assert batch.version == version_of_lsn(30_100_000)
    assert batch.ops == {"public.cards": {"c": 50}}
    expected = {f"card:{i}" for i in range(1, 51)} | {f"tenant:1:card:{i}" for i in range(1, 51)}
    expected |= {f"board:{b}" for b in range(1, 6)} | {f"tenant:1:board:{b}" for b in range(1, 6)}
    assert set(batch.keys) == expected
    assert len(batch.keys) == 110
    assert assembler.safe_offset == len(records)


def test_assembler_change_without_transaction_metadata_is_its_own_batch() -> None:
    records = [(enc({"id": 6}), enc(change_value("items", "c", after={"id": 6}, lsn=26809848))),
               heartbeat_json(3),
               (None, enc(change_value("items_default", "t", lsn=26813872)))]
    assembler, batches = run([(o, decode(k, v)) for o, (k, v) in enumerate(records)])
    assert [(b.version, b.keys, b.prefixes) for b in batches] == [
        (version_of_lsn(26809848), ("items:6", "items"), ()),
        (version_of_lsn(26813872), ("items_default",), ("items_default:",)),
    ]
    assert assembler.safe_offset == 3


def test_assembler_snapshot_reads_at_one_position_all_release() -> None:
    records = [(enc({"id": i}), enc(change_value("items", "r", after={"id": i}, lsn=500))) for i in (1, 2)]
    _, batches = run([(o, decode(k, v)) for o, (k, v) in enumerate(records)])
    assert [b.keys for b in batches] == [("items:1", "items"), ("items:2", "items")]
    assert {b.version for b in batches} == {version_of_lsn(500)}


def test_assembler_skip_moves_safe_offset_only_outside_transactions() -> None:
    assembler = Assembler(RULES)
    assembler.skip(0)
    assert assembler.safe_offset == 1
    assembler.feed(decode(*begin_json("1", 10)), 1)
    assembler.skip(2)
    assert assembler.safe_offset == 1
    assembler.feed(decode(*end_json("1", 20, 0)), 3)
    assert assembler.safe_offset == 4


def test_assembler_reset_forgets_the_open_transaction_and_position() -> None:
    records = [begin_json("1", 10),
               (enc({"id": 1}), enc(change_value("items", "c", after={"id": 1}, tx="1:10", lsn=10))),
               end_json("1", 20, 1)]
    decoded = [(o, decode(k, v)) for o, (k, v) in enumerate(records)]
    assembler, batches = run(decoded)
    # a tuple, not `safe_offset == 3`: mypy would keep that narrowing (to int) across reset()
    assert (len(batches), assembler.safe_offset) == (1, 3)
    assembler.reset()
    assert (assembler.safe_offset, assembler.last_version) == (None, "")
    _, again = run(decoded[:2], assembler)
    assembler.reset(last_version=batches[0].version)
    _, again = run(decoded, assembler)
    assert again == []
    assembler.reset()
    _, again = run(decoded, assembler)
    assert again == batches


def test_assembler_write_token_message_releases_its_transaction() -> None:
    """A transaction that only wrote a write token's logical message (captured from the stack) is
    released at its END, with no keys: a token for it never hangs."""
    lines = (Path(__file__).parent.parent / "fixtures" / "stack-capture-message.jsonl").read_text().splitlines()
    assembler = Assembler(Rules({}))
    released = []
    for line in lines:
        rec = json.loads(line)
        record = decode(rec["key"].encode() if rec["key"] else None, rec["value"].encode())
        if rec["offset"] == 100148:
            assert record == LogicalMessage(tx_id="33682", prefix="freshwire.token")
        batch = assembler.feed(record, rec["offset"])
        if batch is not None:
            released.append(batch)
    assert len(released) == 1
    assert released[0].tx_id == "33682" and released[0].empty
    assert released[0].version == version_of_lsn(35703896)
    assert assembler.safe_offset == 100150


def change_json(table: str, op: str, **images: Any) -> tuple[bytes, bytes]:
    return enc({"id": 1}), enc(change_value(table, op, **images))


def test_assembler_changes_without_transaction_metadata_are_counted() -> None:
    """Review bug 5: a connector without provide.transaction.metadata is refused (counted, the consumer
    reports a configuration error); snapshot reads, which never carry a transaction, are not."""
    assembler = Assembler(RULES)
    snapshot = decode(*change_json("cards", "r", after={"id": 1, "tenant_id": 1, "board_id": 1}))
    assembler.feed(snapshot, 0)
    assert assembler.without_transaction == 0
    update = decode(*change_json("cards", "u", after={"id": 1, "tenant_id": 1, "board_id": 2}))
    assembler.feed(update, 1)
    assert assembler.without_transaction == 1


def test_assembler_snapshot_batches_name_no_transaction_for_tokens() -> None:
    """Review bug 8: snapshot rows leave no {fw}:tx:lsn:<n> marker, since no token can name them."""
    snapshot = decode(*change_json("cards", "r", after={"id": 1, "tenant_id": 1, "board_id": 1}))
    batch = Assembler(RULES).feed(snapshot, 0)
    assert batch is not None and batch.tx_id.startswith("lsn:") and batch.token_tx_id == ""
    (committed,) = [b for b in run(CAPTURE)[1] if b.tx_id == "734"]
    assert committed.token_tx_id == "734"


# -- deferral: a transaction's changes go through the rules at its END, as if applied one by one

DEFER_TABLES = ("cards", "boards", "outbox", "items")


@st.composite
def card_streams(draw: st.DrawFn) -> list[tuple[int, Record]]:
    """Transactions of card/board/outbox/other changes, some without END (lost: they ride with the next),
    some ENDs counting more events than came (missing), the odd snapshot read, heartbeats."""
    out: list[tuple[bytes | None, bytes | None]] = []
    lsn = 1_000
    for xid in range(draw(st.integers(min_value=1, max_value=6))):
        lsn += 10
        out.append(begin_json(str(xid), lsn))
        n = draw(st.integers(min_value=0, max_value=12))
        for _ in range(n):
            lsn += 1
            table = draw(st.sampled_from(DEFER_TABLES))
            op = draw(st.sampled_from("cudt"))
            card, board, tenant = (draw(st.integers(min_value=1, max_value=4)) for _ in range(3))
            row = {"id": card, "board_id": board, "tenant_id": tenant, "title": draw(st.sampled_from(["a", "b"])),
                   "status": "todo", "owner": "ada", "version": draw(st.integers(min_value=1, max_value=3)),
                   "aggregatetype": "card", "aggregateid": str(card)}
            moved = {**row, "board_id": board % 4 + 1}
            before = None if op == "c" else row
            after = None if op == "d" else (moved if op == "u" else row)
            out.append((enc({"id": card}), enc(change_value(table, op, before=before, after=after,
                                                             tx=f"{xid}:{lsn}", lsn=lsn))))
        if draw(st.booleans()):
            lsn += 5
            out.append(end_json(str(xid), lsn, n + draw(st.integers(min_value=0, max_value=1))))
        if draw(st.booleans()):
            out.append(heartbeat_json(lsn))
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            lsn += 1
            out.append((enc({"id": 9}), enc(change_value("items", "r", after={"id": 9, "n": 1}, lsn=lsn))))
    return [(offset, decode(k, v)) for offset, (k, v) in enumerate(out)]


def end_counts_by_table(records: list[tuple[int, Record]]) -> list[tuple[int, Record]]:
    """END markers of the built streams name their tables, as Debezium's do."""
    fixed: list[tuple[int, Record]] = []
    seen: dict[str, int] = {}
    for offset, r in records:
        if isinstance(r, TxBegin):
            seen = {}
        elif isinstance(r, RowChange):
            seen[r.qualified] = seen.get(r.qualified, 0) + 1
        elif isinstance(r, TxEnd):
            extra = r.event_count - sum(seen.values())
            counts = dict(seen)
            if extra:
                counts["public.cards"] = counts.get("public.cards", 0) + extra
            r = replace(r, collections=tuple(counts.items()))
        fixed.append((offset, r))
    return fixed


@settings(max_examples=300, deadline=None)
@given(records=card_streams(), max_keys=st.sampled_from([1, 3, 10_000]), skip_from=st.integers(0, 3))
def test_assembler_deferred_changes_release_what_eager_ones_do(records: list[tuple[int, Record]], max_keys: int,
                                                               skip_from: int) -> None:
    """Any deferral bound (0: every change through the rules on arrival) releases the same batches,
    byte for byte, skips the same ones and keeps the same safe offsets."""
    records = end_counts_by_table(records)
    limits = KeyLimits(max_keys=max_keys, max_prefixes=2)
    ends = [r.end_lsn for _, r in records if isinstance(r, TxEnd)]
    last = version_of_lsn(sorted(ends)[min(skip_from, len(ends) - 1)]) if ends and skip_from else ""
    outcomes = []
    for bound in (0, 1, 2, assembler_module.MAX_DEFERRED):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(assembler_module, "MAX_DEFERRED", bound)
            assembler = Assembler(RULES, last_version=last, limits=limits)
            steps = [(assembler.feed(r, offset), assembler.safe_offset) for offset, r in records]
            outcomes.append(repr((steps, assembler.skipped_replays, assembler.last_version)))  # dict order too
    assert all(outcome == outcomes[0] for outcome in outcomes[1:])
