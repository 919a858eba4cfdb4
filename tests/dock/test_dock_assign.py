"""`dock assign` (issue 15): officer and unit written into the docked recorder (WriteZFYInfo) over the
station's control socket, read back, kept and audited; a recorder whose officer disagrees with the
station's assignment is flagged at docking and its files are sealed with both values. Real simulator
on a pty, real store, real control socket, and the CLI against a real `edge-agent run`."""

from __future__ import annotations

import json

import pytest

from agent.common import control
from agent.common.errors import EdgeError
from agent.dock.display import bay_rows
from tests.dock.test_dock import env, make_cfg, media, media_master, sealed_items, start_sim, start_station  # noqa: F401
from tests.dock.test_dock_process import cli, proc_env, run_agent, wait_bay, write_config  # noqa: F401

ROSTER = ("officer_number,name,unit,unit_name\n"
          "000123,张三,330100000001,杭州市城市管理局\n"
          "004711,李四,330100000002,杭州市公安局西湖分局\n"
          "009999,王五,3301000000012345,单位编号过长\n")


def station_with_socket(made, cfg, tmp_path):
    st = start_station(made, cfg)
    roster = tmp_path / "officers.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    st.dock.registry.import_roster(roster)
    server = control.ControlServer(st.agent)
    server.start()
    made.setdefault("servers", []).append(server)
    return st, server


@pytest.fixture
def cenv(env):
    data, ports, made = env
    yield data, ports, made
    for s in made.get("servers", []):
        s.stop()


def assign(cfg, serial, officer) -> dict:
    return control.call(cfg.data_dir, "dock.assign", {"serial": serial, "officer": officer}, timeout=30)


def audit(st, action):
    return [json.loads(e["detail"]) | {"actor": e["actor"]} for e in st.store.audit.entries(action=action)]


@pytest.mark.parametrize("policy", ["after-archive", "never"])  # bay still working (its connection) / done (own one)
def test_assign_writes_reads_back_keeps_and_audits(cenv, media, tmp_path, policy):
    data, ports, made = cenv
    cfg = make_cfg(data, ports, erase_policy=policy)
    st, _ = station_with_socket(made, cfg, tmp_path)
    sim = start_sim(made, media, ports / "ttyREC1")
    if policy == "after-archive":
        st.wait_state("bay-1", ("uploading",), timeout=30)   # waits for the archive: the worker holds the port
    else:
        st.wait("bay-1", ("done",))
    assert st.dock.bays["bay-1"].busy is (policy == "after-archive")
    r = assign(cfg, "1234567", "004711")
    assert r["before"]["officer_number"] == "000123" and r["bay"] == "bay-1"
    assert r["after"] == {"serial": "1234567", "officer_number": "004711", "officer_name": "李四",
                          "unit_number": "330100000002", "unit_name": "杭州市公安局西湖分局"}
    assert sim.info.officer_number == "004711" and sim.info.unit_name == "杭州市公安局西湖分局"
    a = st.dock.registry.assignment("1234567")
    assert (a["officer_number"], a["unit_number"]) == ("004711", "330100000002") and a["actor"].startswith("local:")
    (entry,) = audit(st, "assign")
    assert entry["ok"] and entry["before"]["officer_number"] == "000123" and entry["after"]["officer_number"] == "004711"
    st.store.verify_audit()
    b = st.bay("bay-1")
    assert (b["officer_number"], b["assignment"]["agree"]) == ("004711", True)
    assert st.dock.registry.recorders()[0]["officer_number"] == "004711"
    # the files already sealed were recorded under the old record: they keep it
    assert {i["collector_id"] for i in sealed_items(st.store)} == {"000123"}


def test_refusals_write_nothing(cenv, media, tmp_path):
    data, ports, made = cenv
    cfg = make_cfg(data, ports, erase_policy="never")
    st, _ = station_with_socket(made, cfg, tmp_path)
    sim = start_sim(made, media, ports / "ttyREC1")
    st.wait("bay-1", ("done",))
    cases = [
        (("7654321", "004711"), "记录仪未接入 / recorder 7654321 is not docked"),
        (("1234567", "000777"), "警员不在名册 / officer 000777 is not in the roster"),
        (("1234567", "009999"), "不符合记录仪信息格式 / the roster entry does not fit .*unit_number"),
        (("", "004711"), "dock.assign needs args"),
    ]
    for (serial, officer), msg in cases:
        with pytest.raises(EdgeError, match=msg):
            assign(cfg, serial, officer)
    assert sim.writes == [] and st.dock.registry.assignment("1234567") is None
    assert audit(st, "assign") == []


