"""The monitor as an independent witness of the archive's log (agent/monitor/witness.py): a real
broker, a real archive receiver publishing its checkpoints with their consistency proofs, the
monitor's real ingest keeping every one. Two consistent checkpoints are kept without an alarm; a
checkpoint signed by a key that is not the archive's, and an insider who deletes an archived item
and rebuilds the log, each raise archive_log_inconsistent, shown in `monitor history` and
`monitor checkpoints`, and the checkpoint the monitor kept proves the deletion in `archive audit`."""

from __future__ import annotations

import json
import sqlite3

from agent.archive.merkle import archive_public_keys
from agent.archive.registry import read_enrolment
from agent.common import canon
from agent.evidence import keys
from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB
from tests.support.broker import login
from tests.support.uplink import InProc, add_items, run, wait_for


def _kept(db) -> list[dict]:
    return db.query("SELECT id, verdict, detail, size FROM archive_checkpoints ORDER BY id")


def _alarm(db) -> dict | None:
    return db.one("SELECT * FROM alarms WHERE device = 'archive' AND key = 'archive_log_inconsistent' AND active = 1")


def test_monitor_keeps_the_archives_checkpoints_and_alarms_on_a_rewritten_log(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [3_000, 4_000])
    t.enroll()
    mdb_path = tmp_path / "monitor.db"
    mdb = MonitorDB(mdb_path)
    ing = Ingest(mdb, IngestSettings(port=broker.port, connections=1, flush_s=0.2,
                                     **login(broker.port, "monitor", "monitor")),
                 Enrolment(lambda: read_enrolment(t.root)), archive_keys=lambda: archive_public_keys(t.root))
    rx = None
    try:
        ing.start()
        assert ing.subscribed.wait(10)
        rx = t.start_archive(first_checkpoint_s=0.0)  # its first checkpoint at once, as 30 s after a start
        wait_for(lambda: len(_kept(mdb)) == 1, 20, "the archive's first checkpoint kept")
        t.start_agent()
        t.wait_archived(ids)
        rx.publish_store_checkpoint()  # what the schedule does every archive.checkpoint_every_h
        wait_for(lambda: len(_kept(mdb)) == 2, 20, "the second checkpoint kept")
        ids += add_items(t.store, tmp_path, [5_000, 6_000], seed=1)
        t.wait_archived(ids)
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 3, 20, "the third checkpoint kept")
        assert [(r["verdict"], r["size"]) for r in _kept(mdb)] == [("first", 0), ("consistent", 2), ("consistent", 4)], \
            _kept(mdb)
        assert _alarm(mdb) is None

        # a checkpoint signed by a key that is not the archive's (published where the archive publishes)
        stranger = keys.generate(tmp_path / "x.key", tmp_path / "x.pub")
        kid = keys.key_id(stranger.public_key())
        body = {"format": "edge-archive-checkpoint/1", "archive": kid, "size": 9, "root": "00" * 32,
                "time": "2099-01-01T00:00:00+00:00", "key_id": kid}
        forged = {"format": "edge-archive-consistency/1", "checkpoint": {**body, "sig": keys.sign(stranger, canon.canonical(body))},
                  "previous": None, "proof": None}
        rx.conn.publish(rx.topics.archive_checkpoint(), json.dumps(forged).encode(), retain=True, timeout=10)
        wait_for(lambda: len(_kept(mdb)) == 4, 20, "the forged checkpoint kept")
        assert _kept(mdb)[3]["verdict"] == "inconsistent" and f"key {kid}, not a key of this archive" in _kept(mdb)[3]["detail"]
        a = _alarm(mdb)
        assert a and a["severity"] == "critical" and a["message_zh"].startswith("存档日志不一致") \
            and a["message_en"].startswith("archive log inconsistent"), a

        # an insider deletes archived item 2 (row, files) and rebuilds the log without it
        con = sqlite3.connect(str(t.root / "archive.db"))
        with con:
            con.execute("DELETE FROM items WHERE item = ?", [ids[1]])
            gone = con.execute("SELECT idx FROM merkle_leaves WHERE item = ?", [ids[1]]).fetchone()[0]
            con.execute("DELETE FROM merkle_leaves WHERE item = ?", [ids[1]])
            con.execute("UPDATE merkle_leaves SET idx = 1 - idx WHERE idx > ?", [gone])  # renumbered (via negatives:
            con.execute("UPDATE merkle_leaves SET idx = -idx WHERE idx < 0")              # idx is unique row by row)
        con.close()
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 5, 20, "the rewritten log's checkpoint kept")
        last = _kept(mdb)[4]
        assert (last["verdict"], last["size"]) == ("inconsistent", 3), last
        assert "the log shrank: 3 leaves" in last["detail"], last
        # ... and one more archived item brings the size back: another root for 4 leaves
        ids += add_items(t.store, tmp_path, [7_000], seed=2)
        t.wait_archived(ids)
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 6, 20, "the next checkpoint kept")
        assert _kept(mdb)[5]["verdict"] == "inconsistent" and "two roots for 4 leaves" in _kept(mdb)[5]["detail"]
        assert _alarm(mdb) is not None  # a rewritten log is never cleared by a later checkpoint
    finally:
        ing.stop()
        mdb.close()
        t.close()

    db = ["--db", str(mdb_path)]
    h = run(["monitor", "history", "--device", "archive", *db])
    assert h.returncode == 0 and "archive_log_inconsistent" in h.stdout and "raised" in h.stdout, h.stdout + h.stderr
    ls = run(["monitor", "checkpoints", "--json", *db])
    assert ls.returncode == 0, ls.stderr
    kept = json.loads(ls.stdout)["checkpoints"]
    assert [k["verdict"] for k in kept] == ["first", "consistent", "consistent", "inconsistent", "inconsistent", "inconsistent"]
    table = run(["monitor", "checkpoints", *db])
    assert "consistent" in table.stdout and "the log shrank" in table.stdout, table.stdout
    # the auditor takes the monitor's copy of checkpoint 3 to the archive: the deletion is named
    shown = run(["monitor", "checkpoints", "--show", str(kept[2]["id"]), *db])
    assert shown.returncode == 0 and json.loads(shown.stdout) == kept[2]["checkpoint"]
    old = tmp_path / "kept-by-monitor.json"
    old.write_text(shown.stdout)
    audit = run(["archive", "audit", str(old), "--root", str(t.root)])
    assert audit.returncode == 1 and "the first 4 leaves no longer give the root signed" in audit.stdout, audit.stdout


