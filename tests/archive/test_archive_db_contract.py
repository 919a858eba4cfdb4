"""One contract for the archive's index, run against both backends: SQLite (ROOT/archive.db) and
the real PostgreSQL on 127.0.0.1:5432 (each test creates its own database and drops it).

Enrolment, items (insert, find, list by unit and case), byte ranges held, receipts, quarantine,
the audit chain, checkpoints; schema migrations from empty, from the schema before the newest
migration and from the previous release's index as its own code made it (tests/fixtures); two
receivers finishing the same item store it once; and one item archived end to end over a real
broker by `archive serve --db postgresql://...`.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

from agent.archive.registry import MIGRATIONS, PG_MIGRATIONS, open_db, read_enrolment
from agent.archive.storage import ArchiveStore
from agent.common.pg import is_url
from agent.common.errors import EdgeError, VerifyError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_item
from agent.wire import checkpoint, protocol as P
from tests.support.custody import pg_database
from tests.support.previous_release import check_upgrade
from tests.support.uplink import (UNIT, META, add_items, agent_config, all_archived, archived_items, credentials,
                                  open_store, run, start_agent, start_archive, wait_for)


@pytest.fixture
def pg_url():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """None (ROOT/archive.db) or a postgresql:// URL of a fresh database."""
    if request.param == "sqlite":
        yield None
    else:
        yield request.getfixturevalue("pg_url")


def _edge(tmp_path: Path, block_size: int = 4096):
    store = open_store(agent_config(tmp_path, 1, evidence__block_size=block_size))
    return store


def _manifest(st: ArchiveStore, store, item: str) -> P.Answer:
    d = store.item_dir(item)
    return st.on_manifest(st.registry.device("dock-0001"), item, (d / mf.MANIFEST).read_bytes(),
                          dict(P.manifest_props((d / mf.SIGNATURE).read_bytes())))


def _chunks(st: ArchiveStore, store, item: str, only: int | None = None) -> None:
    d = store.item_dir(item)
    m = json.loads((d / mf.MANIFEST).read_bytes())
    dev = st.registry.device("dock-0001")
    for n, s in enumerate(m["segments"]):
        if only is not None and n != only:
            continue
        name = m["files"][s["file"]]["name"]
        with open(d / mf.FILES_DIR / name, "rb") as fh:
            fh.seek(s["offset"])
            block = fh.read(s["size"])
        assert st.on_chunk(dev, item, block, dict(P.chunk_props(name, s["offset"], block))).status == "ok"


def _finish(st: ArchiveStore, store, item: str) -> P.Answer:
    m = json.loads((store.item_dir(item) / mf.MANIFEST).read_bytes())
    return st.on_finish(st.registry.device("dock-0001"), item, P.finish_payload(m["files"], []))


def _archive(st: ArchiveStore, store, item: str) -> P.Answer:
    assert _manifest(st, store, item).status == "receiving"
    _chunks(st, store, item)
    return _finish(st, store, item)


