"""The README's Python snippet, run as a user would: it prints the invalidation of a psql UPDATE."""

from __future__ import annotations

import re
import subprocess
import sys

from connectors.stack_settings import REPO, StackSettings


def test_readme_snippet_prints_the_invalidation(stack_settings: StackSettings) -> None:
    snippet = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert snippet is not None
    code = snippet.group(1)
    code = code.replace("18080", str(stack_settings.gateway_port)).replace("15432", str(stack_settings.pg_port))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert '"type":"subscribed"' in lines[0]
    assert '"type":"invalidate"' in lines[1] and '"card:2"' in lines[1] and '"board:1"' in lines[1]