# --- every verdict, on both backends (no broker: the monitor's ingest fed directly) ----------------
import pytest  # noqa: E402

from agent.archive.storage import ArchiveStore  # noqa: E402
from agent.monitor.state import connect, fleet, open_monitor_db  # noqa: E402
from agent.common.errors import EdgeError  # noqa: E402
from agent.monitor.history import history  # noqa: E402
from agent.monitor.witness import acknowledge, checkpoints  # noqa: E402
from tests.support.pg import fresh_database  # noqa: E402

TOPIC = "edge/archive/checkpoint"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "monitor.db")
    else:
        with fresh_database() as url:
            yield url


def _leaves(st: ArchiveStore, n: int) -> None:
    with st.db.atomic() as db:
        for _ in range(n):
            k = (db.execute("SELECT count(*) FROM merkle_leaves").fetchone()[0] or 0) + 1
            st.add_leaf(db, "item", {"device": "dock-0001", "item": f"item-{k}", "seq": k, "manifest_hash": f"{k:064x}"})


_tick = iter(range(10**6))


def _publish(st: ArchiveStore, noted: bool = True) -> bytes:
    """What Receiver.publish_store_checkpoint sends (the broker taking it when ``noted``), each
    signed a second after the one before (make_checkpoint signs the current second)."""
    cp = st.make_checkpoint()
    body = {k: cp[k] for k in ("format", "archive", "size", "root", "key_id")}
    n = next(_tick)
    body["time"] = f"2026-12-04T{10 + n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}+00:00"
    cp = {**body, "sig": keys.sign(st.signing_key, canon.canonical(body))}
    rec = st.published_record(cp)
    if noted:
        st.note_published(cp)
    return json.dumps(rec, sort_keys=True).encode()


