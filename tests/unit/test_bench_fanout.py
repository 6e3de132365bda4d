"""bench/fanout.py's pure helpers (and bench/procfs.py's parsers): /proc parsing, rates, splits, frame
versions. No processes, no speed."""

from __future__ import annotations

import pytest

from bench.fanout import SERVER_FILES, counts, fit_connections, kb_per_connection, per_second, ratios, spread
from bench.fanout_load import connection_keys, version_in
from bench.procfs import CLK_TCK, cpu_split, established_on, machine_ticks, stat_cpu_ticks, status_kb

# /proc/<pid>/stat of a process whose name holds a space and a parenthesis: utime 1500, stime 250.
STAT = "4242 (py thon) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 1500 250 0 0 20 0 1 0 123 456789 1234"


def test_stat_cpu_ticks_adds_utime_and_stime_after_the_command_name() -> None:
    assert stat_cpu_ticks(STAT) == 1750


def test_status_kb_reads_a_field_and_defaults_to_zero() -> None:
    status = "Name:\tpython\nVmPeak:\t  200000 kB\nVmRSS:\t   48676 kB\nThreads:\t1\n"
    assert status_kb(status) == 48676
    assert status_kb(status, "VmPeak") == 200000
    assert status_kb(status, "VmSwap") == 0
    assert status_kb("Name:\tjava\nThreads:\t41\n", "Threads") == 41


def test_machine_ticks_counts_idle_and_iowait_as_not_busy() -> None:
    proc_stat = "cpu  100 5 50 800 20 3 2 10 7 0\ncpu0 50 2 25 400 10 1 1 5 3 0\n"
    busy, total = machine_ticks(proc_stat)
    assert total == 100 + 5 + 50 + 800 + 20 + 3 + 2 + 10   # guest is already inside user
    assert busy == total - 800 - 20


@pytest.mark.parametrize(("n", "parts", "expected"), [
    (10, 4, [3, 3, 2, 2]), (3, 4, [1, 1, 1, 0]), (20000, 4, [5000] * 4), (0, 2, [0, 0]),
])
def test_spread_sums_to_n_with_parts_differing_by_at_most_one(n: int, parts: int, expected: list[int]) -> None:
    assert spread(n, parts) == expected
    assert sum(spread(n, parts)) == n


def test_fit_connections_leaves_room_for_the_servers_other_files() -> None:
    assert fit_connections(20000, 20000) == 20000 - SERVER_FILES
    assert fit_connections(2000, 20000) == 2000
    assert fit_connections(500, 50) == 0


def test_counts_parses_a_comma_list() -> None:
    assert counts("1000,5000") == [1000, 5000]
    assert counts(" 200 , 1000,") == [200, 1000]


def test_rates_and_memory_per_connection_guard_against_empty_phases() -> None:
    assert per_second(300, 10.0, 13.0) == 100.0
    assert per_second(5, 2.0, 2.0) == 0.0
    assert kb_per_connection(48000, 68000, 1000) == 20.0
    assert kb_per_connection(48000, 68000, 0) == 0.0


def test_ratios_pair_freshwire_with_the_reference_at_the_same_subscriber_count() -> None:
    rows = [{"target": "freshwire", "subscribers": 1000, "deliveries_per_s": 50.0},
            {"target": "reference", "subscribers": 1000, "deliveries_per_s": 100.0},
            {"target": "freshwire", "subscribers": 5000, "deliveries_per_s": 80.0}]
    assert ratios(rows) == {"1000": 0.5}


def test_version_in_finds_the_version_of_both_servers_frames() -> None:
    assert version_in('{"type":"invalidate","keys":{"bench:fan":"00000000000001f5"}}') == "00000000000001f5"
    raw = '{"p":{},"ts":1767225600000,"x":"","k":["bench:fan"],"v":"00000000000001f6","wm":"00000000000001f6"}'
    assert version_in(raw) == "00000000000001f6"
    assert version_in('{"type":"pong"}') is None


def test_connection_keys_one_own_key_then_shared_ones() -> None:
    assert connection_keys(7, 0) == []
    assert connection_keys(7, 1) == ["bench:u7"]
    assert connection_keys(107, 3) == ["bench:u107", "bench:g0:7", "bench:g1:7"]


def test_cpu_split_reports_what_other_processes_used() -> None:
    before = ({"gateway": 10.0, "client0": 1.0}, (1000, 5000))
    after = ({"gateway": 12.5, "client0": 2.0}, (1500, 6000))
    split = cpu_split(before, after, 3.0)
    assert split["processes_cpu_s"] == {"gateway": 2.5, "client0": 1.0}
    assert split["machine_busy_s"] == round(500 / CLK_TCK, 2)
    assert split["other_cpu_s"] == round(max(0.0, 500 / CLK_TCK - 3.5), 2)


PROC_NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:47DC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0 100 0 0 10 0
   1: 0100007F:47DC 0A00007F:9ED1 01 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1
   2: 0100007F:47DC 0B00007F:9ED2 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0 20 4 30 10 -1
   3: 0100007F:47DC 0B00007F:9ED3 06 00000000:00000000 03:00000DF2 00000000     0        0 0 3 0
   4: 0A00007F:9ED1 0100007F:47DC 01 00000000:00000000 00:00000000 00000000     0        0 104 1 0 20 4 30 10 -1
"""


def test_established_on_counts_the_server_side_of_established_connections() -> None:
    assert established_on(PROC_NET_TCP, 0x47DC) == 2    # not the listener, TIME_WAIT, or the client's end
    assert established_on(PROC_NET_TCP, 0x9ED1) == 1
    assert established_on(PROC_NET_TCP, 18380) == 0
