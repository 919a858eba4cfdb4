"""The previous release's databases, frozen: the archive's index and the monitor's database as the
code of a landed commit (:data:`RELEASE`) creates and fills them, dumped as SQL under
``tests/fixtures/release-COMMIT/`` for SQLite (Python's ``iterdump``) and PostgreSQL (``pg_dump
--inserts``). The upgrade tests load a dump into a new database and run today's `archive db
upgrade` / `monitor db upgrade` on it: an edited or renumbered old migration, or one that loses
rows, fails them (the schema after the upgrade must equal the schema built from empty).

The dumps are made by the old code itself: ``git archive COMMIT`` into a temporary directory, then
:func:`_seed` runs there (its own ``agent``, ``tests.support`` and ``tools`` first on the path):
one station enrolled, its checkpoint, two items archived and a third half sent, a refusal; the
monitor's ingest of signed status, health, ratio and alarms of three devices, and a roster.

Regenerate after a release lands (then set RELEASE to it)::

    .venv/bin/python -m tests.support.previous_release 143cb1c
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import psycopg

from agent.common.pg import is_url
from tests.support.custody import pg_database

RELEASE = "143cb1c"  # the last landed release before the upgrade commands were tested from a real one
REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
PARTS = ("archive", "monitor")


def fixture(part: str, dialect: str, release: str = RELEASE) -> Path:
    """tests/fixtures/release-COMMIT/PART.DIALECT.sql (PART archive or monitor; DIALECT sqlite or
    postgresql)."""
    return FIXTURES / f"release-{release}" / f"{part}.{dialect}.sql"


def migrations_of(release: str = RELEASE) -> dict[str, list[str]]:
    """The migration names the release had applied, per part (recorded beside the dumps)."""
    return json.loads((FIXTURES / f"release-{release}" / "release.json").read_text())["migrations"]


def load(dump: Path, target: str | Path) -> None:
    """A dump into a new SQLite file (a path) or an empty PostgreSQL database (a URL)."""
    sql = dump.read_text(encoding="utf-8")
    if is_url(str(target)):
        with psycopg.connect(str(target), autocommit=True) as con:
            con.execute(sql)  # no parameters: one simple query, every statement of the dump
        return
    con = sqlite3.connect(str(target))
    try:
        con.executescript(sql)
    finally:
        con.close()


def _sqlite(path: Path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    return con


def tables(target: str | Path) -> list[str]:
    if is_url(str(target)):
        with psycopg.connect(str(target)) as con:
            return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE "
                                              "table_schema = 'public' ORDER BY table_name")]
    con = _sqlite(Path(target))
    try:
        return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                          "'sqlite_%' ORDER BY name")]
    finally:
        con.close()


def rows(target: str | Path) -> dict[str, list[dict]]:
    """Every row of every table, in a stable order (for "no row lost or changed")."""
    out = {}
    if is_url(str(target)):
        with psycopg.connect(str(target), row_factory=psycopg.rows.dict_row) as con:
            for t in tables(target):
                out[t] = sorted((dict(r) for r in con.execute(f'SELECT * FROM "{t}"')), key=repr)
        return out
    con = _sqlite(Path(target))
    try:
        for t in tables(target):
            out[t] = sorted((dict(r) for r in con.execute(f'SELECT * FROM "{t}"')), key=repr)
    finally:
        con.close()
    return out


def schema(target: str | Path) -> dict:
    """Tables with their columns in order (name, type, null, default), indexes and constraints."""
    if is_url(str(target)):
        with psycopg.connect(str(target)) as con:
            cols: dict[str, list] = {}
            for r in con.execute("SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
                                 "FROM information_schema.columns WHERE table_schema = 'public' "
                                 "ORDER BY table_name, ordinal_position"):
                cols.setdefault(r[0], []).append(list(r[1:]))
            idx = sorted(list(r) for r in con.execute("SELECT tablename, indexname, indexdef FROM pg_indexes "
                                                      "WHERE schemaname = 'public'"))
            cons = sorted(list(r) for r in con.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = 'public'::regnamespace"))
        return {"columns": cols, "indexes": idx, "constraints": cons}
    con = _sqlite(Path(target))
    try:
        objs = sorted(list(r) for r in con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                                   "WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        con.close()
    return {"objects": objs}


def check_upgrade(part: str, target: str | Path, upgrade: Callable[[str | Path], dict], known: list[str],
                  build: Callable[[str | Path], None]) -> dict:
    """Load the release's dump of ``part`` into ``target`` (a new SQLite file or an empty
    PostgreSQL database), run ``upgrade(target)`` (the command with --json; its answer), and check
    what a technician upgrading would: the migrations the release had are kept (none renamed,
    dropped or reordered) and only the newer ones applied; every row of the release is there with
    its values; the schema is the one an empty database gets from ``build(empty)`` (the code's own
    migrations, in this process). Returns the command's answer."""
    dialect = "postgresql" if is_url(str(target)) else "sqlite"
    load(fixture(part, dialect), target)
    had = migrations_of()[part]
    before = rows(target)
    assert sorted(r["name"] for r in before["migrations"]) == had, before["migrations"]
    assert known[:len(had)] == had, f"a migration of release {RELEASE} was renamed, dropped or moved: {had} vs {known}"
    out = upgrade(target)
    assert (out["was"], out["applied_now"], out["applied"]) == (had, known[len(had):], known), out
    after = rows(target)
    for table, old in before.items():
        cols = list(old[0]) if old else []
        new = sorted(({c: r[c] for c in cols} for r in after[table]), key=repr)
        if table == "migrations":
            assert [r for r in old if r not in new] == [], table
        else:
            assert new == old, f"{table}: rows of release {RELEASE} changed or lost by the upgrade"
    assert sum(map(len, before.values())) > len(had), "the release's dump has rows"
    with contextlib.ExitStack() as stack:
        if dialect == "postgresql":
            empty = stack.enter_context(pg_database())
        else:
            empty = Path(target).with_name("empty-" + Path(target).name)
        build(empty)
        assert schema(target) == schema(empty), "the upgraded schema differs from the one built from empty"
    return out


