"""tests/ mirrors agent/: a newcomer finds the tests of a package in the folder of the same name."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
HELPERS = {"support", "faults", "fuzz", "fixtures"}  # helpers, long runs, frozen data; not a package's tests
EXTRA = {"drivers", "e2e", "tools"}              # below agent/, across packages, repository tools


def _folders() -> list[Path]:
    return sorted(p for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def test_every_test_folder_names_a_package_of_the_project():
    packages = {p.name for p in (ROOT / "agent").iterdir() if (p / "__init__.py").is_file()}
    assert "dock" in packages and "wire" in packages      # the agent's packages were found
    strays = [f.name for f in _folders() if f.name not in packages | EXTRA | HELPERS]
    assert not strays, f"tests/ folders that name no agent/ package: {strays} (allowed: {sorted(packages | EXTRA)})"


def test_no_test_file_at_the_top_of_tests():
    top = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not top, f"move these into tests/<package>/: {top}"


def test_mirror_folders_are_not_packages_and_names_are_unique():
    mirrors = [f for f in _folders() if f.name not in HELPERS]
    assert len(mirrors) >= 10
    packaged = [f.name for f in mirrors if (f / "__init__.py").exists()]
    assert not packaged, f"remove __init__.py from tests/{packaged} (tests/drivers would shadow drivers/)"
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    twice = sorted(n for n, k in names.items() if k > 1)
    assert not twice, f"test file names used twice (pytest imports by base name): {twice}"
