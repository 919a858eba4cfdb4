"""The unit policy's rules enforced at the station (issue 18): each applied through a signed policy
document the station's policy keeper verified, then

* the allowed case-number pattern: a case number outside it refused, with the bilingual error, at
  ingest (the CLI too, nothing copied), when annotated, and at an interview room's start;
* the upload deadline: one ``upload_overdue`` alarm per officer and recorder, retained and signed on
  a real broker, measured from the end of capture corrected by the sealed drift (the clock moved,
  not slept), cleared when the items reach the archive; no alarm without a policy;
* the quota: ``quota_exceeded`` while the unarchived backlog is above it, cleared below.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from agent.common.errors import MetadataError
from agent.evidence import keys
from agent.health import make_component
from agent.policy.keeper import PolicyKeeper
from agent.runtime import Agent
from agent.store.ingest import ingest
from agent.wire import policy as wp
from tests.support.broker import login
from tests.support.health import Capture, ContractUplink
from tests.support.spine import META, make_config, make_store, run_cli

DEV = "dock-01"
UNIT = "330100000000"
GOOD, BAD = META["case_number"], "ABC-2026-1"
NOW = dt.datetime.now().astimezone().replace(microsecond=0)


def apply_policy(store, tmp_path, rules: dict, version: int = 1) -> None:
    """Sign ``rules`` with a policy key the station pins, and have its keeper apply it."""
    kp = tmp_path / "policy.key"
    key = keys.load_private(kp) if kp.exists() else keys.generate(kp, tmp_path / "policy.pub")
    ring = keys.KeyRing()
    ring.add(key.public_key())
    payload = wp.sign(key, UNIT, version, wp.content_from({"rules": rules}), now=time.time())
    assert PolicyKeeper(store, UNIT, lambda: ring).offer(payload, "test") == "applied"


def _file(tmp_path):
    p = tmp_path / f"f-{os.urandom(3).hex()}.bin"
    p.write_bytes(os.urandom(2000))
    return p


def _item(store, tmp_path, end: dt.datetime, officer=("33010001", "张三"), **meta) -> str:
    m = dict(META, collector={"name": officer[1], "id": officer[0]},
             capture_start=(end - dt.timedelta(minutes=5)).isoformat(), capture_end=end.isoformat(), **meta)
    return ingest(store, [_file(tmp_path)], m)["item_id"]


def test_case_number_pattern_refused_at_ingest_annotation_and_room_start(tmp_path):
    store = make_store(tmp_path)
    _item(store, tmp_path, NOW, case_number=BAD)  # no policy yet: any well-formed number
    apply_policy(store, tmp_path, {"case_number_pattern": "^杭.*号$"})
    before = len(store.items())
    with pytest.raises(MetadataError, match="案件编号不符合本单位策略规定的格式 / case number 'ABC-2026-1' does not "
                                            r"match the unit policy's case-number pattern \^杭\.\*号\$ \(policy version 1\)"):
        _item(store, tmp_path, NOW, case_number=BAD)
    assert len(store.items()) == before  # nothing copied
    ok = _item(store, tmp_path, NOW)  # 杭司罚〔2026〕第0123号
    with pytest.raises(MetadataError, match="案件编号不符合"):
        store.annotate(ok, {"case_number": BAD}, reason="改号")
    store.annotate(ok, {"case_number": "杭司罚〔2026〕第0124号"}, reason="改号")
    store.close()

    # what an operator sees at the command line
    p = run_cli(make_config(tmp_path), "ingest", str(_file(tmp_path)), "--case", BAD, "--collector", "张三",
                "--collector-id", "33010001", "--place", META["place"], "--proof", META["proof"],
                "--captured-at", NOW.isoformat(), "--kind", "other", "-q")
    assert p.returncode != 0 and "案件编号不符合本单位策略规定的格式 / case number 'ABC-2026-1'" in p.stderr

    # an interview room refuses to start recording under such a number
    from agent.config import Config
    from agent.room.service import RoomService
    from tests.room.test_room_session import FIELDS

    cfg = Config.defaults(**{"storage__data_dir": str(tmp_path / "room"), "storage__reserve_mb": 0,
                             "device__id": "room-0001", "device__kind": "room"})
    agent = Agent(cfg)
    keys.generate(agent.store.key_path, agent.store.pub_path)
    apply_policy(agent.store, tmp_path, {"case_number_pattern": "^杭.*号$"})
    agent.add(RoomService(agent))
    agent.start()
    try:
        with pytest.raises(MetadataError, match="案件编号不符合本单位策略规定的格式"):
            agent.commands["room.start"](dict(FIELDS, case=BAD), "test")
        assert agent.store.items() == []
    finally:
        agent.stop()


@pytest.fixture
def station(tmp_path, broker):
    store = make_store(tmp_path, mqtt__port=broker.port, health__interval_s=3600, storage__reserve_mb=1)
    agent = Agent(store.cfg, store)
    agent.uplink = ContractUplink(broker.port, DEV)
    h = make_component(agent)
    agent.add(h)
    cap = Capture(broker.port, f"edge/dev/{DEV}/alarm/#")
    yield store, h, cap
    agent.uplink.stop()
    cap.close()


def _alarm(cap, key, active):
    _, p = cap.wait_for(lambda t, p: t == f"edge/dev/{DEV}/alarm/{key}" and p and p["active"] is active)
    return p


def test_upload_deadline_alarm_per_officer_and_recorder_cleared_on_arrival(station, tmp_path):
    store, h, cap = station
    h.clock = lambda: NOW
    li = ("33010002", "李四")
    # 李四's recorder RX0001 ran 10 h fast: its clock says the capture ended 20 h ago, it ended 30 h ago
    late = _item(store, tmp_path, NOW - dt.timedelta(hours=20), officer=li, recorder={"serial": "RX0001", "id": None},
                 clock_offset_ms=10 * 3600 * 1000, clock_offset_measured_at=NOW.isoformat(),
                 clock_offset_source="measured")
    zhang = _item(store, tmp_path, NOW - dt.timedelta(hours=3))
    assert not [a for a in h.tick()["alarms"] if a.startswith("upload_overdue")], "no policy: no deadline alarm"

    apply_policy(store, tmp_path, {"upload_deadline_h": 24})
    assert [a for a in h.tick()["alarms"] if a.startswith("upload_overdue")] == ["upload_overdue.33010002.RX0001"]
    a = _alarm(cap, "upload_overdue.33010002.RX0001", True)
    assert a["severity"] == "warning" and a["device"] == DEV
    assert a["message"]["en"] == ("officer 33010002 李四 (recorder RX0001): 1 item(s) not archived within the 24 h "
                                  "upload deadline, the worst 6.0 h over")
    assert a["message"]["zh"].startswith("警员 33010002 李四（记录仪 RX0001）有 1 个资料超过上传时限 24 小时")

    # 22 hours later 张三's item (ended 3 h before) is past the deadline too: an alarm of its own
    h.clock = lambda: NOW + dt.timedelta(hours=22)
    keys_now = [a for a in h.tick()["alarms"] if a.startswith("upload_overdue")]
    assert keys_now == ["upload_overdue.33010001.dock-01", "upload_overdue.33010002.RX0001"]
    # 李四's item reaches the archive: his alarm clears, 张三's stays
    store.set_state(late, "archived")
    assert [a for a in h.tick()["alarms"] if a.startswith("upload_overdue")] == ["upload_overdue.33010001.dock-01"]
    cleared = _alarm(cap, "upload_overdue.33010002.RX0001", False)
    assert cleared["cleared"]
    store.set_state(zhang, "archived")
    assert not [a for a in h.tick()["alarms"] if a.startswith("upload_overdue")]
    _alarm(cap, "upload_overdue.33010001.dock-01", False)


def test_quota_alarm_from_the_policy(station, tmp_path):
    store, h, cap = station
    a, b = _item(store, tmp_path, NOW), _item(store, tmp_path, NOW)
    assert "quota_exceeded" not in h.tick()["alarms"]
    apply_policy(store, tmp_path, {"quotas": {"max_unarchived_items": 1}})
    assert "quota_exceeded" in h.tick()["alarms"]
    p = _alarm(cap, "quota_exceeded", True)
    assert p["message"]["en"].startswith("2 unarchived item(s), 0.0 GB: above the unit policy's quota (1 items / - GB)")
    store.set_state(a, "archived")
    assert "quota_exceeded" not in h.tick()["alarms"]
    _alarm(cap, "quota_exceeded", False)


def test_the_monitor_shows_the_deadline_alarm_per_officer_and_recorder(tmp_path, make_broker):
    """The whole path: the centre publishes a signed policy (24 h), the station (`edge-agent run`'s
    agent, in process) applies it and, with 李四's item 30 h old and unarchived, raises the alarm;
    the `edge-agent monitor` process shows it for that station until the item is archived."""
    import json

    from agent.archive import policy as ap
    from agent.wire.client import ConnSettings
    from agent.wire.topics import Topics
    from tests.policy.test_policy import Clock, Station
    from tests.support.health import MonitorProc
    from tests.support.uplink import agent_config, open_store, run

    mq = make_broker()
    root = tmp_path / "archive"
    dev = "dock-0001"
    run(["archive", "policy", "key", "--new", "--root", str(root)], check=True)
    cfg = agent_config(tmp_path, mq.port, dev, dock__bays=[str(tmp_path / "no-bays" / "*")])
    store = open_store(cfg)
    run(["archive", "enroll", dev, str(store.pub_path), "--unit", UNIT, "--root", str(root),
         "--pin-to", str(store.data_dir)], check=True)
    store.close()
    mon = MonitorProc(tmp_path / "monitor.db", mq.port, lost_after=600, enrolment=root)
    st = None
    try:
        st = Station(cfg, Clock(time.time()))
        payload = wp.sign(ap.signing_key(root), UNIT, 1, wp.content_from({"rules": {"upload_deadline_h": 24}}),
                          now=time.time())
        ap.publish(ConnSettings("127.0.0.1", mq.port, "test-archive", keepalive=10,
                             **login(mq.port, "archive", "archive")), Topics("edge").unit_policy(UNIT),
                   payload)
        st.wait(1)
        late = _item(st.agent.store, tmp_path, NOW - dt.timedelta(hours=30), officer=("33010002", "李四"))
        st.agent.health.tick()

        def alarms():
            p = run(["monitor", "fleet", "--db", str(tmp_path / "monitor.db"), "--lost-after", "600", "--json"],
                    check=True)
            return {(a["device"], a["key"]): a for a in json.loads(p.stdout)["alarms"]}

        key = (dev, f"upload_overdue.33010002.{dev}")
        deadline = time.monotonic() + 30
        while key not in alarms():
            assert time.monotonic() < deadline, f"the monitor never showed {key}: {alarms()}"
            time.sleep(0.2)
        shown = alarms()[key]
        assert shown["severity"] == "warning" and "upload deadline" in shown["message_en"]
        st.agent.store.set_state(late, "archived")   # the receipt arrived
        st.agent.health.tick()
        deadline = time.monotonic() + 30
        while key in alarms():
            assert time.monotonic() < deadline, "the monitor kept the alarm after the item was archived"
            time.sleep(0.2)
    finally:
        if st is not None:
            st.stop()
        assert mon.stop() == 0
