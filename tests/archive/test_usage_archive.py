"""`report usage --archive ROOT` (issue 16 item 4): counted from what the archive holds — items
captured in the period per unit, officer and device, hours recorded, items archived late — where
the monitor's counters show 0 for a unit whose items were archived before the monitor saw its
stations. Real items sealed by a store, stored by the archive's own storage code, the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os

from agent.archive.storage import ArchiveStore
from agent.common.timeutil import iso
from agent.evidence import manifest as mf
from agent.monitor.state import MonitorDB
from agent.store.ingest import ingest
from agent.wire import protocol as P
from tests.support.spine import META
from tests.support.uplink import UNIT, agent_config, enroll, open_store, run

NOW = dt.datetime.now().astimezone().replace(microsecond=0)


def _item(store, tmp, officer: tuple[str, str], start: dt.datetime, minutes: int) -> str:
    p = tmp / f"f-{os.urandom(4).hex()}.bin"
    p.write_bytes(os.urandom(5000))
    meta = dict(META, collector={"name": officer[1], "id": officer[0]}, capture_start=iso(start),
                capture_end=iso(start + dt.timedelta(minutes=minutes)))
    return ingest(store, [p], meta)["item_id"]


def _store_at_archive(st: ArchiveStore, store, item_id: str) -> None:
    """The receiver's three steps (manifest, chunk, finish), in process."""
    d = store.item_dir(item_id)
    dev = st.registry.device(store.cfg.device.id)
    assert st.on_manifest(dev, item_id, (d / mf.MANIFEST).read_bytes(),
                          dict(P.manifest_props((d / mf.SIGNATURE).read_bytes()))).status == "receiving"
    f = json.loads((d / mf.MANIFEST).read_bytes())["files"][0]
    data = (d / "files" / f["name"]).read_bytes()
    assert st.on_chunk(dev, item_id, data, dict(P.chunk_props(f["name"], 0, data))).status == "ok"
    assert st.on_finish(dev, item_id, P.finish_payload([f], [])).status == "stored"


def test_usage_from_the_archive_per_unit_officer_and_device(tmp_path):
    store = open_store(agent_config(tmp_path, 1))
    root = tmp_path / "archive"
    enroll(root, store)
    zhang, li = ("33010001", "张三"), ("33010002", "李四")
    ids = [
        _item(store, tmp_path, zhang, NOW - dt.timedelta(hours=3), 60),           # on time
        _item(store, tmp_path, zhang, NOW - dt.timedelta(hours=2), 30),           # on time
        _item(store, tmp_path, li, NOW - dt.timedelta(hours=30), 90),             # archived 28.5 h after: late
        _item(store, tmp_path, li, NOW - dt.timedelta(days=10), 15),              # before the period
    ]
    st = ArchiveStore(root)
    for i in ids:
        _store_at_archive(st, store, i)
    st.close()
    frm, to = (NOW - dt.timedelta(days=3)).date().isoformat(), NOW.date().isoformat()

    # the monitor never saw this station: its counters say nothing about these items
    MonitorDB(tmp_path / "m.db").close()
    rep = json.loads(run(["report", "usage", "--db", str(tmp_path / "m.db"), "--from", frm, "--to", to, "--json"],
                         check=True).stdout)
    assert sum(u["items"] for u in rep["units"]) == 0

    out = json.loads(run(["report", "usage", "--archive", str(root), "--from", frm, "--to", to, "--json"],
                         check=True).stdout)
    assert out["source"] == f"archive {root}" and out["deadline_h"] == 24 and out["skipped"] == []
    assert out["units"] == [{"unit_code": UNIT, "items": 3, "late": 1, "hours_recorded": 3.0}]
    assert out["officers"] == [
        {"unit_code": UNIT, "officer_id": "33010001", "officer_name": "张三", "items": 2, "late": 0, "hours_recorded": 1.5},
        {"unit_code": UNIT, "officer_id": "33010002", "officer_name": "李四", "items": 1, "late": 1, "hours_recorded": 1.5}]
    assert out["devices"] == [{"unit_code": UNIT, "device": "dock-0001", "items": 3, "late": 1, "hours_recorded": 3.0}]
    # a wider deadline: nothing is late; a longer period: the old item counts
    wide = json.loads(run(["report", "usage", "--archive", str(root), "--from", frm, "--to", to, "--json",
                           "--deadline-h", "48"], check=True).stdout)
    assert wide["units"][0]["late"] == 0
    year = json.loads(run(["report", "usage", "--archive", str(root), "--unit", UNIT, "--json",
                           "--from", (NOW - dt.timedelta(days=30)).date().isoformat(), "--to", to], check=True).stdout)
    assert year["units"][0]["items"] == 4
    # CSV: one row per unit, officer and device
    rows = list(csv.DictReader(io.StringIO(run(["report", "usage", "--archive", str(root), "--from", frm, "--to", to],
                                               check=True).stdout)))
    assert [(r["level"], r["officer_name"] or r["device"] or r["unit_code"], r["items"], r["late"]) for r in rows] == [
        ("unit", UNIT, "3", "1"), ("officer", "张三", "2", "0"), ("officer", "李四", "1", "1"),
        ("device", "dock-0001", "3", "1")]