def test_wrong_password_is_refused_and_audited(cenv, media, tmp_path):
    data, ports, made = cenv
    cfg = make_cfg(data, ports)
    st, _ = station_with_socket(made, cfg, tmp_path)
    sim = start_sim(made, media, ports / "ttyREC1", wrong_password=True)
    st.wait("bay-1", ("error",))   # docked, identified, refused at the password
    with pytest.raises(EdgeError, match="writing the assignment into recorder 1234567 failed: 管理员密码错误"):
        assign(cfg, "1234567", "004711")
    assert sim.writes == [] and st.dock.registry.assignment("1234567") is None
    (entry,) = audit(st, "assign")
    assert entry["ok"] is False and "wrong admin password" in entry["error"]


def test_recorder_disagreeing_with_the_assignment_is_flagged_and_sealed_with_both(cenv, media, tmp_path):
    data, ports, made = cenv
    cfg = make_cfg(data, ports, erase_policy="never")
    st, _ = station_with_socket(made, cfg, tmp_path)
    st.dock.registry.assign("1234567", "004711", "李四", "330100000002", "杭州市公安局西湖分局", actor="test")
    start_sim(made, media, ports / "ttyREC1")   # the recorder still says 000123 张三
    b = st.wait("bay-1", ("error",))   # copied and sealed, then left showing the problem for review
    assert "记录仪警员与采集站分配不符" in b["reason"] and b["sealed"] == 5
    a = b["assignment"]
    assert a["agree"] is False and a["recorder"]["officer_number"] == "000123"
    assert a["station"]["officer_number"] == "004711"
    # flagged: the dock's alarm, the health component's (the AlarmPort), the bay view, the problems, the audit
    assert any(x["code"] == "recorder_officer_mismatch" for x in st.dock.status()["alarms"])
    assert any(x.code == "recorder_officer_mismatch" for x in st.health.alarms.active())
    row = next(r for r in bay_rows(st.dock.status()) if r["bay"] == "bay-1")
    assert "张三 000123" in row["officer"] and "≠ 分配 assigned 李四 004711" in row["officer"]
    assert any("记录仪警员与采集站分配不符" in p for p in b["problems"])
    (m,) = audit(st, "assign-mismatch")
    assert m["recorder"]["officer_number"] == "000123" and m["station"]["officer_number"] == "004711"
    # every file sealed with both values
    items = sealed_items(st.store)
    assert len(items) == 5
    for it in items:
        meta = json.loads(st.store.sealed_manifest(it["id"]))["metadata"]
        assert meta["collector"]["id"] == "000123"
        assert meta["assignment"]["recorder"]["officer_number"] == "000123"
        assert meta["assignment"]["station"]["officer_number"] == "004711" and meta["assignment"]["agree"] is False
    # writing the assignment ends the alarm
    assign(cfg, "1234567", "004711")
    assert not any(x["code"] == "recorder_officer_mismatch" for x in st.dock.status()["alarms"])
    assert st.bay("bay-1")["assignment"]["agree"] is True


def test_cli_assign_against_a_running_station(proc_env, media):
    tmp, ports, made = proc_env
    config = write_config(tmp, ports, erase_policy="never")
    data = tmp / "data"
    roster = tmp / "officers.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    cli(config, "roster", "import", str(roster))
    r = cli(config, "dock", "assign", "1234567", "004711", check=False)
    assert r.returncode != 0 and "edge-agent 服务未运行 / the edge-agent service is not running" in r.stderr
    sim = start_sim(made, media, ports / "ttyREC1")
    run_agent(made, config, tmp / "agent.log")
    wait_bay(data, "bay-1", lambda b: b["state"] == "done", timeout=60)
    out = cli(config, "dock", "assign", "1234567", "004711").stdout
    assert "written and read back" in out and "004711 李四 · 330100000002" in out and "000123 张三" in out
    assert sim.info.officer_number == "004711"
    r = cli(config, "dock", "assign", "1234567", "000777", check=False)
    assert r.returncode != 0 and "officer 000777 is not in the roster" in r.stderr and "Traceback" not in r.stderr
    entries = json.loads(cli(config, "audit", "list", "--action", "assign", "--json").stdout)
    assert len(entries) == 1 and json.loads(entries[0]["detail"])["after"]["officer_number"] == "004711"
