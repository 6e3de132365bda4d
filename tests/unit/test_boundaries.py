"""Package boundaries (README "Layout"): the shared contract imports no tier, the gateway and the
clients import the contract but never the cdc consumer, and the cdc consumer never imports a gateway."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_packages(package: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found.update((str(path.relative_to(ROOT)), name.split(".")[0]) for name in names)
    return found


@pytest.mark.parametrize(("package", "forbidden"), [
    ("contract", {"cdc", "gateway", "connectors", "clients", "demo", "bench"}),
    ("gateway", {"cdc", "connectors", "demo", "bench"}),
    ("clients", {"cdc", "connectors", "demo", "bench"}),
    ("cdc", {"gateway", "connectors", "clients", "demo", "bench"}),
])
def test_a_package_imports_only_the_tiers_upstream_of_it(package: str, forbidden: set[str]) -> None:
    crossings = sorted((path, name) for path, name in _imported_packages(package) if name in forbidden)
    assert crossings == []
