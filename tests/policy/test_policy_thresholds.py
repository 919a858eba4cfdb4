"""The equipment thresholds are a rule of the signed unit policy (issue 16 item 2, issue 18):
a station, the monitor (page/API) and `report ratio` judge a unit by the policy in force, the
station's dock.min_ratio_pct / dock.min_rooms only while no policy has been applied, and each
says which source it used. A forged policy changes nothing.

A real Mosquitto, the station of `edge-agent run` in process (uplink, health, dock, policy), the
`edge-agent monitor` process; the policy is signed with the archive root's policy key and
published retained on the unit's topic as `archive policy publish` does."""

from __future__ import annotations

import json
import time

import pytest

from agent.archive import policy as ap
from agent.evidence import keys
from agent.wire import policy as wp
from agent.wire.client import ConnSettings
from agent.wire.topics import Topics
from tests.policy.test_policy import DEADLINE, Clock, Station
from tests.support.broker import login
from tests.support.health import MonitorProc
from tests.support.uplink import UNIT, agent_config, open_store, run

T = Topics("edge")
DEV = "dock-0001"


def policy_toml(min_recorders: int, per_officers: int, min_rooms: int) -> str:
    return f"""
[rules.equipment]
min_recorders = {min_recorders}
per_officers = {per_officers}
min_rooms = {min_rooms}

[[units]]
code = "{UNIT}"
name = "示例执法单位"
""" + "".join(f'\n[[officers]]\nnumber = "3301000{i}"\nname = "警员{i}"\nunit = "{UNIT}"\n' for i in range(1, 5))


def test_the_rule_is_checked_when_the_policy_file_is_read(tmp_path):
    assert wp.Equipment().min_ratio_pct == 20 and wp.Equipment().min_rooms == 1  # 1 per 5, one room
    assert wp.Equipment(min_recorders=2, per_officers=5).min_ratio_pct == 40
    f = tmp_path / "p.toml"
    f.write_text(policy_toml(1, 3, 1), encoding="utf-8")
    with pytest.raises(Exception, match="1 recorder\\(s\\) per 3 officers is not a whole number per 100 officers"):
        ap.read_content(f)
    f.write_text(policy_toml(1, 5, 1).replace("min_rooms = 1", "min_rooms = -1"), encoding="utf-8")
    with pytest.raises(Exception, match="min_rooms"):
        ap.read_content(f)


def _fleet_unit(db) -> dict | None:
    f = json.loads(run(["monitor", "fleet", "--db", str(db), "--lost-after", "600", "--json"], check=True).stdout)
    return next((u for u in f["units"] if u["code"] == UNIT), None)


def _wait_unit(db, pred, what: str) -> dict:
    deadline = time.monotonic() + DEADLINE
    while True:
        u = _fleet_unit(db)
        if u is not None and pred(u):
            return u
        assert time.monotonic() < deadline, f"the monitor never showed {what}: {u}"
        time.sleep(0.2)


