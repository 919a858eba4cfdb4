"""`edge-agent doctor` against a real broker: each check says OK or what to do; exit 1 on failure."""

from __future__ import annotations

import json
import os

import paho.mqtt.client as mqtt

from tests.support.spine import make_config, run_cli


def _cfg(tmp_path, broker_port):
    path = make_config(tmp_path, mqtt__port=broker_port)
    assert run_cli(path, "init").returncode == 0
    return path


def test_doctor_reports_missing_archive_then_ok(tmp_path, broker):
    from agent.evidence import keys
    from agent.wire.receipts import ArchiveSigner

    cfg = _cfg(tmp_path, broker.port)
    p = run_cli(cfg, "doctor", "--json")
    assert p.returncode == 1
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["config"]["status"] == "OK" and checks["broker"]["status"] == "OK"
    assert checks["archive"]["status"] == "FAIL" and "archive serve" in checks["archive"]["detail"]
    assert checks["archive key"]["status"] == "FAIL" and "no archive key pinned" in checks["archive key"]["detail"]
    archive_key = keys.generate(tmp_path / "archive.key", tmp_path / "archive.pub")

    def publish(rid: str, payload: dict) -> None:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish(f"edge/archive/status/{rid}", json.dumps(payload), qos=1, retain=True).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()

    publish("rx-forged", {"state": "online", "receiver": "rx-forged"})  # unsigned: not believed
    assert run_cli(cfg, "uplink", "trust-archive", str(tmp_path / "archive.pub")).returncode == 0
    checks = {c["name"]: c for c in json.loads(run_cli(cfg, "doctor", "--json").stdout)["checks"]}
    assert checks["archive key"]["status"] == "OK"
    assert checks["archive"]["status"] == "FAIL" and "unsigned" in checks["archive"]["detail"]
    publish("rx-1", ArchiveSigner(archive_key, "rx-1").status("online"))
    p = run_cli(cfg, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
    assert checks["archive"]["status"] == "OK" and "rx-1" in checks["archive"]["detail"]


def test_doctor_names_what_to_do(tmp_path, broker):
    cfg = _cfg(tmp_path, broker.port)
    key = tmp_path / "data" / "keys" / "device.key"
    os.chmod(key, 0o644)
    broker.stop()
    p = run_cli(cfg, "doctor")
    assert p.returncode == 1
    assert "chmod 600" in p.stdout and "unreachable" in p.stdout
    bad = run_cli(tmp_path / "missing.toml", "doctor")
    assert bad.returncode == 1 and "edge-agent init" in bad.stdout
