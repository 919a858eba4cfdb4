"""End to end with the real agent: `edge-agent run` (uplink + health + docking station) against a
real Mosquitto, a real monitor subprocess, kill -9, restart, the signed rebirth command; every
message captured from the agent validates against docs/asyncapi.yaml."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from agent import config as config_mod
from agent.evidence import keys
from tests.support.broker import login
from tests.support.spine import ingest_args
from tests.support.uplink import credentials
from agent.evidence.keys import load_public
from tests.support.health import (EDGE, Capture, MonitorProc, asyncapi_schemas, body_of, envelope_of, retained,
                                  schema_for, verify_signed)

DEV = "dock-0001"


def edge(cfg: Path, *args, check=True, timeout=60):
    p = subprocess.run([EDGE, "--config", str(cfg), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def start_agent(cfg: Path, log: Path) -> subprocess.Popen:
    f = open(log, "ab")
    return subprocess.Popen([EDGE, "--config", str(cfg), "run"], stdout=f, stderr=f, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.fixture
def device(tmp_path, broker):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(config_mod.render_default({
        "device": {"id": DEV, "kind": "dock", "unit_code": "330106", "unit_name": "西湖区执法大队"},
        "storage": {"data_dir": str(tmp_path / "data"), "reserve_mb": 1},
        "mqtt": {"port": broker.port, **login(broker.port, DEV, unit="330106")}, "health": {"interval_s": 1}, "uplink": {"ack_timeout_s": 2}}), encoding="utf-8")
    edge(cfg, "init")
    ops = (tmp_path / "data" / "keys" / "operators")
    ops.mkdir(parents=True, exist_ok=True)
    keys.generate(tmp_path / "op" / "ops.key", ops / "ops.pub")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(os.urandom(20000))
    edge(cfg, *ingest_args(clip))
    return cfg


def test_agent_health_end_to_end(tmp_path, broker, device):
    cfg = device
    cap = Capture(broker.port, f"edge/dev/{DEV}/#")
    pub = tmp_path / "data" / "keys" / "device.pub"
    edge(cfg, "archive", "enroll", DEV, str(pub), "--unit", "330106", "--root", str(tmp_path / "archive"))
    mon = MonitorProc(tmp_path / "m.db", broker.port, lost_after=60, enrolment=tmp_path / "archive")
    log = tmp_path / "agent.log"
    agent = start_agent(cfg, log)
    try:
        _, st = cap.wait_for(lambda t, p: t.endswith("/status") and p and p["state"] == "online", timeout=30)
        bdseq = st["bdseq"]
        _, h = cap.wait_for(lambda t, p: t.endswith("/health") and p and p["buffer"]["items"] == 1)
        assert h["unit_code"] == "330106" and h["kind"] == "dock" and h["usage"]["items_total"] == 1
        assert {"dock", "uplink"} <= set(h["components"])
        cap.wait_for(lambda t, p: t == f"edge/dev/{DEV}/component/uplink")
        cap.wait_for(lambda t, p: t == f"edge/dev/{DEV}/alarm/archive_unreachable" and p["active"])
        # the signed rebirth command through the broker: everything retained comes again
        n = len(cap.msgs)
        ops = Path(credentials(tmp_path, broker.port, "ops", "ops")[1])  # the operator's login
        p = edge(ops, "command", "send", "rebirth", "--device", DEV, "--key", str(tmp_path / "op" / "ops.key"),
                 "--broker", f"127.0.0.1:{broker.port}", "--json", "--timeout", "60")
        ans = json.loads(p.stdout)
        assert ans["ok"] and ans["result"]["ok"] and "archive_unreachable" in ans["result"]["alarms"]
        cap.wait_for(lambda t, p: t.endswith("/status") and p["state"] == "online" and p["bdseq"] == bdseq, start=n)
        cap.wait_for(lambda t, p: t == f"edge/dev/{DEV}/alarm/archive_unreachable", start=n)
        # crash: the last will marks the device offline with the same bdseq
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        _, dead = cap.wait_for(lambda t, p: t.endswith("/status") and p["state"] == "offline", timeout=20)
        assert dead["bdseq"] == bdseq
        deadline = time.monotonic() + 15
        while True:
            f = json.loads(subprocess.run([EDGE, "monitor", "fleet", "--db", str(tmp_path / "m.db"), "--json"],
                                          capture_output=True, text=True).stdout)
            devs = {d["id"]: d for d in f["devices"]}
            if DEV in devs and devs[DEV]["display_state"] == "offline":
                break
            assert time.monotonic() < deadline, devs.get(DEV)
            time.sleep(0.3)
        assert devs[DEV]["unit_code"] == "330106" and devs[DEV]["health"]["buffer_items"] == 1
        assert any(a["device"] == DEV and a["key"] == "archive_unreachable" for a in f["alarms"])
        # restart: a new birth with the next bdseq; the alarm keeps its first "since"
        n = len(cap.msgs)
        agent = start_agent(cfg, log)
        _, st2 = cap.wait_for(lambda t, p: t.endswith("/status") and p["state"] == "online", start=n, timeout=30)
        assert st2["bdseq"] == bdseq + 1
        cap.wait_for(lambda t, p: t.endswith("/health"), start=n)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
        mon.stop()
        cap.close()
    kept = retained(broker.port, f"edge/dev/{DEV}/#")
    assert body_of(kept[f"edge/dev/{DEV}/status"])["state"] == "offline"
    first = [body_of(p) for t, p, _ in cap.msgs if t.endswith("/alarm/archive_unreachable")]
    assert len({a["since"] for a in first}) == 1, "since survives the restart"
    # every state message the agent sent follows the AsyncAPI document
    schemas = asyncapi_schemas()
    public = load_public(pub)
    counts: dict[str, int] = {}
    for topic, payload, _ in cap.msgs:
        name = schema_for(topic)
        if name and payload:
            try:  # every one signed with the device key, the will included
                jsonschema.validate(envelope_of(payload), schemas["envelope"])
                jsonschema.validate(verify_signed(topic, payload, public), schemas[name])
            except jsonschema.ValidationError as exc:
                raise AssertionError(f"{topic}: {exc.message}") from None
            counts[name] = counts.get(name, 0) + 1
    assert counts.get("status", 0) >= 4 and counts.get("health", 0) >= 2 and counts.get("alarm", 0) >= 2
    assert counts.get("component", 0) >= 2 and counts.get("ratio", 0) >= 1, counts
    assert "Traceback" not in log.read_text(errors="replace")
