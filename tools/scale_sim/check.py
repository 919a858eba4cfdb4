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


def check_receipts(roots: list[Path], fleet: dict, urls: list[str | None], shards: bool = False) -> dict:
    """Every item the fleet produced is archived on its device with a receipt that verifies against
    the key of the enrolled receiver that stored it (ROOT/_archive/receivers/RID.pub; not the
    root's key: no receiver here signs with it) and names this device, the item, the sealed
    manifest and its files. Returns {"ok", "problems", "checked", "signed_by": {receiver: n}}."""
    import json

    from agent.evidence import keys
    from agent.store.store import Store
    from agent.evidence import manifest as mf
    from agent.wire.receipts import ArchiveTrust, ReceiptError
    from tools.scale_sim.fleet import device_config

    problems: list[str] = []
    signed_by: dict[str, int] = {}
    checked = 0
    devs = list(fleet.items())
    for k, root in enumerate(roots):
        mine = dict(d for i, d in enumerate(devs) if not shards or i % len(roots) == k)
        pubs = sorted((root / "_archive" / "receivers").glob("*.pub"))
        trust = ArchiveTrust.load(pubs)
        kid_of = {p.stem: keys.key_id(keys.load_public(p)) for p in pubs}
        idx = open_index(root, urls[k])
        try:
            stored_by = {r["item"]: r["receiver"] for r in idx.query("SELECT item, receiver FROM items")}
        finally:
            idx.close()
        for dev, d in mine.items():
            store = Store(device_config(Path(d["data_dir"]), dev, d.get("unit", "330100000000")))  # the ledger, through its owner
            try:
                rows = {r["id"]: r for r in store.items()}
            finally:
                store.close()
            for item in d["items"]:
                r = rows.get(item)
                if r is None or r["state"] != "archived":
                    problems.append(f"{item}: on {dev} in state {r['state'] if r else 'missing'}, not archived")
                    continue
                rc = json.loads(r["receipt"] or "{}")
                man = json.loads((Path(r["path"]) / mf.MANIFEST).read_bytes())
                try:
                    trust.check_receipt(rc, device=dev, item=item, nonce=rc.get("nonce"),
                                        manifest_hash=r["manifest_hash"],
                                        files=[{"name": f["name"], "size": f["size"], "hash": f["hash"]}
                                               for f in man["files"]])
                except ReceiptError as exc:
                    problems.append(f"{item}: receipt on {dev} does not verify against an enrolled receiver's key: {exc}")
                    continue
                rid = stored_by.get(item)
                if rc.get("key_id") != kid_of.get(rid):
                    problems.append(f"{item}: receipt signed by key {rc.get('key_id')}, stored by receiver {rid} "
                                    f"(key {kid_of.get(rid)})")
                    continue
                checked += 1
                signed_by[rid] = signed_by.get(rid, 0) + 1
    return {"ok": not problems, "problems": problems[:50], "checked": checked, "signed_by": signed_by}
