"""What a Redis master's SIGKILL loses of the releases Redis acknowledged, with and without WAIT.

    .venv/bin/python -m bench.redis_durability [--modes 0,1] [--before 3] [--after 8] [--cut-link-ms 0]

Modes: `0` releases without WAIT; `1` with `wait_replicas=1` through cdc.effects.RedisRelease (WAIT on
each master written, in the same pipeline as its writes, so on the connection that wrote them).

For each mode it starts a Redis Cluster of its own: 6 redis-server processes on free loopback ports
(3 masters + 3 replicas, no AOF, no RDB, node timeout 2 s), formed with `redis-cli --cluster create`,
ready once every node says `cluster_state:ok`, every replica's link is up and every master has its
replica. Then:

1. a writer thread releases one batch after another through the real RedisRelease (buckets=6, WAIT
   timeout 200 ms), each batch of two keys (`k{i % 500}`, `j{i % 777}`) at version i, as fast as it
   can; a release that returned is *acknowledged*; one that raised EffectError is retried (the same
   batch, after 50 ms), as the consumer does;
2. after `--before` seconds the master holding bucket 0 gets SIGKILL. With `--cut-link-ms N`, its
   replica's link is broken N ms before (and kept down: the replica's handshake is made to fail), so
   the master acknowledges writes no replica has, as when a replica is partitioned away; without it,
   the replica is in sync up to what loopback replication has not delivered yet;
3. once the replica reports itself master, the killed node is started again (as a supervisor would;
   not before: an empty master back before the failover would keep its slots). It rejoins as the new
   master's replica after a full sync (Redis 7.0's diskless sync first waits
   `repl-diskless-sync-delay`, 5 s). Until then the promoted master has no replica: a release
   acknowledged meanwhile (`acked w/o replica`) was not acknowledged by a replica of that shard;
4. the killed shard is back when a release begun after the process was gone, and writing to that
   shard (a key in one of its 2 buckets, or the control slot `{fw}` if it held it), is acknowledged:
   releases touching only the other shards may go on, and redis-py retries inside one release() call
   for seconds. Right then, before releasing anything else, the writer reads the version of every
   key (HGET on its bucket's hash through redis.cluster.RedisCluster): an acknowledged batch is
   *lost* if one of its keys holds an older version than the batch's, or none. This is the figure
   that answers the question: the batches released after the failover rewrite every key within 777
   batches, which hides a loss from the same check at the end (reported too);
5. the writer goes on for `--after` seconds (and until the killed node is back as a synced replica),
   then stops.

Prints a table and writes bench/results/redis_durability.json (redis_durability-cut-link.json with
--cut-link-ms). Loopback only; bounded (about 25 s per mode, `--timeout` for the whole run). Stops
(by pid) only the redis-server processes it started, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from bench import redis_procs
from bench.redis_procs import NODE_TIMEOUT_MS, Cluster, info_of
from bench.report import machine_info, write_json
from cdc.effects import EffectError, RedisRelease
from cdc.model import Batch
from contract.redis_buckets import Layout
from contract.redis_layout import WATERMARK

BUCKETS = 6
WAIT_TIMEOUT_MS = 200
RETRY_PAUSE_S = 0.05


RECOVERY_TIMEOUT_S = 25.0   # kill -> a release acknowledged again
POLL_S = 0.02               # the main thread's poll: promotion and the killed node back, each seen within it
LAYOUT = Layout(BUCKETS)
KEYS = tuple(f"k{n}" for n in range(500)) + tuple(f"j{n}" for n in range(777))

Acked = tuple[str, tuple[str, ...]]  # (version, keys) of an acknowledged batch


# ------------------------------------------------------------------------------------------- pure


def batch_of(i: int) -> Batch:
    return Batch(version=f"{i:016x}", tx_id=str(i), commit_ts_ms=i, keys=(f"k{i % 500}", f"j{i % 777}"))


def lost_versions(acked: Sequence[Acked], versions: Mapping[str, str | None]) -> list[str]:
    """The acknowledged batches one of whose keys now holds an older version than the batch's, or
    none: later batches may have raised a key (fixed-width hex versions compare as strings)."""
    lost = []
    for version, keys in acked:
        if any((found := versions.get(key)) is None or found < version for key in keys):
            lost.append(version)
    return lost


def writes_to(keys: Sequence[str], buckets: frozenset[int], control: bool) -> bool:
    """Whether a release of `keys` writes to the shard holding `buckets` (and the control slot, if
    `control`): every release writes its control call to `{fw}`."""
    return control or any(LAYOUT.bucket_of(key) in buckets for key in keys)


def per_s(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def table(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per mode: the figures the benchmark answers with."""
    head = (f"{'mode':>4} | {'acked':>7} | {'lost at failover':>16} | {'lost at end':>11} | {'rel/s before':>12} | "
            f"{'kill->promoted':>14} | {'kill->1st ack':>13} | {'kill->replica back':>18} | "
            f"{'acked w/o replica':>17} | {'rel/s after':>11} | {'errors':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(f"{r['mode']:>4} | {r['acknowledged']:>7} | {r['lost_at_failover']:>16} | "
                     f"{r['lost_at_end']:>11} | {r['releases_per_s_before_kill']:>12} | "
                     f"{_secs(r['kill_to_promotion_s']):>14} | {_secs(r['kill_to_first_ack_s']):>13} | "
                     f"{_secs(r['kill_to_rejoined_s']):>18} | "
                     f"{r['acknowledged_while_promoted_master_had_no_replica']:>17} | "
                     f"{r['releases_per_s_after_recovery']:>11} | {r['errors_after_kill']:>6}")
    return lines


