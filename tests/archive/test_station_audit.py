"""The station's audit log at the centre (docs/custody.md "The station's audit log at the centre"):
sealed as signed items, uploaded on the evidence path through a real broker, verified at the
archive; each erase matched to the archive's receipt that allowed it. (The real docking station's
erases: tests/e2e/test_dock_e2e.py.)"""

from __future__ import annotations

import json

from agent.evidence import manifest as mf
from tests.archive.test_archive_db_contract import _archive, _edge, backend, pg_url  # noqa: F401 (fixtures)
from tests.support.uplink import InProc, add_items, run, states, wait_for

DEV = "dock-0001"


def received(st, n: int):
    return lambda: len(st.db.query("SELECT seq FROM station_audit WHERE device = ?", [DEV])) >= n


def test_audit_log_travels_as_items_and_erases_meet_their_receipts(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [3_000, 4_000])
    t.enroll()
    rx = t.start_archive()
    st = rx.store
    try:
        t.start_agent()
        t.wait_archived(ids)
        # what the dock writes when it erases a recorder file (agent/dock/erasing.py), for an archived
        # item, and for an item the archive never confirmed
        m = json.loads((t.store.item_dir(ids[0]) / mf.MANIFEST).read_bytes())
        f = m["files"][0]
        t.store.audit.append("erase", ids[0], actor="agent:dock", result="erased", bay="bay-1", serial="RX0001",
                             file=f["name"], size=f["size"], hash=f["hash"], policy="after_archive", why="archived")
        t.store.audit.append("erase", "dock-0001-20261204000000-abcdef", actor="agent:dock", result="erased",
                             bay="bay-1", serial="RX0001", file="x.mp4", size=1, hash="00" * 32,
                             policy="after_archive", why="archived")
        top = t.store.ledger.one("SELECT max(seq) n FROM audit")["n"]
        audit_item = t.store.seal_audit_log()
        assert audit_item and t.store.seal_audit_log() is None  # nothing new but its own sealing
        t.wait_archived(ids + [audit_item])
        wait_for(received(st, top), 20, "the station's audit entries at the archive")
        row = st.db.one("SELECT path FROM items WHERE item = ?", [audit_item])
        assert row["path"].split("/")[1] == "_audit"
        assert t.store.pending_annotation_count() == 0  # an audit item needs no case number
    finally:
        t.close()

    p = run(["archive", "audit-log", DEV, "--root", str(t.root), "--erasures"])
    assert p.returncode == 1, p.stdout + p.stderr  # one erase has no receipt
    assert f"{top} audit entries received, missing none; 2 erase(s), 1 without a valid receipt" in p.stdout, p.stdout
    assert "signature ok" in p.stdout and "no receipt in the station's log before this erase" in p.stdout, p.stdout
    rep = json.loads(run(["archive", "audit-log", DEV, "--root", str(t.root), "--json"]).stdout)
    good = next(e for e in rep["erasures"] if e["item"] == ids[0])
    assert good["ok"] and good["receipt"]["verified"] and good["receipt"]["manifest_hash"]
    # a station's audit log is no recording: not counted in usage or upload deadlines
    import datetime as dt

    from agent.archive.deadlines import read_deadlines
    from agent.archive.storage import ArchiveStore
    from agent.archive.usage import read_usage

    day = dt.date.today()
    usage = read_usage(t.root, day - dt.timedelta(days=400), day + dt.timedelta(days=1))
    assert DEV not in {o["officer_id"] for o in usage["officers"]} and usage["units"][0]["items"] == 2, usage
    st2 = ArchiveStore(t.root)
    try:
        dl = read_deadlines(st2, day - dt.timedelta(days=400), day + dt.timedelta(days=1))
        assert audit_item not in json.dumps(dl, ensure_ascii=False)
    finally:
        st2.close()


def test_an_altered_station_log_is_alarmed(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [2_000])
    t.enroll()
    rx = t.start_archive()
    st = rx.store
    try:
        t.start_agent()
        t.wait_archived(ids)
        first = t.store.seal_audit_log()
        t.wait_archived(ids + [first])
        n = t.store.ledger.one("SELECT max(seq) n FROM audit")["n"]
        wait_for(received(st, int(t.store.get_meta("audit_sealed_to"))), 20, "the first segment")
        # someone at the station edits an entry not yet sealed (a technician's action made to vanish)
        t.store.audit.append("config", None, actor="tech", key="dock.erase_policy", old="never", new="after_archive")
        with t.store.ledger.atomic() as db:
            db.execute("UPDATE audit SET detail = ? WHERE seq = ?", ['{"key":"nothing"}', n + 1])
        second = t.store.seal_audit_log()
        t.wait_archived(ids + [first, second])
        wait_for(lambda: not st.chain_verdict(DEV)["ok"], 20, "the station_audit alarm")
        alarm = st.chain_verdict(DEV)["alarms"][0]
        assert alarm["code"] == "station_audit" and f"entry {n + 1} was altered" in alarm["detail"], alarm
        assert states(t.config)[second] == "archived"  # stored as it came: the evidence of the edit is kept
    finally:
        t.close()


def test_station_audit_on_both_backends(backend, tmp_path):  # noqa: F811
    from agent.archive.storage import ArchiveStore

    store = _edge(tmp_path)
    ids = add_items(store, tmp_path, [1_000, 2_000])
    st = ArchiveStore(tmp_path / "archive", db=backend)
    try:
        st.registry.enroll(DEV, store.pub_path.read_bytes(), store.cfg.device.unit_code)
        for i in ids:
            assert _archive(st, store, i).status == "stored"
        first = store.seal_audit_log()
        store.audit.append("config", None, actor="tech", key="dock.erase_policy", old="never", new="after_archive")
        second = store.seal_audit_log()
        # the second segment arrives first: no break, a gap until the first one comes
        assert _archive(st, store, second).status == "stored"
        rep = st.station_audit_report(DEV)
        assert rep["verdict"] == "ok" and rep["missing"] and rep["missing"][0] == 1
        assert _archive(st, store, first).status == "stored"
        rep = st.station_audit_report(DEV)
        assert rep["verdict"] == "ok" and rep["missing"] == [] and rep["received"] == int(store.get_meta("audit_sealed_to"))
        # an audit item whose file is not entries (signed by the station all the same): stored, alarmed
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"seq": "one"}\nnot json\n')
        meta = {"case_number": None, "pending": ["case_number"], "kind": "station-audit", "place": "x",
                "capture_start": "2026-12-04T10:00:00+08:00", "capture_end": "2026-12-04T10:00:00+08:00",
                "collector": {"name": "station", "id": DEV}, "proof": "audit", "audit_from": 99, "audit_to": 99}
        w = store.new_item(meta, {"type": "audit"}, kind="audit")
        w.add_path("audit-00000099-00000099.jsonl", bad, move=True)
        w.seal()
        assert _archive(st, store, w.id).status == "stored"
        alarm = st.chain_verdict(DEV)["alarms"]
        assert [a["code"] for a in alarm] == ["station_audit"] and "unreadable" in alarm[0]["detail"], alarm
    finally:
        st.close()
        store.close()
