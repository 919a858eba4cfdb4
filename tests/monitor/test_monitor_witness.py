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
    ing = Ingest(mdb, IngestSettings(port=broker.port, connections=1, flush_s=0.2),
                 Enrolment(lambda: read_enrolment(t.root)), archive_keys=lambda: archive_public_keys(t.root))
    rx = None
    try:
        ing.start()
        assert ing.subscribed.wait(10)
        rx = t.start_archive()
        t.start_agent()
        t.wait_archived(ids)
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 1, 20, "the first checkpoint kept")
        ids += add_items(t.store, tmp_path, [5_000, 6_000], seed=1)
        t.wait_archived(ids)
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 2, 20, "the second checkpoint kept")
        assert [(r["verdict"], r["size"]) for r in _kept(mdb)] == [("first", 2), ("consistent", 4)], _kept(mdb)
        assert _alarm(mdb) is None

        # a checkpoint signed by a key that is not the archive's (published where the archive publishes)
        stranger = keys.generate(tmp_path / "x.key", tmp_path / "x.pub")
        kid = keys.key_id(stranger.public_key())
        body = {"format": "edge-archive-checkpoint/1", "archive": kid, "size": 9, "root": "00" * 32,
                "time": "2099-01-01T00:00:00+00:00", "key_id": kid}
        forged = {"format": "edge-archive-consistency/1", "checkpoint": {**body, "sig": keys.sign(stranger, canon.canonical(body))},
                  "previous": None, "proof": None}
        rx.conn.publish(rx.topics.archive_checkpoint(), json.dumps(forged).encode(), retain=True, timeout=10)
        wait_for(lambda: len(_kept(mdb)) == 3, 20, "the forged checkpoint kept")
        assert _kept(mdb)[2]["verdict"] == "inconsistent" and f"key {kid}, not a key of this archive" in _kept(mdb)[2]["detail"]
        a = _alarm(mdb)
        assert a and a["severity"] == "critical" and a["message_zh"].startswith("存档日志不一致") \
            and a["message_en"].startswith("archive log inconsistent"), a

        # an insider deletes archived item 2 (row, files) and rebuilds the log without it
        con = sqlite3.connect(str(t.root / "archive.db"))
        with con:
            con.execute("DELETE FROM items WHERE item = ?", [ids[1]])
            con.execute("DELETE FROM merkle_leaves WHERE item = ?", [ids[1]])
            con.execute("UPDATE merkle_leaves SET idx = idx - 1 WHERE idx > 2")
        con.close()
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 4, 20, "the rewritten log's checkpoint kept")
        last = _kept(mdb)[3]
        assert (last["verdict"], last["size"]) == ("inconsistent", 3), last
        assert "the log shrank: 3 leaves" in last["detail"], last
        # ... and one more archived item brings the size back: another root for 4 leaves
        ids += add_items(t.store, tmp_path, [7_000], seed=2)
        t.wait_archived(ids)
        rx.publish_store_checkpoint()
        wait_for(lambda: len(_kept(mdb)) == 5, 20, "the next checkpoint kept")
        assert _kept(mdb)[4]["verdict"] == "inconsistent" and "two roots for 4 leaves" in _kept(mdb)[4]["detail"]
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
    assert [k["verdict"] for k in kept] == ["first", "consistent", "inconsistent", "inconsistent", "inconsistent"]
    table = run(["monitor", "checkpoints", *db])
    assert "consistent" in table.stdout and "the log shrank" in table.stdout, table.stdout
    # the auditor takes the monitor's copy of checkpoint 2 to the archive: the deletion is named
    shown = run(["monitor", "checkpoints", "--show", str(kept[1]["id"]), *db])
    assert shown.returncode == 0 and json.loads(shown.stdout) == kept[1]["checkpoint"]
    old = tmp_path / "kept-by-monitor.json"
    old.write_text(shown.stdout)
    audit = run(["archive", "audit", str(old), "--root", str(t.root)])
    assert audit.returncode == 1 and "the first 4 leaves no longer give the root signed" in audit.stdout, audit.stdout