@contextmanager
def cluster_of_our_own() -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="fw-durability-") as tmp, redis_procs.cluster(Path(tmp)) as found:
        yield found


def read_versions(cluster: Cluster, keys: Sequence[str]) -> dict[str, str | None]:
    """Each key's version, HGET on its bucket's hash, through a fresh cluster client (retried while
    the cluster settles)."""
    deadline = time.monotonic() + 10
    while True:
        client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p)  # type: ignore[no-untyped-call]
                                             for p in cluster.alive()], socket_timeout=5)
        try:
            pipe = client.pipeline()  # type: ignore[no-untyped-call]
            for key in keys:
                pipe.hget(LAYOUT.versions(LAYOUT.bucket_of(key)), key)
            return {k: (v.decode() if isinstance(v, bytes) else None) for k, v in zip(keys, pipe.execute(),
                                                                                         strict=True)}
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            client.close()



# ------------------------------------------------------------------------------------------ writer


# mode -> (wait_replicas, how the acknowledgements are checked)
MODES: dict[str, tuple[int, str]] = {
    "0": (0, "no WAIT"),
    "1": (1, "cdc.effects.RedisRelease: WAIT on each master written, on the connection that wrote"),
}


def releaser(mode: str, url: str) -> Callable[[], RedisRelease]:
    wait, _ = MODES[mode]
    return lambda: RedisRelease(url, buckets=BUCKETS, wait_replicas=wait, wait_timeout_ms=WAIT_TIMEOUT_MS)


class Writer(threading.Thread):
    """Releases batch after batch, retrying a failed one; notes what was acknowledged and when. At the
    first acknowledgement after the kill of a batch that wrote to the killed shard, it reads every key's
    version before going on."""

    def __init__(self, make_release: Callable[[], RedisRelease],
                 read_versions: Callable[[Sequence[str]], dict[str, str | None]]) -> None:
        super().__init__(name="releases", daemon=True)
        self.make_release = make_release
        self.read_versions = read_versions
        self.stop = threading.Event()
        self.acked: list[Acked] = []
        self.acked_at: list[float] = []
        self.acked_started: list[float] = []  # when the release call of each acknowledged batch began
        self.started_at = 0.0
        self.killed_at: float | None = None  # set by the main thread just before the SIGKILL
        self.dead_at: float | None = None    # set by the main thread once the killed process is gone
        self.shard: tuple[frozenset[int], bool] = (frozenset(), False)  # the killed shard's buckets, has {fw}
        self.errors_before_kill = 0
        self.errors_after_kill = 0
        self.first_error: str = ""
        self.outage_at: float | None = None   # first failed release after the kill
        self.recovered_at: float | None = None  # first acknowledged release after the kill on the killed shard
        self.snapshot: dict[str, str | None] = {}
        self.snapshot_acked = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            release = self.make_release()
            try:
                self._loop(release)
            finally:
                release.close()
        except BaseException as exc:  # reported by the main thread
            self.failure = exc

    def _loop(self, release: RedisRelease) -> None:
        i = 1
        self.started_at = time.monotonic()
        while not self.stop.is_set():
            b = batch_of(i)
            started = time.monotonic()
            try:
                release.release([b])
            except EffectError as exc:
                if self.killed_at is None:
                    self.errors_before_kill += 1
                else:
                    self.errors_after_kill += 1
                    if self.outage_at is None:
                        self.outage_at, self.first_error = time.monotonic(), str(exc)
                self.stop.wait(RETRY_PAUSE_S)
                continue
            now = time.monotonic()
            self.acked.append((b.version, b.keys))
            self.acked_at.append(now)
            self.acked_started.append(started)
            dead_at = self.dead_at  # a release begun earlier may have been acknowledged by the killed master
            if (self.recovered_at is None and dead_at is not None and started > dead_at
                    and writes_to(b.keys, *self.shard)):
                self.recovered_at = now
                self.snapshot = self.read_versions(KEYS)
                self.snapshot_acked = len(self.acked)
            i += 1