# --- made by the old code -----------------------------------------------------------------------
def _seed(work: str, archive_db: str, monitor_db: str) -> None:
    """Runs in the old release's tree: fills ``archive_db`` (a SQLite path or a URL) and
    ``monitor_db`` through that release's own code."""
    import json as _json
    import time as _time
    from pathlib import Path as _Path

    from agent.archive.storage import ArchiveStore
    from agent.evidence import manifest as mf
    from agent.monitor.enrolment import Enrolment
    from agent.monitor.ingest import Ingest, IngestSettings
    from agent.monitor.state import open_monitor_db
    from agent.wire import checkpoint, protocol as P
    from tests.support.uplink import UNIT, add_items, agent_config, open_store
    from tools.fleet_sim import ALARMS, SimDevice

    w = _Path(work)
    store = open_store(agent_config(w, 1, evidence__block_size=4096))
    ids = add_items(store, w, [10_000, 3_000, 9_000])
    db = None if archive_db.endswith("archive.db") else archive_db
    st = ArchiveStore(w / "archive", db=db, receiver="rx-1")
    dev = st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT, actor="release-fixture")
    dev = st.registry.device("dock-0001")
    st.on_checkpoint("dock-0001", checkpoint.make(store))
    for n, item in enumerate(ids):
        d = store.item_dir(item)
        m = _json.loads((d / mf.MANIFEST).read_bytes())
        ans = st.on_manifest(dev, item, (d / mf.MANIFEST).read_bytes(),
                             dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))
        assert ans.status == "receiving", ans
        for k, s in enumerate(m["segments"]):
            if n == 2 and k > 0:
                break  # the third item half sent: a transfer under way, byte ranges held
            name = m["files"][s["file"]]["name"]
            with open(d / mf.FILES_DIR / name, "rb") as fh:
                fh.seek(s["offset"])
                block = fh.read(s["size"])
            assert st.on_chunk(dev, item, block, dict(P.chunk_props(name, s["offset"], block))).status == "ok"
        if n < 2:
            assert st.on_finish(dev, item, P.finish_payload(m["files"], [])).status == "stored"
    st.note_refusal("dock-0001", "x1", "bad manifest: reason A")
    st.note_refusal("dock-0001", "x1", "bad manifest: reason A")
    st.close()

    devs = [SimDevice("dock-m1", "33010011", "一所", "dock"), SimDevice("room-m1", "33010011", "一所", "room"),
            SimDevice("dock-m2", "33010012", "二所", "dock")]
    mdb = open_monitor_db(monitor_db)
    ing = Ingest(mdb, IngestSettings(), Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in devs))
    t0 = _time.time() - 3600

    def say(d, kind, body, at, sub=None):
        topic = f"edge/dev/{d.id}/{kind}" + (f"/{sub}" if sub else "")
        assert ing.handle(topic, d.seal(topic, _json.dumps(body).encode()), retained=False, now=at) == "accepted"

    d1 = devs[0]
    for d in devs:
        say(d, "status", d.status("online"), t0)
        say(d, "health", d.health(), t0 + 1)
    say(d1, "ratio", d1.ratio(10, 3), t0 + 2)
    d1.alarm = ALARMS[1]
    since = d1.status("online")["ts"]
    say(d1, "alarm", d1.alarm_payload(True, since), t0 + 100, d1.alarm_key())
    say(d1, "alarm", d1.alarm_payload(False, since), t0 + 200, d1.alarm_key())
    say(d1, "status", d1.status("offline"), t0 + 300)
    ing.flush()
    mdb.import_roster([{"unit_code": "33010011", "officer_id": "p1", "name": "张三"},
                       {"unit_code": "33010012", "unit_name": "二所", "officers": 7}], "release-fixture")
    mdb.close()


