"""pyproject.toml's package data names only files that exist (a pattern that matches nothing
ships nothing and hides a missing file)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_patterns_match_files():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    empty = [f"{pkg}: {pattern}" for pkg, patterns in setuptools.get("package-data", {}).items()
             for pattern in patterns if not list((ROOT / pkg.replace(".", "/")).glob(pattern))]
    assert not empty, f"package-data patterns that match no file: {empty}"
