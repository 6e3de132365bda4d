"""The Next.js example (examples/nextjs) beside the stack: built with `next build` when its sources
changed, served by `next start` on a port of its own, reading from the replica and writing to the
primary (docs/nextjs.md).

    python -m connectors.nextjs        # `make nextjs`: against a running stack; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

from connectors import procs
from connectors.services import app_env, http_ok
from connectors.stack_settings import REPO, StackSettings, load_stack_settings

NEXT_DIR = REPO / "examples" / "nextjs"
NEXT_BIN = NEXT_DIR / "node_modules" / "next" / "dist" / "bin" / "next"
DEFAULT_PORT = 18091
BUILD_STAMP = NEXT_DIR / ".next" / "freshwire-source.sha256"
BUILD_TIMEOUT_S = 300
# What a build depends on: the app's sources and lock, and the two packages it installs from clients/.
SOURCES = [NEXT_DIR / "app", NEXT_DIR / "lib", NEXT_DIR / "next.config.mjs", NEXT_DIR / "tsconfig.json",
           NEXT_DIR / "package-lock.json", REPO / "clients" / "next", REPO / "clients" / "js" / "freshwire.js"]


SKIPPED = {"node_modules", "test", ".next"}


class NextjsError(RuntimeError):
    """The example could not be installed, built or started; the message says which step."""


def nextjs_port() -> int:
    raw = os.environ.get("FRESHWIRE_NEXTJS_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise NextjsError(f"FRESHWIRE_NEXTJS_PORT: a port number, not {raw!r}")
    return int(raw)


def source_digest() -> str:
    digest = hashlib.sha256()
    for root in SOURCES:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            relative = path.relative_to(REPO)
            if SKIPPED & set(relative.parts) or (path.name == "package-lock.json" and path.parent != NEXT_DIR):
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise NextjsError("node (>= 20.9) is not installed: connectors/install.sh installs it")
    return found


def build(force: bool = False) -> bool:
    """`next build` unless the last build was of these very sources; True if it built."""
    if not NEXT_BIN.exists():
        raise NextjsError(f"{NEXT_BIN} is missing: run connectors/install.sh (npm ci in examples/nextjs)")
    digest = source_digest()
    if not force and BUILD_STAMP.exists() and BUILD_STAMP.read_text().strip() == digest:
        return False
    result = subprocess.run([node(), str(NEXT_BIN), "build"], cwd=NEXT_DIR, capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT_S, env={**os.environ, "NEXT_TELEMETRY_DISABLED": "1"})
    if result.returncode != 0:
        raise NextjsError(f"next build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    BUILD_STAMP.write_text(digest + "\n")
    return True


def nextjs_env(s: StackSettings, control: bool = False) -> dict[str, str]:
    app = app_env(s)
    return {
        "NODE_ENV": "production",
        "NEXT_TELEMETRY_DISABLED": "1",
        "FRESHWIRE_WRITE_DSN": s.app_dsn,
        # Reading from a replica is only safe when releases wait for it (docs/consistency.md).
        "FRESHWIRE_READ_DSN": s.replica_dsn if s.with_replica and s.release_gating else s.app_dsn,
        "FRESHWIRE_GATEWAY_URL": s.gateway_url,
        "FRESHWIRE_GATEWAY_WS": f"{s.gateway_url.replace('http', 'ws', 1)}/ws",
        "FRESHWIRE_JWT_SECRET": app["FRESHWIRE_JWT_SECRET"],
        "FRESHWIRE_SINK_SECRET": os.environ.get("FRESHWIRE_SINK_SECRET", "freshwire-dev-sink-secret"),
        **({"FRESHWIRE_EXAMPLE_CONTROL": "1"} if control else {}),
    }


def nextjs_proc(s: StackSettings, port: int, name: str = "nextjs", control: bool = False) -> procs.Proc:
    """`next start` of the built example; ready once it renders board 1 (so the database answers too).
    `control` lets a page's `?wait=off` skip the wait: the browser test's control run."""
    return procs.Proc(
        name=name,
        port=port,
        argv=[node(), str(NEXT_BIN), "start", "-H", s.host, "-p", str(port)],
        env=nextjs_env(s, control),
        cwd=NEXT_DIR,
        log=s.logs_dir / f"{name}.log",
        ready=lambda: http_ok(f"http://{s.host}:{port}/boards/1"),
        ready_timeout_s=60,
    )


def stop(proc: procs.Proc, timeout_s: float = 10.0) -> None:
    """Stop the server started as `proc`, by its pid (Next renames its process to "next-server", so
    procs.stop, which checks the recorded program name, would not recognise it)."""
    pid = proc.pid
    if pid is None or not procs.alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while procs.alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if procs.alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=None, help=f"default FRESHWIRE_NEXTJS_PORT or {DEFAULT_PORT}")
    parser.add_argument("--build-only", action="store_true", help="`next build` if the sources changed, then exit")
    args = parser.parse_args(argv)
    try:
        built = build()
    except (NextjsError, subprocess.TimeoutExpired) as exc:
        print(exc, file=sys.stderr)
        return 1
    if built or args.build_only:
        print(f"  nextjs    {'built (next build)' if built else 'build is up to date'}", flush=True)
    if args.build_only:
        return 0
    s = load_stack_settings()
    port = args.port or nextjs_port()
    proc = nextjs_proc(s, port)
    pids = s.state_dir / "nextjs"
    procs.start(proc, pids)
    try:
        procs.wait_ready(proc)
        print(f"  nextjs    http://{s.host}:{port}/boards/1?user=ada  (open two windows; Ctrl-C stops it)", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while procs.alive(proc.pid or 0):
            time.sleep(0.5)
        print(f"  nextjs    exited:\n{procs.tail(proc.log)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except procs.StartError as exc:
        print(f"{exc}\n{exc.log_tail}", file=sys.stderr)
        return 1
    finally:
        stop(proc)


if __name__ == "__main__":
    sys.exit(main())