def test_contract(backend, tmp_path):
    store = _edge(tmp_path)
    ids = add_items(store, tmp_path, [10_000, 2_000, 3_000])
    other = add_items(store, tmp_path, [1_000], case="B2026-0002")
    root = tmp_path / "archive"
    st = ArchiveStore(root, db=backend, receiver="rx-1")
    try:
        assert st.db.dialect == ("postgresql" if backend else "sqlite")
        # enrol: the row, the key file, the audit entry; a second key refused without --force
        rec = st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT, actor="t")
        assert st.registry.devices() == [{"id": "dock-0001", "unit": UNIT, "key_id": rec["key_id"],
                                          "enrolled_at": st.registry.device("dock-0001")["enrolled_at"]}]
        keys.generate(tmp_path / "o.key", tmp_path / "o.pub")
        with pytest.raises(EdgeError, match="use --force"):
            st.registry.enroll("dock-0001", (tmp_path / "o.pub").read_bytes(), UNIT)
        # checkpoints: 4 announced, none held; a higher one kept over a lower one
        assert st.on_checkpoint("dock-0001", checkpoint.make(store)).count == 4
        assert st.missing()[0]["missing"] == [1, 2, 3, 4]
        # byte ranges held: one block of item 1, then the query answers what is held
        assert _manifest(st, store, ids[0]).status == "receiving"
        _chunks(st, store, ids[0], only=1)
        q = st.on_query("dock-0001", ids[0])
        assert q.status == "receiving" and list(q.held.values()) == [[[4096, 8192]]], q.held
        _chunks(st, store, ids[0])
        fin = _finish(st, store, ids[0])
        # receipts: stored answers carry one, the query of a stored item the same item's
        assert fin.status == "stored" and fin.receipt["manifest_hash"], fin
        again = st.on_query("dock-0001", ids[0])
        assert again.status == "stored" and again.receipt["manifest_hash"] == fin.receipt["manifest_hash"]
        for i in ids[1:] + other:
            assert _archive(st, store, i).status == "stored"
        # a resent item: stored once, answered stored
        assert _manifest(st, store, ids[1]).status == "stored"
        # items: find, list by unit, by case
        assert st.db.one("SELECT seq, unit FROM items WHERE device = ? AND item = ?", ["dock-0001", ids[2]]) == \
            {"seq": 3, "unit": UNIT}
        assert [r["item"] for r in st.list_items(unit=UNIT)] == ids + other
        assert [r["item"] for r in st.list_items(case=META["case_number"])] == ids
        assert [r["item"] for r in st.list_items(case="B2026-0002")] == other
        assert st.find(ids[1])["item"] == ids[1] and st.show_item(ids[1])["archive"]["item"] == ids[1]
        assert st.missing()[0]["missing"] == []
        # quarantine: refusals recorded, repeats coalesced, notes_dropped counter
        st.note_refusal("dock-0001", "x1", "bad manifest: reason A")
        st.note_refusal("dock-0001", "x1", "bad manifest: reason A")
        q = st.quarantined()
        assert len(q) == 1 and q[0]["repeats"] == 1 and q[0]["path"] is None
        assert st.notes_dropped() == 0
        with st.db.atomic() as db:
            db.execute("INSERT INTO meta(key, value) VALUES ('notes_dropped', ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)", ["2"])
            db.execute("INSERT INTO meta(key, value) VALUES ('notes_dropped', ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = CAST(CAST(meta.value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)", ["3"])
        assert st.notes_dropped() == 5
        # audit chain: appended by enrol, archive, retrieval; verifies with the archive's key; an edit is found
        verifier = lambda data, sig: keys.verify_sig(keys.load_public(root / "_archive" / "archive.pub"), data, sig)  # noqa: E731
        n = st.audit.verify(verifier)
        actions = [e["action"] for e in st.audit.entries()]
        assert n == len(actions) and actions.count("archive") == 4 and "enroll" in actions and "retrieve" in actions
        with st.db.atomic() as db:
            db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
        with pytest.raises(VerifyError, match="entry 2 was edited"):
            st.audit.verify(verifier)
        # a transaction that fails leaves nothing behind
        with pytest.raises(RuntimeError):
            with st.db.atomic() as db:
                db.execute("DELETE FROM items")
                raise RuntimeError("stop")
        assert len(st.db.query("SELECT item FROM items")) == 4
    finally:
        st.close()
    # what is stored verifies from disk, once
    assert all(archived_items(root).get(i) == 1 for i in ids + other)
    ring = keys.KeyRing.from_paths(keys_dir=root / "keys")
    for m in root.rglob("manifest.json"):
        if not m.relative_to(root).parts[0].startswith("_"):
            verify_item(m.parent, ring)