# -------------------------------------------------------------------------------------------- runs


def _holds(check: Callable[[], bool]) -> bool:
    try:
        return check()
    except redis.RedisError:
        return False


def _promoted_has_replica(port: int) -> bool:
    """The promoted master's own view: a replica online (what WAIT counts)."""
    info = info_of(port, "replication")
    return info["role"] == "master" and any(isinstance(v, dict) and v.get("state") == "online"
                                            for k, v in info.items() if k.startswith("slave"))


def cut_link(master: int, replica: int) -> None:
    """Break the replica's link to its master and keep it from coming back: the replica's handshake now
    sends AUTH with a password the master does not have. From here the master acknowledges writes that
    no replica holds (a network partition of the replica, on loopback)."""
    redis.Redis(port=replica).config_set("masterauth", "freshwire-bench-cut-link")
    redis.Redis(port=master).execute_command("CLIENT KILL TYPE replica")  # type: ignore[no-untyped-call]
    deadline = time.monotonic() + 5
    while info_of(replica, "replication").get("master_link_status") == "up":
        if time.monotonic() > deadline:
            raise RuntimeError("the replica's link did not go down")
        time.sleep(0.005)


def run_mode(mode: str, before_s: float, after_s: float, cut_link_ms: int) -> dict[str, Any]:
    with cluster_of_our_own() as cluster:
        ready_at = time.monotonic()
        victim = cluster.owner_of(LAYOUT.versions(0))
        shard = (frozenset(b for b in range(BUCKETS) if cluster.owner_of(LAYOUT.versions(b)) == victim),
                 cluster.owner_of(WATERMARK) == victim)
        replica = cluster.replica_of(victim)
        writer = Writer(releaser(mode, cluster.url), lambda keys: read_versions(cluster, keys))
        writer.start()
        cut_at = promoted_at = restarted_at = rejoined_at = None
        try:
            time.sleep(before_s)
            if cut_link_ms:
                cut_link(victim, replica)
                cut_at = time.monotonic()
                time.sleep(cut_link_ms / 1000)
            killed_at = time.monotonic()
            writer.shard, writer.killed_at = shard, killed_at
            cluster.kill(victim)
            writer.dead_at = time.monotonic()
            end = killed_at + RECOVERY_TIMEOUT_S
            while writer.is_alive() and time.monotonic() < end:
                if promoted_at is None and _holds(lambda: info_of(replica, "replication")["role"] == "master"):
                    promoted_at = time.monotonic()
                    cluster.restart(victim)  # only now: an empty master back before the failover keeps its slots
                    restarted_at = time.monotonic()
                elif (restarted_at is not None and rejoined_at is None
                      and _holds(lambda: _promoted_has_replica(replica))):
                    rejoined_at = time.monotonic()
                if writer.recovered_at is not None:  # and the killed node back as a replica (bounded)
                    end = max(writer.recovered_at + after_s, rejoined_at or killed_at + RECOVERY_TIMEOUT_S)
                time.sleep(POLL_S)
        finally:
            writer.stop.set()
            writer.join(30)
        if writer.failure is not None:
            raise RuntimeError(f"the writer failed: {writer.failure!r}") from writer.failure
        stopped_at = time.monotonic()
        final = read_versions(cluster, KEYS)

    def since_kill(t: float | None) -> float | None:
        return None if t is None else round(t - killed_at, 3)

    measured_until = cut_at or killed_at
    before = sum(1 for t in writer.acked_at if t < measured_until)
    in_cut = sum(1 for began, t in zip(writer.acked_started, writer.acked_at, strict=True)
                 if cut_at is not None and began > cut_at and t < killed_at)
    recovered = writer.recovered_at
    after = sum(1 for t in writer.acked_at if recovered is not None and t > recovered)
    lost_failover = lost_versions(writer.acked[:writer.snapshot_acked], writer.snapshot) if recovered else []
    lost_end = lost_versions(writer.acked, final)
    unreplicated = sum(1 for t in writer.acked_at if promoted_at is not None and t > promoted_at
                       and (rejoined_at is None or t < rejoined_at - POLL_S))
    return {
        "mode": mode,
        "wait_replicas": MODES[mode][0],
        "wait_check": MODES[mode][1],
        "acknowledged": len(writer.acked),
        "acknowledged_while_promoted_master_had_no_replica": unreplicated,
        "acknowledged_before_kill": before,
        "lost_at_failover": len(lost_failover) if recovered else None,
        "lost_at_failover_versions": lost_failover[:50],
        "lost_at_end": len(lost_end),
        "lost_at_end_versions": lost_end[:50],
        "releases_per_s_before_kill": per_s(before, measured_until - writer.started_at),
        "cut_link_ms": cut_link_ms,
        "acknowledged_while_link_cut": in_cut,
        "releases_per_s_after_recovery": per_s(after, stopped_at - recovered) if recovered else 0.0,
        "killed_shard_buckets": sorted(shard[0]),
        "killed_shard_has_control_slot": shard[1],
        "kill_to_first_error_s": since_kill(writer.outage_at),
        "kill_to_promotion_s": since_kill(promoted_at),
        "kill_to_restart_s": since_kill(restarted_at),
        "kill_to_rejoined_s": since_kill(rejoined_at),
        "kill_to_first_ack_s": since_kill(recovered),
        "errors_before_kill": writer.errors_before_kill,
        "errors_after_kill": writer.errors_after_kill,
        "first_error": writer.first_error,
        "ready_to_kill_s": round(killed_at - ready_at, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="0,1",
                        help="one run each: 0 (no WAIT), 1 (wait_replicas=1 through RedisRelease)")
    parser.add_argument("--before", type=float, default=3.0, help="seconds of releases before the SIGKILL")
    parser.add_argument("--after", type=float, default=8.0, help="seconds of releases after the outage")
    parser.add_argument("--cut-link-ms", type=int, default=0,
                        help="break the killed master's replica link this long before the kill (0: plain SIGKILL)")
    parser.add_argument("--out", default="",
                        help="results name (bench/results/<out>.json); default redis_durability, or "
                             "redis_durability-cut-link with --cut-link-ms")
    parser.add_argument("--timeout", type=int, default=180, help="hard limit for the whole run, seconds")
    args = parser.parse_args()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally: our processes stop

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGALRM, interrupted)
    signal.alarm(args.timeout)
    results = []
    try:
        for mode in args.modes.split(","):
            if mode not in MODES:
                parser.error(f"--modes: each of {list(MODES)}")
            print(f"mode {mode} ({MODES[mode][1]}): starting a 3+3 Redis Cluster", flush=True)
            results.append(run_mode(mode, args.before, args.after, args.cut_link_ms))
            r = results[-1]
            print(f"  acked {r['acknowledged']}, lost at failover {r['lost_at_failover']}, at end "
                  f"{r['lost_at_end']}; kill -> promoted {r['kill_to_promotion_s']} s, -> first ack "
                  f"{r['kill_to_first_ack_s']} s, -> killed node back as a synced replica {r['kill_to_rejoined_s']} s; "
                  f"acked meanwhile {r['acknowledged_while_promoted_master_had_no_replica']}", flush=True)
    finally:
        signal.alarm(0)
    print()
    print("\n".join(table(results)))
    write_json(args.out or ("redis_durability-cut-link" if args.cut_link_ms else "redis_durability"), {
        "machine": machine_info(),
        "settings": {**vars(args), "buckets": BUCKETS, "wait_timeout_ms": WAIT_TIMEOUT_MS,
                     "retry_pause_s": RETRY_PAUSE_S, "cluster_node_timeout_ms": NODE_TIMEOUT_MS,
                     "nodes": "3 masters + 3 replicas, appendonly no, save ''",
                     "redis": subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.strip()},
        "modes": results,
    })


if __name__ == "__main__":
    main()