def _pg_dump(url: str) -> str:
    out = subprocess.run(["pg_dump", "--no-owner", "--no-privileges", "--no-comments", "--inserts", "-d", url],
                         check=True, capture_output=True, text=True).stdout
    # psql's meta-commands (\restrict KEY, \unrestrict KEY in pg_dump >= 15.14) are not SQL
    return "".join(ln for ln in out.splitlines(keepends=True) if not ln.startswith("\\"))


def _sqlite_dump(path: Path) -> str:
    con = sqlite3.connect(str(path))
    try:
        return "\n".join(con.iterdump()) + "\n"
    finally:
        con.close()


def generate(release: str = RELEASE) -> Path:
    """Make tests/fixtures/release-RELEASE/ from the code at RELEASE (git archive)."""
    out = FIXTURES / f"release-{release}"
    out.mkdir(parents=True, exist_ok=True)
    src = "import sys\nsys.path.insert(0, '.')\n" + inspect.getsource(_seed) + "\n_seed(*sys.argv[1:])\n"
    names: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="edge-release-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", release], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=tar, check=True)
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
        for dialect in ("sqlite", "postgresql"):
            work = Path(tmp) / dialect
            work.mkdir()
            with pg_database() as a_url, pg_database() as m_url:
                a_db, m_db = ((str(work / "archive" / "archive.db"), str(work / "monitor.db"))
                              if dialect == "sqlite" else (a_url, m_url))
                check = subprocess.run([sys.executable, "-c", "import agent, sys; print(agent.__file__)"],
                                       cwd=tree, env=env, capture_output=True, text=True, check=True)
                assert check.stdout.startswith(str(tree)), check.stdout  # the old code, not this tree's
                subprocess.run([sys.executable, "-c", src, str(work), a_db, m_db], cwd=tree, env=env, check=True)
                for part, db in (("archive", a_db), ("monitor", m_db)):
                    text = _pg_dump(db) if dialect == "postgresql" else _sqlite_dump(Path(db))
                    header = (f"-- The {part} database as the code at commit {release} makes it ({dialect}), "
                              "made by tests/support/previous_release.py; do not edit.\n")
                    fixture(part, dialect, release).write_text(header + text, encoding="utf-8")
                    if dialect == "sqlite":
                        con = sqlite3.connect(db)
                        names[part] = [r[0] for r in con.execute("SELECT name FROM migrations ORDER BY name")]
                        con.close()
    (out / "release.json").write_text(json.dumps({"commit": release, "migrations": names}, indent=1) + "\n")
    return out


if __name__ == "__main__":
    print(generate(sys.argv[1] if len(sys.argv) > 1 else RELEASE))
