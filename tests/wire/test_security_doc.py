"""docs/security.md names a test for every attack: each name must be a test that exists."""

from __future__ import annotations

import ast

from tests.support import pysource
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tests_defined() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        tree = pysource.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        found[path.relative_to(ROOT).as_posix()] = names
    return found


def test_every_test_named_in_the_threat_model_exists():
    doc = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    defined = _tests_defined()
    all_names = set().union(*defined.values())
    missing = []
    for m in re.finditer(r"`(tests/[\w/]+\.py)(?:::(test_\w+))?`|`(test_\w+)`", doc):
        path, name, bare = m.groups()
        if path and path not in defined:
            missing.append(path)
        elif path and name and name not in defined[path]:
            missing.append(f"{path}::{name}")
        elif bare and bare not in all_names:
            missing.append(bare)
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
    assert len(re.findall(r"test_\w+", doc)) >= 40  # the threat model cites its tests
