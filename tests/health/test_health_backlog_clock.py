"""The backlog_old and clock_drift alarms (issue 16 item 6): raised over their configured
thresholds and cleared below them, each as a retained alarm topic on a real broker, with a real
store whose oldest unarchived item is older than ``health.backlog_alarm_s`` and an uplink (the
shared contract) reporting the clock offset it measured against the archive."""

from __future__ import annotations

import time

import pytest

from agent.health import make_component
from agent.runtime import Agent
from agent.store.ingest import ingest
from tests.support.health import Capture, ContractUplink, body_of, retained
from tests.support.spine import META, make_store

DEV = "dock-01"


class MeasuringUplink(ContractUplink):
    """The contract uplink plus the offset the real uplink measures against the archive."""

    offset_ms: int | None = None

    def stats(self):
        return dict(super().stats(), clock_offset_ms=self.offset_ms)


@pytest.fixture
def station(tmp_path, broker):
    store = make_store(tmp_path, mqtt__port=broker.port, health__backlog_alarm_s=3600,
                       health__clock_drift_alarm_ms=2000, health__interval_s=3600, storage__reserve_mb=1)
    agent = Agent(store.cfg, store)
    agent.uplink = MeasuringUplink(broker.port, DEV)
    h = make_component(agent)
    agent.add(h)
    cap = Capture(broker.port, f"edge/dev/{DEV}/alarm/#")
    yield store, agent, h, cap
    agent.uplink.stop()
    cap.close()


def _alarm(cap, key, active, start=0):
    _, p = cap.wait_for(lambda t, p: t == f"edge/dev/{DEV}/alarm/{key}" and p and p["active"] is active, start=start)
    return p


def _ingest(store, tmp_path):
    f = tmp_path / "note.txt"
    f.write_text("statement\n")
    return ingest(store, [f], dict(META, capture_start="2026-11-27T09:00:00+08:00"))


def test_backlog_old_raised_over_the_threshold_and_cleared_when_archived(station, tmp_path, broker):
    store, agent, h, cap = station
    m = _ingest(store, tmp_path)
    assert "backlog_old" not in h.tick()["alarms"], "a fresh item is no backlog"
    # the same item two hours later (the ledger's creation time moved back, as after a long outage)
    store.set_state(m["item_id"], "sealed", created_ts=time.time() - 7200)
    body = h.tick()
    assert body["buffer"]["oldest_age_s"] >= 7200 and "backlog_old" in body["alarms"]
    a = _alarm(cap, "backlog_old", True)
    assert a["severity"] == "warning" and a["message"]["en"] == "oldest unarchived item older than 1 h"
    assert a["message"]["zh"] == "最早未归档资料已超过 1 小时"
    since = a["since"]
    h.tick()  # still old: the alarm stays, its since kept
    assert [x.since for x in h.alarms.active() if x.code == "backlog_old"] == [since]
    store.set_state(m["item_id"], "archived")
    assert "backlog_old" not in h.tick()["alarms"]
    cleared = _alarm(cap, "backlog_old", False)
    assert cleared["since"] == since and cleared["cleared"]
    assert body_of(retained(broker.port, f"edge/dev/{DEV}/alarm/#")[f"edge/dev/{DEV}/alarm/backlog_old"])[
        "active"] is False


def test_backlog_under_the_threshold_raises_nothing(station, tmp_path):
    store, agent, h, cap = station
    m = _ingest(store, tmp_path)
    store.set_state(m["item_id"], "sealed", created_ts=time.time() - 3500)
    assert "backlog_old" not in h.tick()["alarms"]


def test_clock_drift_raised_either_way_over_the_limit_and_cleared(station, broker):
    store, agent, h, cap = station
    up = agent.uplink
    up.offset_ms = None  # not measured: no alarm (an unknown offset is not a drift)
    assert "clock_drift" not in h.tick()["alarms"]
    up.offset_ms = 2000  # at the limit: not above it
    assert "clock_drift" not in h.tick()["alarms"]
    up.offset_ms = 4200
    body = h.tick()
    assert body["clock"]["offset_ms"] == 4200 and "clock_drift" in body["alarms"]
    a = _alarm(cap, "clock_drift", True)
    assert a["message"]["en"] == "clock offset above 2000 ms" and a["message"]["zh"] == "时钟偏差超过 2000 毫秒"
    up.offset_ms = 150
    assert "clock_drift" not in h.tick()["alarms"]
    n = len(cap.msgs)
    _alarm(cap, "clock_drift", False)
    up.offset_ms = -4200  # behind the archive counts as much as ahead
    assert "clock_drift" in h.tick()["alarms"]
    _alarm(cap, "clock_drift", True, start=n)
    up.offset_ms = -10
    assert "clock_drift" not in h.tick()["alarms"]
    kept = retained(broker.port, f"edge/dev/{DEV}/alarm/#")
    assert body_of(kept[f"edge/dev/{DEV}/alarm/clock_drift"])["active"] is False
