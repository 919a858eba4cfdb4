"""Reports (ratio | usage | annual) and the roster import, through the CLI, on a monitor database
filled by the ingest code with health reports spread over several days."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import time

import pytest

from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB
from tests.support.health import EDGE
from tools.fleet_sim import SimDevice


def cli(*args, check=True):
    p = subprocess.run([EDGE, *args], capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _ts(day: str, hour: int = 12) -> float:
    return time.mktime(dt.datetime.fromisoformat(f"{day}T{hour:02d}:00:00").timetuple())


@pytest.fixture
def db(tmp_path):
    """Unit A (2 docks + 1 room, 12 recorders) and unit B (1 dock, no room), health from
    2025-12-30 to 2026-01-03, alarms in both years."""
    path = tmp_path / "m.db"
    d = MonitorDB(path)
    devs = [SimDevice("a-dock-1", "U-A", "甲执法大队", "dock"), SimDevice("a-dock-2", "U-A", "甲执法大队", "dock"),
            SimDevice("a-room-1", "U-A", "甲执法大队", "room"), SimDevice("b-dock-1", "U-B", "乙执法中队", "dock")]
    ing = Ingest(d, IngestSettings(), Enrolment.of((x.id, x.unit_code, x.key.public_key()) for x in devs))
    by_id = {x.id: x for x in devs}

    def handle(topic: str, body: bytes, now: float) -> str:  # signed by the device, as an agent does
        return ing.handle(topic, by_id[topic.split("/")[2]].seal(topic, body), now=now)

    days = ["2025-12-30", "2025-12-31", "2026-01-01", "2026-01-02", "2026-01-03"]
    for n, day in enumerate(days):
        for dv in devs:
            for hour in (9, 17):
                h = dv.health()
                total = (n * 2 + (hour == 17)) * 10 + 10  # +10 items per sample
                h["usage"] = {"items_total": total, "items_archived": total - 5, "recorded_s": total * 360}
                h["buffer"]["pending_annotation"] = 2
                assert handle(f"edge/dev/{dv.id}/health", json.dumps(h).encode(), now=_ts(day, hour)) == "accepted"
        ing.flush()
    def ratio(dv, rec, serials=None):
        body = dv.ratio(0, rec)  # no roster on the stations: officers 0 = unknown
        if serials:
            body["units"][0]["recorder_serials"] = serials
        return json.dumps(body).encode()

    handle("edge/dev/a-dock-1/ratio", ratio(devs[0], 3, ["R1", "R2", "R3"]), now=_ts("2025-12-30"))
    handle("edge/dev/a-dock-2/ratio", ratio(devs[1], 3, ["R3", "R4", "R5"]), now=_ts("2025-12-30"))
    handle("edge/dev/b-dock-1/ratio", ratio(devs[3], 2), now=_ts("2025-12-30"))
    alarm = lambda code, active: json.dumps({"code": code, "key": code, "active": active, "severity": "warning",  # noqa: E731
                                             "since": "2025-12-31T10:00:00+08:00", "ts": "2025-12-31T10:00:00+08:00",
                                             "message": {"zh": "告警", "en": "alarm"}, "source": "t"}).encode()
    handle("edge/dev/a-room-1/alarm/microphone_silent", alarm("microphone_silent", True), now=_ts("2025-12-31"))
    handle("edge/dev/a-room-1/alarm/microphone_silent", alarm("microphone_silent", False), now=_ts("2025-12-31", 13))
    handle("edge/dev/a-room-1/alarm/microphone_silent", alarm("microphone_silent", True), now=_ts("2026-01-02"))
    handle("edge/dev/b-dock-1/alarm/backlog_old", alarm("backlog_old", True), now=_ts("2026-01-02"))
    ing.flush()
    d.close()
    return path


def test_roster_and_ratio_report(tmp_path, db):
    roster = tmp_path / "officers.csv"
    roster.write_text("unit_code,unit_name,officers\nU-A,甲执法大队,25\n", encoding="utf-8")
    out = cli("monitor", "roster", "import", str(roster), "--db", str(db))
    assert "U-A: 25" in out.stdout
    # one row per officer, exported by Excel in GB18030, for unit B
    people = tmp_path / "people.csv"
    people.write_bytes("unit_code,unit_name,officer_id,name\nU-B,乙执法中队,330001,张三\nU-B,乙执法中队,330002,李四\n"
                       "U-B,乙执法中队,330003,王五\n".encode("gb18030"))
    cli("monitor", "roster", "import", str(people), "--db", str(db))
    rep = json.loads(cli("report", "ratio", "--db", str(db), "--json", "--to", "2026-01-03").stdout)
    units = {u["unit_code"]: u for u in rep["units"]}
    a, b = units["U-A"], units["U-B"]
    assert a["recorders"] == 5, "serials de-duplicated across the two docks"
    assert a["officers"] == 25 and a["ratio"] == pytest.approx(0.2) and a["ratio_ok"] is True
    assert a["rooms"] == 1 and a["compliant"] is True
    assert b["officers"] == 3 and b["recorders"] == 2 and b["rooms"] == 0 and b["compliant"] is False
    assert a["officers_source"].startswith("roster")
    rows = list(csv.DictReader(io.StringIO(cli("report", "ratio", "--db", str(db), "--unit", "U-B").stdout)))
    assert len(rows) == 1 and rows[0]["unit_name"] == "乙执法中队" and rows[0]["compliant"] == "False"


def test_usage_and_annual_reports(db):
    rep = json.loads(cli("report", "usage", "--db", str(db), "--unit", "U-A", "--from", "2026-01-01",
                         "--to", "2026-01-03", "--json").stdout)
    u = rep["units"][0]
    # per device: counter 40 at the end of 2025-12-31, 100 at the end of 2026-01-03 -> 60 items, 3 devices
    assert u["items"] == 180 and u["items_archived"] == 180 and u["archived_share"] == 1.0
    assert u["hours_recorded"] == pytest.approx(180 * 360 / 3600)
    assert u["items_pending_annotation"] == 6
    assert u["alarms_by_kind"]["microphone_silent"] == 1 and u["alarms_total"] == 1
    old = cli("report", "annual", "--db", str(db), "--year", "2025", "--format", "json")  # deprecated spelling
    assert "--format json is deprecated; use --json" in old.stderr
    annual = json.loads(old.stdout)
    again = json.loads(cli("report", "annual", "--db", str(db), "--year", "2025", "--json").stdout)
    assert {k: v for k, v in annual.items() if k != "generated"} == {k: v for k, v in again.items() if k != "generated"}
    assert annual["due"] == "2026-01-31" and annual["year"] == 2025
    ua = {x["unit_code"]: x for x in annual["units"]}
    # 2025: first sample of the device (10) to the end of 2025-12-31 (40): 30 items per device
    assert ua["U-A"]["items"] == 90 and ua["U-A"]["alarms_by_kind"]["microphone_silent"] == 1
    assert ua["U-B"]["alarms_total"] == 0 and "ratio" in ua["U-A"] and "hours_recorded" in ua["U-B"]
    text = cli("report", "annual", "--db", str(db), "--year", "2026").stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["unit_code"] for r in rows} == {"U-A", "U-B"}
    assert rows[1]["alarms_backlog_old"] == "1" and "alarms_camera_offline" in rows[0]


@pytest.mark.parametrize("args, message", [
    (["report", "usage", "--from", "2026-13-01"], "日期无效 / --from '2026-13-01': expected a date YYYY-MM-DD"),
    (["report", "usage", "--from", "2026-02-01", "--to", "2026-01-01"], "日期范围无效 / --to 2026-01-01 is before --from 2026-02-01"),
    (["report", "ratio", "--unit", "NOPE"], "未知单位 / --unit NOPE: unknown unit"),
    (["report", "annual", "--year", "1999"], "年份无效 / --year 1999: out of range"),
    (["report", "annual", "--year", "2025", "--from", "2025-01-01"], "只能选一种 / --year and --from/--to exclude each other"),
    (["report", "ratio", "--format", "xml"], "Invalid value for '--format'"),
    (["report", "ratio", "--json", "--csv"], "choose one of --json or --csv"),
    (["report", "ratio", "--json", "--format", "csv"], "choose one of --json or --csv"),
])
def test_report_bad_args(db, args, message):
    p = cli(*args, "--db", str(db), check=False)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_report_bad_db(tmp_path):
    p = cli("report", "ratio", "--db", str(tmp_path / "none.db"), check=False)
    assert p.returncode == 1 and "no monitor database here" in p.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    p = cli("monitor", "roster", "import", str(junk), "--db", str(junk), check=False)
    assert p.returncode == 1 and "error:" in p.stderr and "Traceback" not in p.stderr
    p = cli("report", "ratio", "--db", "postgresql://u:secret@127.0.0.1:1/monitor", check=False)
    assert p.returncode == 1 and "cannot connect to the database postgresql://u:***@127.0.0.1:1/monitor" in p.stderr
    assert "secret" not in p.stderr and "Traceback" not in p.stderr
    p = cli("report", "ratio", "--db", "mysql://u@db/monitor", check=False)
    assert p.returncode == 1 and "give a SQLite file path or a postgresql://" in p.stderr


@pytest.mark.parametrize("content, message", [
    (b"name,count\nx,1\n", "header must have unit_code and officers"),
    (b"unit_code,officers\nU-A,many\n", ":2: 人数无效 / officers 'many': expected a whole number"),
    (b"unit_code,officers\nU A/1,3\n", ":2: 单位编号无效 / unit_code 'U A/1'"),
    (b"unit_code,officers\n", "no rows under the header"),
    (b"unit_code,officers\nU-A,3,extra\n", ":2: 列数多于表头 / more fields than the header"),
    (b"unit_code,officers,officer_id\nU-A,,\n", ":2: 缺少人数或警号 / neither officers nor officer_id"),
    (b"\x00\x01\x02\x03", "binary data"),
])
def test_roster_bad_csv(tmp_path, content, message):
    f = tmp_path / "r.csv"
    f.write_bytes(content)
    p = cli("monitor", "roster", "import", str(f), "--db", str(tmp_path / "m.db"), check=False)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    p = cli("monitor", "roster", "import", str(tmp_path / "missing.csv"), "--db", str(tmp_path / "m.db"), check=False)
    assert p.returncode == 1 and "no such file" in p.stderr
