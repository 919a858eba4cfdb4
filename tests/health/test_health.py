"""Health component: metrics, alarms (raise/clear, retained, persistent), component status,
rebirth — with a real store, a real broker and real processes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jsonschema
import pytest

from agent import config as config_mod
from agent.health import make_component, metrics
from agent.health.alarms import CODES, AlarmRegistry
from agent.runtime import Agent
from agent.store.ingest import ingest
from tests.support.spine import META, make_store
from agent.wire.envelope import Sealer
from tests.support.health import (Capture, ContractUplink, asyncapi_schemas, body_of, envelope_of, retained,
                                  schema_for, verify_signed)


class FakeCamera:
    """A real component object (as producers are) whose state the test flips."""

    name = "room"

    def __init__(self):
        self.cam = "ok"

    def start(self):
        pass

    def stop(self):
        pass

    def status(self):
        return {"state": "recording", "segments": 3,
                "components": {"camera-main": {"state": self.cam}, "microphone": {"state": "ok", "peak": 0.4}}}


class Broken:
    name = "sensor"

    def start(self):
        pass

    def stop(self):
        pass

    def status(self):
        raise RuntimeError("modbus read timed out")


def _item(store, tmp_path: Path, name="a.mp4", seconds=90):
    f = tmp_path / name
    f.write_bytes(name.encode() * 1000)
    meta = dict(META, capture_start="2026-11-27T09:00:00+08:00",
                capture_end=f"2026-11-27T09:{seconds // 60:02d}:{seconds % 60:02d}+08:00")
    return ingest(store, [f], meta)


def test_alarm_registry_raise_clear_persist(tmp_path):
    store = make_store(tmp_path)
    sent: list[tuple[str, dict]] = []
    reg = AlarmRegistry.for_store(store, lambda k, p: sent.append((k, p)))
    a = reg.raise_("camera_offline", "主摄像头离线", "main camera offline", source="room", instance="camera-main")
    assert a.key == "camera_offline.camera-main" and a.severity == "critical"
    reg.raise_("camera_offline", "主摄像头离线", "main camera offline", source="room", instance="camera-main")
    assert len(sent) == 1, "an unchanged raise is not republished"
    reg.raise_("camera_offline", "主摄像头离线", "main camera offline", severity="warning", source="room",
               instance="camera-main")
    assert len(sent) == 2 and sent[1][1]["since"] == sent[0][1]["since"], "since kept across updates"
    schema = asyncapi_schemas()["alarm"]
    for _, p in sent:
        jsonschema.validate(p, schema)
    # a new registry on the same store (agent restart) knows the active alarm and can clear it
    reg2 = AlarmRegistry.for_store(store, lambda k, p: sent.append((k, p)))
    assert [x.key for x in reg2.active()] == ["camera_offline.camera-main"]
    assert reg2.clear("camera_offline", "room", "camera-main") is True
    assert sent[-1][1]["active"] is False and sent[-1][1]["cleared"]
    jsonschema.validate(sent[-1][1], schema)
    assert reg2.clear("camera_offline", "room", "camera-main") is False
    assert AlarmRegistry.for_store(store).active() == []


def test_alarm_registry_bad_input(tmp_path):
    reg = AlarmRegistry()
    with pytest.raises(ValueError, match="unknown alarm code 'disk_full'.*known: disk_low"):
        reg.raise_("disk_full", "x", "x")
    with pytest.raises(ValueError, match="severity 'fatal'"):
        reg.raise_("disk_low", severity="fatal")
    with pytest.raises(ValueError, match="instance 'bay/1'"):
        reg.raise_("recorder_battery_low", instance="bay/1")
    # every code has a bilingual default
    for code, d in CODES.items():
        assert d.zh and d.en and d.severity in ("info", "warning", "critical"), code
    # stored garbage does not stop a registry from starting
    reg = AlarmRegistry(load=lambda: "{not json")
    assert reg.active() == []


def test_metrics_collect_real_store(tmp_path):
    store = make_store(tmp_path)
    _item(store, tmp_path, "a.mp4", 90)
    _item(store, tmp_path, "b.mp4", 150)
    agent = Agent(store.cfg, store)
    agent.add(FakeCamera())
    agent.add(Broken())
    body = metrics.collect(agent, time.monotonic() - 5)
    assert body["buffer"]["items"] == 2 and body["buffer"]["bytes"] >= 10000
    assert body["buffer"]["oldest_age_s"] is not None
    assert body["usage"] == {"items_total": 2, "items_archived": 0, "recorded_s": 240}
    assert body["uptime_s"] >= 5 and body["disk"]["free_bytes"] > 0
    assert body["clock"]["source"] in ("adjtimex", "timedatectl", "unknown")
    # counted once: a second collect does not double the recorded seconds
    assert metrics.usage(store)["recorded_s"] == 240
    comps = metrics.component_statuses(agent)
    assert comps["room"]["state"] == "ok" and comps["camera-main"]["state"] == "ok"
    assert comps["sensor"]["state"] == "error" and "modbus" in comps["sensor"]["detail"]["error"]
    body.update(seq=1, alarms=[], components={n: {"state": c["state"]} for n, c in comps.items()})
    jsonschema.validate(body, asyncapi_schemas()["health"])


def test_clock_state_kernel():
    st = metrics.clock_state()
    assert st["source"] in ("adjtimex", "timedatectl", "unknown")
    if st["source"] == "adjtimex":
        assert isinstance(st["synchronized"], bool)
    # an offset the uplink measured against the archive is reported
    assert metrics.clock_state({"clock_offset_ms": 4200})["offset_ms"] == 4200


def _agent(tmp_path, port, **cfg):
    values = {"mqtt__port": port, "health__interval_s": 1, "storage__reserve_mb": 1, **cfg}
    store = make_store(tmp_path, **values)
    agent = Agent(store.cfg, store)
    agent.uplink = ContractUplink(port, store.cfg.device.id, sealer=Sealer.for_ledger(store))
    return agent


def test_health_publishes_retained_state_and_alarms(tmp_path, broker):
    """In-process agent, real broker: health, per-component retained status, alarms raised and
    cleared as retained topics, rebirth; every captured message validates against the AsyncAPI."""
    cap = Capture(broker.port, "edge/dev/#")
    # a huge reserve: disk_low must be raised (critical), and cleared when the reserve is lowered
    agent = _agent(tmp_path, broker.port, storage__reserve_mb=10**8, health__backlog_alarm_s=60)
    cam = FakeCamera()
    agent.add(cam)
    h = make_component(agent)
    agent.add(h)
    assert agent.health is h and "rebirth" in agent.commands
    h.start()
    try:
        _, hp = cap.wait_for(lambda t, p: t == "edge/dev/dock-01/health" and p and p["seq"] >= 1)
        assert "disk_low" in hp["alarms"] and hp["components"]["camera-main"]["state"] == "ok"
        _, a = cap.wait_for(lambda t, p: t == "edge/dev/dock-01/alarm/disk_low")
        assert a["active"] and a["severity"] == "critical" and "磁盘" in a["message"]["zh"]
        # a component raises through agent.health.alarms; its status change is published retained
        cam.cam = "offline"
        agent.health.alarms.raise_("camera_offline", "主摄像头离线", "main camera offline", source="room",
                                   instance="camera-main")
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/component/camera-main" and p and p["state"] == "offline")
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/alarm/camera_offline.camera-main" and p and p["active"])
        agent.health.alarms.clear("camera_offline", "room", "camera-main")
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/alarm/camera_offline.camera-main" and p
                     and p["active"] is False)
        # the disk recovers (reserve lowered): cleared by a retained active=false
        h.hcfg = config_mod.Config.defaults(**{"health.interval_s": 1}).health
        agent.store.reserve = 1 << 20
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/alarm/disk_low" and p and p["active"] is False)
        # rebirth: the uplink republishes everything retained and a health report follows at once
        n = len(cap.msgs)
        res = agent.commands["rebirth"]({}, "operator:test")
        assert res["ok"] and agent.uplink.rebirths == 1
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/status" and p["state"] == "online", start=n)
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/component/camera-main", start=n)
        cap.wait_for(lambda t, p: t == "edge/dev/dock-01/health" and p["seq"] == res["seq"], start=n)
    finally:
        h.stop()
        agent.uplink.stop()
        cap.close()
    # retained now: status, component topics, both alarms (cleared)
    kept = retained(broker.port, "edge/dev/#")
    assert body_of(kept["edge/dev/dock-01/alarm/disk_low"])["active"] is False
    assert body_of(kept["edge/dev/dock-01/component/camera-main"])["state"] == "offline"
    assert "edge/dev/dock-01/health" not in kept
    schemas = asyncapi_schemas()
    public = agent.store.private_key.public_key()
    checked = 0
    for topic, payload, _ in cap.msgs:
        name = schema_for(topic)
        if name and payload:
            jsonschema.validate(envelope_of(payload), schemas["envelope"])
            jsonschema.validate(verify_signed(topic, payload, public), schemas[name])
            checked += 1
    assert checked >= 8


def test_health_without_uplink_and_disk_warning(tmp_path):
    """No uplink built: the component still evaluates and keeps the last report; a reserve just
    under free/2 gives a warning, not critical."""
    store = make_store(tmp_path)
    free_mb = store.free() // 2**20
    store.reserve = (free_mb // 2 + 1) * 2**20
    agent = Agent(store.cfg, store)
    h = make_component(agent)
    body = h.tick()
    assert body["alarms"] == [a.key for a in h.alarms.active()]
    assert h.alarms.is_active("disk_low")
    assert [a.severity for a in h.alarms.active() if a.code == "disk_low"] == ["warning"]
    assert agent.commands["health"]({}, "t")["seq"] == 1
    assert h.status()["seq"] == 1


def test_unknown_device_rejected_alarm(tmp_path):
    """The archive refused the device as not enrolled: the item is 'rejected' with that reason;
    health raises unknown_device_rejected until the item is retried."""
    store = make_store(tmp_path)
    m = _item(store, tmp_path, "c.mp4", 30)
    agent = Agent(store.cfg, store)
    h = make_component(agent)
    h.tick()
    assert not h.alarms.is_active("unknown_device_rejected")
    store.set_state(m["item_id"], "rejected", error="unknown device dock-01: not enrolled at this archive")
    body = h.tick()
    assert "unknown_device_rejected" in body["alarms"]
    a = [x for x in h.alarms.active() if x.code == "unknown_device_rejected"][0]
    assert a.severity == "critical" and "未登记" in a.message_zh and "enrol" in a.message_en
    store.set_state(m["item_id"], "sealed", error=None)
    assert "unknown_device_rejected" not in h.tick()["alarms"]
