"""Retention plan benchmark: `archive retention plan` over an index of N stored items (issue 18:
the plan is decided from the index alone, so 100,000 items take seconds).

The index is filled directly (items, retention_facts, a few floors, custodian changes and holds,
the unit's signed policy with a proof-object rule): the plan reads no manifest, so none is written.
The figure is the wall time of one plan, and the same scaled to 100,000 items (target 10 s).

    python -m tools.bench.retention_plan [--items 100000] [--db postgresql://...] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

UNIT = "330100000000"
TARGET_S_PER_100K = 10.0


def fill(store, items: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    rows, facts, floors, changes = [], [], [], []
    for i in range(1, items + 1):
        dev, item = f"bench-{i % 50:04d}", f"bench-{i:07d}"
        case = f"杭司罚〔2026〕第{i % 997:04d}号"
        rows.append([dev, item, i, UNIT, case, f"{UNIT}/{case}/{item}", f"{i:064x}", f"{i:064x}", 1000, 0, now, "bench"])
        end = t0 + dt.timedelta(minutes=rnd.randrange(0, 365 * 24 * 60))
        mark, ev = int(rnd.random() < 0.1), int(rnd.random() < 0.03)
        proof = "当事人妨碍执法" if rnd.random() < 0.02 else "现场执法"
        facts.append([dev, item, end.isoformat(), mark, ev, proof])
        if ev:
            floors.append([dev, item, "evidence", "evidence mark", now])
        if i % 500 == 0:
            changes.append([dev, item, "raise", "important", "normal", "normal", "bench", "k", now, "bench", "{}", "s",
                            "applied"])
    store.db.fast_many("INSERT INTO items(device, item, seq, unit, case_number, path, manifest_hash, item_hash, size, "
                       "annotations, stored_at, receiver) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    store.db.fast_many("INSERT INTO retention_facts(device, item, capture_end, mark, evidence_mark, proof) "
                       "VALUES (?,?,?,?,?,?)", facts)
    store.db.fast_many("INSERT INTO retention_floor(device, item, class, why, at) VALUES (?,?,?,?,?)", floors)
    store.db.fast_many("INSERT INTO retention_changes(device, item, action, class, from_class, sealed_class, actor, "
                       "key_id, time, reason, record, sig, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", changes)
    holds = [[None, None, UNIT, f"杭司罚〔2026〕第{n:04d}号", "bench", "bench", now] for n in range(0, 997, 100)]
    holds += [[r[0], r[1], UNIT, None, "bench", "bench", now] for r in rows[::1000]]
    store.db.fast_many("INSERT INTO holds(device, item, unit, case_number, reason, placed_by, placed_at) "
                       "VALUES (?,?,?,?,?,?,?)", holds)


def run(items: int = 100_000, db: str | None = None, workdir: str | None = None) -> dict:
    from agent.archive import policy as apol
    from agent.archive.retention import Retention
    from agent.archive.storage import ArchiveStore
    from agent.wire import policy as wp

    base = Path(tempfile.mkdtemp(prefix="edge-bench-retention-", dir=workdir))
    store = None
    try:
        store = ArchiveStore(base / "archive", db=db)
        apol.new_key(store.root)
        apol.sign_next(store.root, UNIT, wp.content_from({"rules": {"retention": {
            "normal_days": 200, "important_days": 400, "evidence_proof_pattern": "妨碍执法"}}}))
        t = time.perf_counter()
        fill(store, items)
        fill_s = time.perf_counter() - t
        ret = Retention(store)
        t = time.perf_counter()
        plan = ret.plan()
        plan_s = time.perf_counter() - t
        per_100k = plan_s * 100_000 / items
        return {"items": items, "db": "postgresql" if db else "sqlite", "fill_s": round(fill_s, 2),
                "plan_s": round(plan_s, 3), "seconds_per_100k_items": round(per_100k, 2),
                "listed": len(plan["items"]), "due": plan["due"], "held": plan["held"], "permanent": plan["permanent"],
                "unreadable": len(plan["unreadable"]), "targets": {"seconds_per_100k_items": TARGET_S_PER_100K},
                "pass": per_100k <= TARGET_S_PER_100K and not plan["unreadable"]}
    finally:
        if store is not None:
            store.close()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--db", help="postgresql://... (default: SQLite in the temporary archive root)")
    ap.add_argument("--workdir")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(a.items, a.db, a.workdir)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"retention plan over {r['items']} items ({r['db']}): {r['plan_s']} s "
              f"({r['seconds_per_100k_items']} s per 100,000; target {TARGET_S_PER_100K:g}); listed {r['listed']}, "
              f"due {r['due']}, held {r['held']}, permanent {r['permanent']}")
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
