"""The check after every run: every item the fleet produced stored exactly once (index rows and
directories), every item and every unit's chain verifying."""

from __future__ import annotations

from pathlib import Path


def open_index(root: Path, db: str | None = None):
    """The archive's index through its interface (agent/archive/registry.py ``open_db``): ROOT/archive.db
    (SQLite) or the postgresql:// URL ``db``; read here, never migrated."""
    from agent.archive.registry import open_db

    return open_db(db, root, migrate=False)


def check_archive(root: Path, fleet: dict, verify: bool = True, db: str | None = None) -> dict:
    """Every expected item stored exactly once (index rows and directories) and verifying;
    every unit's chain verifying. Returns {"ok", "problems": [...], "stored", "verified"}."""
    from agent.evidence import keys
    from agent.evidence.verify import verify_chain, verify_item

    problems: list[str] = []
    idx = open_index(root, db)
    try:
        rows = {r["item"]: r["n"] for r in idx.query("SELECT item, count(*) AS n FROM items GROUP BY item")}
    finally:
        idx.close()
    dirs: dict[str, list[Path]] = {}
    for m in root.rglob("manifest.json"):
        rel = m.relative_to(root).parts
        if rel[0].startswith("_"):
            continue
        dirs.setdefault(m.parent.name, []).append(m.parent)
    expected = {i for d in fleet.values() for i in d["items"]}
    for item in sorted(expected):
        if rows.get(item) != 1:
            problems.append(f"{item}: {rows.get(item, 0)} rows in the archive's index")
        if len(dirs.get(item, [])) != 1:
            problems.append(f"{item}: {len(dirs.get(item, []))} directories in the archive")
    for item in sorted(set(rows) - expected):
        problems.append(f"{item}: stored but never produced")
    verified = 0
    if verify:
        ring = keys.KeyRing.from_paths(keys_dir=root / "keys")
        for item, ds in sorted(dirs.items()):
            for d in ds:
                try:
                    verify_item(d, ring)
                    verified += 1
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    problems.append(f"{item}: does not verify: {exc}")
        for unit in sorted({d["unit"] for d in fleet.values()}):
            if (root / unit).is_dir():
                try:
                    verify_chain(root / unit, ring)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"chain of unit {unit}: {exc}")
    return {"ok": not problems, "problems": problems[:50], "problem_count": len(problems),
            "stored": sum(1 for i in expected if rows.get(i) == 1), "verified": verified}
