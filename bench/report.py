"""What every benchmark shares: machine facts, percentiles, the JSON result file and the PNG plot.

Each benchmark writes bench/results/<name>.json ({"machine", "settings", ...its own sections}) and
bench/results/<name>.png. Plots use matplotlib's non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU model and count, memory, kernel, Python: enough to compare two runs' machines."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_mb": mem_kb // 1024,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": _git_head()}


def _git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, p50, p90, p99, max and mean of `values` (zeros when empty)."""
    if not values:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {"count": len(ordered), "p50": round(q[49], 3), "p90": round(q[89], 3), "p99": round(q[98], 3),
            "max": round(ordered[-1], 3), "mean": round(statistics.fmean(ordered), 3)}


def positive_rate(value: str) -> float:
    """Pure: a rate argument (events or transactions per second), a finite number above 0."""
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate per second, a number: {value!r}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise argparse.ArgumentTypeError(f"expected a rate per second above 0: {value!r}")
    return rate


def rate_list(value: str) -> list[float]:
    """Pure: comma-separated rates per second (--rates), each above 0."""
    return [positive_rate(part) for part in value.split(",")]


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def png_path(name: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR / f"{name}.png"


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported lazily: only benchmarks need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, name: str) -> Path:
    path = png_path(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", flush=True)
    return path


def profile_start(pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """Attach py-spy (sampling, 200 Hz, idle included) to `pid` until profile_stop(); None without py-spy."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        return None
    raw = RESULTS_DIR / f"{name}-profile.raw"
    return subprocess.Popen([str(py_spy), "record", "--idle", "-r", "200", "-f", "raw", "-o", str(raw),
                             "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def profile_stop(proc: subprocess.Popen[bytes] | None, name: str, top: int = 20) -> list[dict[str, Any]]:
    """Stop py-spy (SIGINT makes it write its file) and summarise: the functions with the largest
    inclusive share of samples."""
    if proc is None:
        return []
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    raw = RESULTS_DIR / f"{name}-profile.raw"
    if not raw.exists():
        return []
    shares = profile_shares(raw.read_text().splitlines())
    return shares[:top]


def profile_shares(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Pure: py-spy raw ("frame;frame;... count") lines -> [{function, inclusive %, self %}], largest first."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    ranked = sorted(inclusive.items(), key=lambda item: -item[1])
    if not total:
        return []
    return [{"function": f, "inclusive_pct": round(100 * n / total, 1),
             "self_pct": round(100 * own.get(f, 0) / total, 1)} for f, n in ranked]