def test_usage_archive_bad_input(tmp_path):
    p = run(["report", "usage", "--archive", str(tmp_path / "nowhere")])
    assert p.returncode == 1 and "此处没有归档 / " in p.stderr and "no archive here" in p.stderr and "Traceback" not in p.stderr
    store = open_store(agent_config(tmp_path, 1))
    root = tmp_path / "archive"
    enroll(root, store)
    p = run(["report", "usage", "--archive", str(root), "--unit", "NOPE"])
    assert p.returncode == 1 and "存档中没有该单位 / --unit NOPE: no such unit" in p.stderr
    p = run(["report", "usage", "--archive", str(root), "--deadline-h", "0"])
    assert p.returncode == 2 and "--deadline-h" in p.stderr
    empty = json.loads(run(["report", "usage", "--archive", str(root), "--unit", UNIT, "--json"], check=True).stdout)
    assert empty["units"] == [{"unit_code": UNIT, "items": 0, "late": 0, "hours_recorded": 0.0}]


def test_usage_reads_capture_times_corrected_by_the_sealed_drift(tmp_path):
    """A recorder whose clock ran 10 h fast: its own capture end reads 20 h ago, it ended 30 h ago:
    late, as `report deadlines` says; one 10 h slow reads 30 h ago, ended 20 h ago: on time."""
    store = open_store(agent_config(tmp_path, 1))
    root = tmp_path / "archive"
    enroll(root, store)
    ids = []
    for officer, reads, offset_h in ((("33010001", "张三"), 20, 10), (("33010002", "李四"), 30, -10)):
        p = tmp_path / f"f-{os.urandom(4).hex()}.bin"
        p.write_bytes(os.urandom(5000))
        end = NOW - dt.timedelta(hours=reads)
        meta = dict(META, collector={"name": officer[1], "id": officer[0]}, capture_start=iso(end - dt.timedelta(minutes=6)),
                    capture_end=iso(end), clock_offset_ms=offset_h * 3600 * 1000, clock_offset_measured_at=iso(NOW),
                    clock_offset_source="measured")
        ids.append(ingest(store, [p], meta)["item_id"])
    st = ArchiveStore(root)
    for i in ids:
        _store_at_archive(st, store, i)
    st.close()
    frm, to = (NOW - dt.timedelta(days=3)).date().isoformat(), NOW.date().isoformat()
    out = json.loads(run(["report", "usage", "--archive", str(root), "--from", frm, "--to", to, "--json"],
                         check=True).stdout)
    assert [(o["officer_name"], o["late"], o["hours_recorded"]) for o in out["officers"]] == [("张三", 1, 0.1), ("李四", 0, 0.1)]
    dl = json.loads(run(["report", "deadlines", "--archive", str(root), "--period", f"{frm}..{to}", "--json"],
                        check=True).stdout)
    assert [i["item"] for i in dl["late"]] == [ids[0]]
