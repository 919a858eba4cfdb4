"""`report deadlines` (issue 18, upload deadline): per item, officer and recorder, the time from the
end of capture (the recorder's clock corrected by its sealed drift) to the archive's receipt, against
the unit policy's upload_deadline_h (24 h by default); JSON, CSV and a readable table; chain positions
a device announced and the archive never received. Real items sealed by a station's store and
stored by the archive's storage code; the CLI as a user runs it."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from agent.archive import policy as apol
from agent.archive.deadlines import parse_period
from agent.common.errors import EdgeError
from agent.wire import checkpoint, policy as wp
from tests.support.custody import Centre
from tests.support.uplink import run

UNIT = "330100000000"
NOW = dt.datetime.now().astimezone().replace(microsecond=0)
ZHANG, LI = ("33010001", "张三"), ("33010002", "李四")


def _drift(ms: int) -> dict:
    return {"clock_offset_ms": ms, "clock_offset_measured_at": NOW.isoformat(), "clock_offset_source": "measured",
            "recorder": {"serial": "RX0001", "id": None}}


def test_deadlines_per_officer_and_recorder_with_drift(tmp_path):
    c = Centre(tmp_path)
    on_time = c.item(NOW - dt.timedelta(hours=3), officer=ZHANG)
    late = c.item(NOW - dt.timedelta(hours=30), officer=LI)                    # 6 h late
    # the recorder's clock ran 10 h fast: its end reads 20 h ago, it really ended 30 h ago
    fast = c.item(NOW - dt.timedelta(hours=20), officer=LI, **_drift(10 * 3600 * 1000))
    # a clock 10 h slow: it reads 30 h ago, it really ended 20 h ago: on time
    slow = c.item(NOW - dt.timedelta(hours=30), officer=ZHANG, **_drift(-10 * 3600 * 1000))
    c.item(NOW - dt.timedelta(hours=1), store=False)  # sealed, not yet at the archive
    c.st.on_checkpoint("dock-0001", checkpoint.make(c.store))
    c.close()
    period = f"{(NOW - dt.timedelta(days=3)).date()}..{NOW.date()}"
    rep = json.loads(run(["report", "deadlines", "--archive", str(c.root), "--unit", UNIT, "--period", period,
                          "--json"], check=True).stdout)
    assert rep["deadline_h"] == {UNIT: {"hours": 24, "from": "default"}}
    by_item = {i["item"]: i for i in rep["items"]}
    assert set(by_item) == {on_time, late, fast, slow}
    assert [i["item"] for i in rep["late"]] == [late, fast]
    assert 5.9 < by_item[late]["late_by_h"] < 6.2 and 5.9 < by_item[fast]["late_by_h"] < 6.2
    assert not by_item[slow]["late"] and 19.9 < by_item[slow]["took_h"] < 20.2
    assert by_item[fast]["recorder"] == "RX0001" and by_item[late]["recorder"] == "dock-0001"
    assert by_item[fast]["capture_end"] == (NOW - dt.timedelta(hours=30)).isoformat()
    officers = {o["officer_id"]: o for o in rep["officers"]}
    assert officers["33010002"]["late"] == 2 and officers["33010001"]["late"] == 0
    assert {r["recorder"]: r["late"] for r in rep["recorders"]} == {"RX0001": 1, "dock-0001": 1}
    assert rep["not_received"] == [{"device": "dock-0001", "announced": 5, "missing": [5]}]

    rows = list(csv.DictReader(io.StringIO(run(["report", "deadlines", "--archive", str(c.root), "--period", period,
                                                 "--csv", "--late-only"], check=True).stdout)))
    assert [r["item"] for r in rows] == [late, fast] and rows[0]["officer_name"] == "李四"
    table = run(["report", "deadlines", "--archive", str(c.root), "--period", period], check=True).stdout
    assert "超时 / late: 2" in table and f"{late}" in table and "未收到 / not received: device dock-0001" in table

    # the unit's signed policy gives 48 h: nothing is late
    apol.new_key(c.root)
    apol.sign_next(c.root, UNIT, wp.content_from({"rules": {"upload_deadline_h": 48}}))
    rep = json.loads(run(["report", "deadlines", "--archive", str(c.root), "--period", period, "--json"],
                         check=True).stdout)
    assert rep["deadline_h"] == {UNIT: {"hours": 48, "from": "policy v1"}} and rep["late"] == []
    # bad input: a clear error, nothing else
    bad = run(["report", "deadlines", "--archive", str(c.root), "--period", "November"])
    assert bad.returncode != 0 and "2026-11 (a month)" in bad.stderr
    bad = run(["report", "deadlines", "--archive", str(c.root), "--unit", "330199999999", "--period", period])
    assert bad.returncode != 0 and "no such unit at this archive" in bad.stderr


def test_period_forms():
    assert parse_period("2026-11") == (dt.date(2026, 11, 1), dt.date(2026, 11, 30))
    assert parse_period("2026-12") == (dt.date(2026, 12, 1), dt.date(2026, 12, 31))
    assert parse_period("2026") == (dt.date(2026, 1, 1), dt.date(2026, 12, 31))
    assert parse_period("2026-11-05") == (dt.date(2026, 11, 5), dt.date(2026, 11, 5))
    assert parse_period("2026-11-01..2026-11-07") == (dt.date(2026, 11, 1), dt.date(2026, 11, 7))
    with pytest.raises(EdgeError, match="ends before it starts"):
        parse_period("2026-11-07..2026-11-01")


def test_deadlines_from_an_index_on_postgresql(tmp_path):
    """The same report when the archive's index is on PostgreSQL (`--db postgresql://...`)."""
    from tests.support.custody import pg_database

    with pg_database() as url:
        c = Centre(tmp_path, db=url)
        late = c.item(NOW - dt.timedelta(hours=26), officer=LI)
        c.item(NOW - dt.timedelta(hours=2), officer=ZHANG)
        c.close()
        rep = json.loads(run(["report", "deadlines", "--archive", str(c.root), "--db", url, "--period",
                              f"{(NOW - dt.timedelta(days=2)).date()}..{NOW.date()}", "--json"], check=True).stdout)
        assert [(i["item"], i["officer_name"]) for i in rep["late"]] == [(late, "李四")]
        assert 1.9 < rep["late"][0]["late_by_h"] < 2.2 and len(rep["items"]) == 2
        assert not (c.root / "archive.db").exists()  # read from PostgreSQL, no SQLite index made