def test_migrations_from_empty_and_from_the_one_before_the_newest(backend, tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    names = [n for n, _ in (PG_MIGRATIONS if backend else MIGRATIONS)]
    assert names == [n for n, _ in MIGRATIONS]  # the same versions on both backends
    # every migration but the newest, with rows in it (the newest applied onto rows; the release
    # as it really was: test_db_upgrade_from_the_previous_release)
    old = open_db(backend, root, upto=names[-2])
    assert old.applied() == names[:-1]
    with old.atomic() as db:
        db.execute("INSERT INTO devices(id, unit, key_id, pubkey, enrolled_at) VALUES (?,?,?,?,?)",
                   ["dock-0001", UNIT, "k1", "PEM", "2026-01-01T00:00:00+00:00"])
        db.execute("INSERT INTO quarantine(device, item, reason, at, path) VALUES (?,?,?,?,?)",
                   ["dock-0001", "i1", "refused", "2026-01-01T00:00:00+00:00", None])
        db.execute("INSERT INTO checkpoints(device, count, head, time, sig, received_at, annotations) "
                   "VALUES (?,?,?,?,?,?,?)", ["dock-0001", 7, "h", "t", "s", "r", 2])
        db.execute('INSERT INTO ranges(device, item, file, start, "end") VALUES (?,?,?,?,?)',
                   ["dock-0001", "i2", "a.mp4", 0, 1 << 40])
    old.close()
    # upgrade by the command; rows survive, the new columns have their defaults
    args = ["archive", "db", "upgrade", "--json"] + (["--db", backend] if backend else ["--root", str(root)])
    out = json.loads(run(args, check=True).stdout)
    assert out["applied_now"] == [names[-1]] and out["applied"] == names and out["was"] == names[:-1]
    again = json.loads(run(args, check=True).stdout)
    assert again["applied_now"] == [] and again["applied"] == names
    new = open_db(backend, root, migrate=False)
    try:
        assert new.one("SELECT unit FROM devices WHERE id = ?", ["dock-0001"]) == {"unit": UNIT}
        assert new.one("SELECT reason, repeats, last_at FROM quarantine") == \
            {"reason": "refused", "repeats": 0, "last_at": None}
        assert new.one("SELECT count, annotations FROM checkpoints") == {"count": 7, "annotations": 2}
        assert new.one('SELECT "end" FROM ranges') == {"end": 1 << 40}
    finally:
        new.close()
    # from empty: another root / database gets every migration at once (serve does this at start)
    empty = tmp_path / "empty"
    empty.mkdir()
    if backend is None:
        out = json.loads(run(["archive", "db", "upgrade", "--json", "--root", str(empty)], check=True).stdout)
        assert out["applied_now"] == names and out["dialect"] == "sqlite"


def test_db_upgrade_from_the_previous_release(backend, tmp_path):
    """`archive db upgrade` from the index as the last landed release made and filled it (its own
    code; tests/support/previous_release.py): migrations kept and only newer ones applied, every
    row kept, the schema as from empty; the items of that release are listed."""
    root = tmp_path / "archive"
    root.mkdir()

    def upgrade(target) -> dict:
        where = ["--db", str(target)] if is_url(str(target)) else ["--root", str(Path(target).parent)]
        return json.loads(run(["archive", "db", "upgrade", "--json", *where], check=True).stdout)

    check_upgrade("archive", backend or root / "archive.db", upgrade, names_of(PG_MIGRATIONS),
                  lambda empty: open_db(str(empty), root).close())
    listed = json.loads(run(["archive", "list", "--json", "--root", str(root), *(["--db", backend] if backend else [])],
                            check=True).stdout)
    assert [(r["device"], r["seq"]) for r in listed] == [("dock-0001", 1), ("dock-0001", 2)], listed


def test_migrations_from_an_empty_postgresql(pg_url, tmp_path):
    p = run(["archive", "db", "upgrade", "--db", pg_url])
    assert p.returncode == 0 and "postgresql" in p.stdout and names_of(PG_MIGRATIONS)[-1] in p.stdout, p.stderr
    p = run(["archive", "db", "upgrade", "--db", pg_url])
    assert p.returncode == 0 and "up to date" in p.stdout


def names_of(migrations):
    return [n for n, _ in migrations]


def test_bad_database_refused_clearly(tmp_path):
    root = tmp_path / "archive"
    root.mkdir()
    p = run(["archive", "db", "upgrade", "--db", "mysql://root@127.0.0.1/x", "--root", str(root)])
    assert p.returncode != 0 and "postgresql://" in p.stderr and "Traceback" not in p.stderr
    p = run(["archive", "db", "upgrade", "--db", "postgresql://postgres:secret@127.0.0.1:1/nope"])
    assert p.returncode != 0 and "cannot connect to the database" in p.stderr and "secret" not in p.stderr
    assert "Traceback" not in p.stderr
    p = run(["archive", "list", "--db", "postgresql://postgres@127.0.0.1:1/nope", "--root", str(root)])
    assert p.returncode != 0 and "数据库无法连接" in p.stderr and "Traceback" not in p.stderr
    assert not (root / "archive.db").exists()  # never fell back to SQLite
    from agent.config.archive import ArchiveConfig
    with pytest.raises(ValueError, match="postgresql://"):
        ArchiveConfig(db="mysql://x")
    assert ArchiveConfig(db="postgresql://a@b/c").db == "postgresql://a@b/c"


def test_two_receivers_finishing_the_same_item_store_it_once(backend, tmp_path):
    store = _edge(tmp_path)
    [item] = add_items(store, tmp_path, [20_000])
    root = tmp_path / "archive"
    a = ArchiveStore(root, db=backend, receiver="rx-a")
    b = ArchiveStore(root, db=backend, receiver="rx-b")
    try:
        a.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
        assert _manifest(a, store, item).status == "receiving"
        assert _manifest(b, store, item).status == "receiving"
        _chunks(a, store, item)
        gate = threading.Barrier(2)
        answers: dict[str, P.Answer] = {}

        def finish(st: ArchiveStore) -> None:
            gate.wait(10)
            answers[st.receiver] = _finish(st, store, item)

        threads = [threading.Thread(target=finish, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {k: v.status for k, v in answers.items()} == {"rx-a": "stored", "rx-b": "stored"}, answers
        assert answers["rx-a"].receipt["manifest_hash"] == answers["rx-b"].receipt["manifest_hash"]
        rows = a.db.query("SELECT receiver FROM items WHERE item = ?", [item])
        assert len(rows) == 1, rows
        archived = [e for e in a.audit.entries(action="archive")]
        assert len(archived) == 1 and archived[0]["actor"] == f"archive:{rows[0]['receiver']}"
        a.audit.verify()
    finally:
        a.close()
        b.close()
    assert archived_items(root) == {item: 1}


def test_end_to_end_archive_serve_on_postgresql(broker, pg_url, tmp_path):
    cfg = agent_config(tmp_path, broker.port, evidence__block_size=8192)
    store = open_store(cfg)
    ids = add_items(store, tmp_path, [50_000, 30_000])
    root = tmp_path / "archive"
    run(["archive", "enroll", "dock-0001", str(store.pub_path), "--unit", UNIT, "--root", str(root),
         "--db", pg_url, "--pin-to", str(store.data_dir)], check=True)
    store.close()
    assert not (root / "archive.db").exists()  # the index is in PostgreSQL only
    rx = start_archive(root, broker.port, tmp_path, extra=["--db", pg_url])
    agent = start_agent(cfg, tmp_path)
    try:
        wait_for(all_archived(cfg, ids), 60, "items archived", [rx, agent])
    finally:
        agent.stop()
        rx.stop()
    assert "index postgresql://postgres@127.0.0.1:5432/" in rx.text()
    assert not (root / "archive.db").exists()
    assert archived_items(root) == {i: 1 for i in ids}
    ring = keys.KeyRing.from_paths(keys_dir=root / "keys")
    for m in root.rglob("manifest.json"):
        if not m.relative_to(root).parts[0].startswith("_"):
            verify_item(m.parent, ring)
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT item, receiver FROM items ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ids and {r[1] for r in rows} == {"archive"}
    listed = json.loads(run(["archive", "list", "--json", "--root", str(root), "--db", pg_url], check=True).stdout)
    assert [r["item"] for r in listed] == ids
    v = run(["archive", "audit", "--verify", "--root", str(root), "--db", pg_url], check=True)
    assert "intact" in v.stdout


def test_monitor_reads_the_enrolment_from_postgresql(broker, pg_url, tmp_path):
    store = _edge(tmp_path)
    root = tmp_path / "archive"
    st = ArchiveStore(root, db=pg_url)
    try:
        assert read_enrolment(pg_url) == []
        rec = st.registry.enroll("dock-0001", store.pub_path.read_bytes(), UNIT)
    finally:
        st.close()
    rows = read_enrolment(pg_url)
    assert [(r["id"], r["unit"], r["key_id"]) for r in rows] == [("dock-0001", UNIT, rec["key_id"])]
    assert "BEGIN PUBLIC KEY" in rows[0]["pubkey"]
    with pytest.raises(EdgeError, match="cannot read the database postgresql://postgres:\\*\\*\\*@"):
        read_enrolment("postgresql://postgres:pw@127.0.0.1:1/none")
    # the monitor starts on it (and stops after --duration), and refuses an unreachable one clearly
    p = run([*credentials(tmp_path, broker.port, "monitor", "monitor"), "monitor", "--broker",
             f"127.0.0.1:{broker.port}", "--db", str(tmp_path / "m.db"), "--enrolment", pg_url, "--duration", "1"],
            timeout=60)
    assert p.returncode == 0 and "lists no device" not in p.stderr, p.stderr
    p = run(["monitor", "--broker", f"127.0.0.1:{broker.port}", "--db", str(tmp_path / "m.db"),
             "--enrolment", "postgresql://postgres:pw@127.0.0.1:1/none", "--duration", "1"], timeout=60)
    assert p.returncode != 0 and "数据库无法读取" in p.stderr and "pw" not in p.stderr and "Traceback" not in p.stderr
