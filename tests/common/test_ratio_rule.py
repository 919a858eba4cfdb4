"""The equipment ratio (issue 16 item 2): a recorder counts only when enrolled, assigned and
healthy, each one left out says why, the thresholds come from configuration, and the station's
report, the monitor's unit view and ``report ratio`` give the same number for the same unit and
moment (agent/common/ratio.py, one rule). A real docking station with the pty recorder simulator,
the monitor's real ingest and database, and the CLI."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from agent.common import ratio as rule
from agent.monitor import reports
from agent.monitor.enrolment import Enrolment
from agent.monitor.ingest import Ingest, IngestSettings
from agent.monitor.state import MonitorDB, connect, fleet
from tests.support.health import EDGE
from tools.fleet_sim import SimDevice
from tests.dock.test_dock import env, make_cfg, media, media_master, start_sim, start_station  # noqa: F401 (fixtures)

UNIT = "330100000001"  # the simulator's unit
FIELDS = ("recorders", "officers", "ratio", "ratio_pct", "min_ratio_pct", "ratio_ok", "rooms", "min_rooms", "compliant")


def test_the_rule():
    assert rule.exclusion(in_service=True, assigned=True, auth_ok=True, conflict=False) is None
    assert rule.exclusion(in_service=True, assigned=True, auth_ok=None, conflict=False) is None  # never checked yet
    assert rule.exclusion(in_service=True, assigned=True, auth_ok=False, conflict=False) == "auth_failed"
    assert rule.exclusion(in_service=True, assigned=False, auth_ok=True, conflict=False) == "unassigned"
    assert rule.exclusion(in_service=True, assigned=True, auth_ok=True, conflict=True) == "conflict"
    assert rule.exclusion(in_service=False, assigned=False, auth_ok=False, conflict=True) == "not_in_service"
    assert rule.meets_ratio(1, 5, 20) is True and rule.meets_ratio(1, 5, 25) is False
    assert rule.meets_ratio(0, 0, 20) is True and rule.meets_ratio(3, None, 20) is None
    assert rule.meets_ratio(2, 11, 18) is True and rule.ratio_pct(2, 11) == 18  # 18.18 %: exact, not the rounded pct
    t = rule.thresholds_of([{"min_ratio_pct": 20, "min_rooms": 1}, {"min_ratio_pct": 25, "min_rooms": None}])
    assert t == rule.Thresholds(25, 1, "config"), "stations that disagree: the strictest"
    assert rule.thresholds_of([]) == rule.Thresholds(20, 1, "default")
    # a station with the unit policy in force: the newest policy wins over any station's config
    pol = [{"min_ratio_pct": 25, "min_rooms": 1, "threshold_source": "config"},
           {"min_ratio_pct": 10, "min_rooms": 2, "threshold_source": "policy", "policy_version": 3, "policy_key_id": "ab" * 8},
           {"min_ratio_pct": 50, "min_rooms": 0, "threshold_source": "policy", "policy_version": 2, "policy_key_id": "ab" * 8}]
    assert rule.thresholds_of(pol) == rule.Thresholds(10, 2, "policy", 3, "ab" * 8)


def _roster(path, n):
    path.write_text("officer_number,name,unit,unit_name\n000123,张三,%s,杭州市城市管理局\n" % UNIT
                    + "".join(f"{i:06d},P{i},{UNIT},杭州市城市管理局\n" for i in range(200, 200 + n - 1)),
                    encoding="utf-8")
    return path


def _undocked(st, timeout=10.0):
    deadline = time.monotonic() + timeout
    while st.bay("bay-1").get("docked") is not False:
        assert time.monotonic() < deadline, f"the unplug was not seen: {st.bay('bay-1')}"
        time.sleep(0.05)


def _unit(payload):
    return next(u for u in payload["units"] if u["unit_code"] == UNIT)


def _same_everywhere(tmp_path, payload):
    """The station's payload through the monitor's real ingest: the page's unit row and
    ``report ratio`` (library and CLI) for the same moment."""
    db_path = tmp_path / "m.db"
    db = MonitorDB(db_path)
    dev = SimDevice("dock-0001", UNIT, "杭州市城市管理局", "dock")
    ing = Ingest(db, IngestSettings(), Enrolment.of([(dev.id, dev.unit_code, dev.key.public_key())]))
    for kind, body in (("health", dev.health()), ("ratio", payload)):  # signed by the device, as an agent does
        topic = f"edge/dev/dock-0001/{kind}"
        assert ing.handle(topic, dev.seal(topic, json.dumps(body).encode()), now=time.time()) == "accepted"
    ing.flush()
    db.close()
    conn = connect(db_path, readonly=True)
    page = next(u for u in fleet(conn, 60)["units"] if u["code"] == UNIT)
    today = time.strftime("%Y-%m-%d")
    lib = reports.build(conn, "ratio", UNIT, *reports.period(None, today))["units"][0]
    conn.close()
    p = subprocess.run([EDGE, "report", "ratio", "--db", str(db_path), "--unit", UNIT, "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cli = json.loads(p.stdout)["units"][0]
    assert {k: page[k] for k in FIELDS} == {k: lib[k] for k in FIELDS} == {k: cli[k] for k in FIELDS}
    return page


def test_a_recorder_that_failed_its_password_check_does_not_count(env, media, tmp_path):  # noqa: F811
    data, ports, made = env
    cfg = make_cfg(data, ports, **{"device.unit_code": UNIT, "dock.min_ratio_pct": 20, "dock.min_rooms": 0})
    st = start_station(made, cfg)
    reg = st.dock.registry
    reg.import_roster(_roster(tmp_path / "officers.csv", 5))
    sim = start_sim(made, media, ports / "ttyREC1", wrong_password=True)
    st.wait("bay-1", ("error",))
    payload = st.dock.ratio_payload()
    u = _unit(payload)
    assert (u["officers"], u["recorders_in_service"], u["meets_minimum"], u["recorders_registered"]) == (5, 0, False, 1)
    assert u["excluded"] == [{"serial": "1234567", "reason": "auth_failed",
                              "text": "上次接入时管理员密码校验失败 / failed its admin password check at its last docking"}]
    assert payload["min_ratio_pct"] == 20 and payload["min_rooms"] == 0
    page = _same_everywhere(tmp_path / "a", payload)
    assert (page["recorders"], page["ratio_ok"], page["rooms_ok"], page["compliant"]) == (0, False, True, False)
    # the same recorder with the right password: it counts (1 of 5 officers = 20 %)
    sim.stop()
    _undocked(st)
    start_sim(made, media, ports / "ttyREC1")
    st.wait("bay-1", ("done", "uploading"))
    payload = st.dock.ratio_payload()
    u = _unit(payload)
    assert (u["recorders_in_service"], u["ratio_pct"], u["meets_minimum"], u["excluded"]) == (1, 20, True, [])
    assert u["recorder_serials"] == ["1234567"]
    page = _same_everywhere(tmp_path / "b", payload)
    assert (page["recorders"], page["ratio"], page["ratio_ok"], page["compliant"]) == (1, 0.2, True, True)


def test_thresholds_come_from_the_station_configuration(env, media, tmp_path):  # noqa: F811
    """dock.min_ratio_pct 25 and dock.min_rooms 1: the station, the page and the report all say
    1 recorder for 5 officers is short, and a unit without a room is not compliant."""
    data, ports, made = env
    cfg = make_cfg(data, ports, **{"device.unit_code": UNIT, "dock.min_ratio_pct": 25, "dock.min_rooms": 1})
    st = start_station(made, cfg)
    st.dock.registry.import_roster(_roster(tmp_path / "officers.csv", 5))
    start_sim(made, media, ports / "ttyREC1")
    st.wait("bay-1", ("done", "uploading"))
    payload = st.dock.ratio_payload()
    u = _unit(payload)
    assert (u["recorders_in_service"], u["ratio_pct"], u["min_ratio_pct"], u["meets_minimum"]) == (1, 20, 25, False)
    page = _same_everywhere(tmp_path / "m", payload)
    assert (page["ratio_ok"], page["min_ratio"], page["min_ratio_pct"]) == (False, 0.25, 25)
    assert (page["rooms"], page["min_rooms"], page["rooms_ok"], page["compliant"]) == (0, 1, False, False)


def test_unassigned_recorder_is_listed_out_by_the_cli(env, media, tmp_path):  # noqa: F811
    """A recorder whose officer is not on the station's roster does not count; `dock report ratio`
    names it and the reason (the station runs from its own configuration file)."""
    from agent.dock.registry import Registry

    data, ports, made = env
    cfg = make_cfg(data, ports, **{"device.unit_code": UNIT})
    st = start_station(made, cfg)
    reg = st.dock.registry
    path = tmp_path / "officers.csv"
    path.write_text(f"officer_number,name,unit\n000999,李四,{UNIT}\n", encoding="utf-8")
    reg.import_roster(path)
    start_sim(made, media, ports / "ttyREC1")
    st.wait("bay-1", ("done", "uploading"))
    u = _unit(st.dock.ratio_payload())
    assert u["recorders_in_service"] == 0 and [x["reason"] for x in u["excluded"]] == ["unassigned"]
    st.stop()
    made["stations"].clear()
    rows = Registry(data).ratio()
    assert [x["serial"] for r in rows for x in r.excluded] == ["1234567"]


@pytest.mark.parametrize("bad", [{"min_ratio_pct": 0}, {"min_ratio_pct": "20"}, {"min_rooms": -1}, {"min_rooms": True}])
def test_a_ratio_report_with_bad_thresholds_is_refused(tmp_path, bad):
    from agent.wire.health import PayloadError
    from agent.wire.health_parse import parse_ratio

    body = {"device": "d1", "at": "2026-11-27T09:00:00+08:00", "units": [], **bad}
    with pytest.raises(PayloadError, match=f"ratio.{next(iter(bad))}"):
        parse_ratio(json.dumps(body).encode(), "d1")