def test_every_verdict_kept_on_both_backends(db_url, tmp_path):
    st = ArchiveStore(tmp_path / "archive")
    db = open_monitor_db(db_url)

    def monitor():
        return Ingest(db, IngestSettings(), Enrolment.of([]), archive_keys=lambda: archive_public_keys(st.root))

    def alarm(code):
        r = db.one("SELECT active, severity FROM alarms WHERE device = 'archive' AND key = ?", [code])
        return (r["active"], r["severity"]) if r else None

    try:
        ing = monitor()
        _leaves(st, 1)
        first = _publish(st)
        assert ing.handle(TOPIC, first) == "accepted"
        assert ing.handle(TOPIC, first, retained=True) == "duplicate"   # a retained re-delivery
        assert ing.handle(TOPIC, _publish(st)) == "accepted"           # an hour without new items: same
        _leaves(st, 2)
        assert ing.handle(TOPIC, _publish(st)) == "accepted"           # consistent
        _leaves(st, 1)
        _publish(st)                                                    # published while the monitor was away
        _leaves(st, 3)
        assert ing.handle(TOPIC, _publish(st)) == "accepted"           # gap: proven from the one missed only
        ing.flush()
        assert alarm("archive_log_unverified") == (1, "warning") and alarm("archive_log_inconsistent") is None
        _leaves(st, 1)
        assert ing.handle(TOPIC, _publish(st)) == "accepted"           # consistent again: the warning clears
        ing.flush()
        assert alarm("archive_log_unverified")[0] == 0 and alarm("archive_log_inconsistent") is None
        # a proof that does not verify (one hash changed), and one that is missing
        _leaves(st, 2)
        rec = json.loads(_publish(st, noted=False))
        rec["proof"]["path"][0] = "00" * 32
        assert ing.handle(TOPIC, json.dumps(rec).encode()) == "archive_log_inconsistent"
        rec = json.loads(_publish(st, noted=False))  # (the same checkpoint again would be a duplicate)
        assert ing.handle(TOPIC, json.dumps(dict(rec, proof=None)).encode()) == "archive_log_inconsistent"
        # not a record at all
        assert ing.handle(TOPIC, b'{"format": "something else"}') == "archive_log_inconsistent"
        ing.flush()
        assert alarm("archive_log_inconsistent") == (1, "critical")
        # a restarted monitor knows what it kept: the last good one is the base, duplicates stay duplicates
        ing2 = monitor()
        assert ing2.handle(TOPIC, first, retained=True) == "duplicate"
        _leaves(st, 1)
        rec = json.loads(_publish(st, noted=False))
        assert rec["previous"]["size"] == 8  # what the archive published last, and the monitor kept last
        rec["previous"] = None  # published without the one before
        assert ing2.handle(TOPIC, json.dumps(rec).encode()) == "archive_log_inconsistent"
        old = dict(json.loads(first)["checkpoint"])
        body = {k: old[k] for k in ("format", "archive", "size", "root", "key_id")}
        body["time"] = "2020-01-01T00:00:00+00:00"
        older = {**body, "sig": keys.sign(st.signing_key, canon.canonical(body))}
        assert ing2.handle(TOPIC, json.dumps({"format": "edge-archive-consistency/1", "checkpoint": older,
                                              "previous": None, "proof": None}).encode()) == "archive_log_inconsistent"
        ing2.flush()
        conn = connect(db_url, readonly=True)
        try:
            kept = checkpoints(conn)
            shown = fleet(conn, 120)["alarms"]  # what the page and /api/alarms show
        finally:
            conn.close()
        assert [k["verdict"] for k in kept] == ["first", "same", "consistent", "gap", "consistent"] + \
            ["inconsistent"] * 5, kept
        assert [k["size"] for k in kept[:5]] == [1, 1, 3, 7, 8]
        assert "fails" in kept[5]["detail"] and "no consistency proof" in kept[6]["detail"]
        assert "not an edge-archive-consistency/1 record" in kept[7]["detail"]
        assert "no consistency proof from the last one kept (8 leaves" in kept[8]["detail"], kept[8]
        assert "older than the last one kept" in kept[9]["detail"]
        assert kept[3]["detail"].startswith("checkpoints between 3 and 4 leaves were not received here")
        a = next(a for a in shown if a["device"] == "archive")
        assert (a["code"], a["severity"]) == ("archive_log_inconsistent", "critical") and len(shown) == 1, shown
        assert a["message_zh"].startswith("存档日志不一致：") and "older than the last one kept" in a["message_en"], a

        # a custodian looks into each and acknowledges it with a reason: cleared when none is left, and
        # the newest acknowledged checkpoint the archive signed is what the next one must extend
        for k in kept[5:9]:
            acknowledge(db, k["id"], "inspector-7", "test publications, ticket 812")
        with pytest.raises(EdgeError, match="only an inconsistent one"):
            acknowledge(db, kept[0]["id"], "inspector-7", "x")
        with pytest.raises(EdgeError, match="--reason is required"):
            acknowledge(db, kept[9]["id"], "inspector-7", " ")
        ing2.reload_witness_acks()
        ing2.flush()
        assert alarm("archive_log_inconsistent") == (1, "critical")  # one is left
        p = run(["monitor", "checkpoints", "--db", db_url, "--acknowledge", str(kept[9]["id"]), "--reason",
                 "clock test at the archive", "--as", "inspector-7"])
        assert p.returncode == 0 and "acknowledged checkpoint" in p.stdout, p.stdout + p.stderr
        ing2.reload_witness_acks()
        ing2.flush()
        assert alarm("archive_log_inconsistent")[0] == 0
        st.note_published(older)  # the archive's next record names the acknowledged one as its previous
        _leaves(st, 1)
        assert ing2.handle(TOPIC, _publish(st)) == "accepted"
        ing2.flush()
        conn = connect(db_url, readonly=True)
        try:
            kept = checkpoints(conn)
            events = [(e["code"], e["event"]) for e in history(conn, device="archive")["events"]]
        finally:
            conn.close()
        assert kept[-1]["verdict"] == "consistent" and kept[9]["acknowledged"]["by"] == "inspector-7", kept[-1]
        assert events == [("archive_log_unverified", "raised"), ("archive_log_unverified", "cleared"),
                          ("archive_log_inconsistent", "raised"), ("archive_log_inconsistent", "cleared")], events
    finally:
        db.close()
        st.close()