def test_a_signed_policy_sets_the_thresholds_of_station_and_monitor_and_a_forged_one_does_not(tmp_path, make_broker):
    mq = make_broker()
    root = tmp_path / "archive"
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    cfg = agent_config(tmp_path, mq.port, DEV, dock__bays=[str(tmp_path / "no-bays" / "*")], dock__min_ratio_pct=20,
                       dock__min_rooms=1)
    store = open_store(cfg)
    run(["archive", "enroll", DEV, str(store.pub_path), "--unit", UNIT, "--root", str(root),
         "--pin-to", str(store.data_dir)], check=True)
    store.close()
    roster = tmp_path / "officers.csv"  # the station's own roster before any policy: 4 officers, no recorder
    roster.write_text("officer_number,name,unit\n" + "".join(f"3301000{i},警员{i},{UNIT}\n" for i in range(1, 5)),
                      encoding="utf-8")
    run(["roster", "import", str(roster)], config=cfg, check=True)
    settings = ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10,
                             **login(mq.port, "archive", "archive"))

    def publish(version: int, toml: str, key=None) -> None:
        f = tmp_path / f"policy-{version}.toml"
        f.write_text(toml, encoding="utf-8")
        ap.publish(settings, T.unit_policy(UNIT),
                   wp.sign(key or ap.signing_key(root), UNIT, version, ap.read_content(f), now=time.time()))

    db = tmp_path / "monitor.db"
    mon = MonitorProc(db, mq.port, lost_after=600, enrolment=root)
    st = None
    try:
        st = Station(cfg, Clock(time.time()))
        dock = next(c for c in st.agent.components if c.name == "dock")
        # no policy yet: the station's config, and everyone says so
        p = dock.ratio_payload()
        assert (p["min_ratio_pct"], p["min_rooms"], p["thresholds"]["source"]) == (20, 1, "config")
        u = _wait_unit(db, lambda u: u["thresholds"]["source"] == "config", "the station's config thresholds")
        assert (u["min_ratio_pct"], u["min_rooms"], u["officers"], u["recorders"]) == (20, 1, 4, 0)
        local = run(["dock", "report", "ratio"], config=cfg, check=True).stdout
        assert "工作站配置 station config" in local and "尚未应用单位策略 no unit policy applied" in local

        # the unit policy says 1 recorder per 2 officers and no room needed
        publish(1, policy_toml(1, 2, 0))
        st.wait(1)
        assert st.keeper.outcomes == ["applied"]
        key_id = keys.key_id(ap.signing_key(root).public_key())
        p = dock.ratio_payload()
        assert (p["min_ratio_pct"], p["min_rooms"]) == (50, 0)
        assert p["thresholds"] == {"source": "policy", "policy_version": 1, "policy_key_id": key_id}
        assert p["units"][0]["threshold_source"] == "policy" and p["units"][0]["policy_version"] == 1
        u = _wait_unit(db, lambda u: u["thresholds"]["source"] == "policy", "the policy's thresholds")
        assert (u["min_ratio_pct"], u["min_rooms"], u["rooms_ok"], u["thresholds"]["policy_version"]) == (50, 0, True, 1)
        rep = json.loads(run(["report", "ratio", "--db", str(db), "--unit", UNIT, "--json"], check=True).stdout)
        r = rep["units"][0]
        assert (r["min_ratio_pct"], r["min_rooms"], r["thresholds"]) == (50, 0, u["thresholds"])
        csv_text = run(["report", "ratio", "--db", str(db), "--unit", UNIT, "--csv"], check=True).stdout
        assert "threshold_source" in csv_text.splitlines()[0] and ",policy," in csv_text.splitlines()[1]
        local = json.loads(run(["dock", "report", "ratio", "--json"], config=cfg, check=True).stdout)
        assert (local[0]["min_ratio_pct"], local[0]["threshold_source"], local[0]["policy_version"]) == (50, "policy", 1)

        # a forged policy (not the pinned policy key) with 1 per 10: refused, nothing changes
        forger = keys.generate(tmp_path / "forger.key", tmp_path / "forger.pub")
        publish(2, policy_toml(1, 10, 0), key=forger)
        st.wait(2)
        assert st.keeper.outcomes[-1] == "refused"
        dock.report_ratio()  # the station reports again: still the policy in force
        p = dock.ratio_payload()
        assert (p["min_ratio_pct"], p["thresholds"]["policy_version"]) == (50, 1)
        # a genuine version 3 (1 per 4): the monitor follows it, so it had the station's report after the forgery
        publish(3, policy_toml(1, 4, 1))
        st.wait(3)
        u = _wait_unit(db, lambda u: u["thresholds"]["policy_version"] == 3, "version 3")
        assert (u["min_ratio_pct"], u["min_rooms"]) == (25, 1)
        hist = __import__("sqlite3").connect(db).execute(
            "SELECT DISTINCT min_ratio_pct FROM ratio_history WHERE device = ? ORDER BY received", [DEV]).fetchall()
        assert [h[0] for h in hist] == [20, 50, 25], "the forged 10 was never reported"
        # a restart keeps the policy's thresholds (reapplied before the first report)
        st.stop()
        st = Station(cfg, Clock(time.time()))
        dock = next(c for c in st.agent.components if c.name == "dock")
        assert dock.ratio_payload()["thresholds"]["policy_version"] == 3
    finally:
        if st is not None:
            st.stop()
        assert mon.stop() == 0
