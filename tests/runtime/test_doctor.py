"""`edge-agent doctor` against a real broker: each check says OK or what to do; exit 1 on failure."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import paho.mqtt.client as mqtt

from tests.support.spine import EDGE, make_config, run_cli


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
        pub.username_pw_set(*broker.identity("archive-pub", "archive"))  # only an archive login writes there
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
    assert bad.returncode == 1 and f"edge-agent --config {tmp_path / 'missing.toml'} init" in bad.stdout


# --- issue 16 item 9: each finding names the key and a command that fixes it ----------------------
from agent import config as config_mod  # noqa: E402
from agent.runtime.doctor import check_clock  # noqa: E402
from tests.support.broker import free_port  # noqa: E402
from tests.cli.test_cli_words import parse  # noqa: E402


def _checks(p) -> list[dict]:
    return json.loads(p.stdout)["checks"]


def _failed(cfg, name):
    p = run_cli(cfg, "doctor", "--offline", "--json")
    return [c for c in _checks(p) if c["name"] == name and c["status"] == "FAIL"], p


def test_placeholders_from_init_fail_and_the_named_fix_clears_them(tmp_path):
    cfg = tmp_path / "agent.toml"
    assert run_cli(cfg, "init", "--data-dir", str(tmp_path / "data")).returncode == 0
    found, p = _failed(cfg, "placeholder")
    assert p.returncode == 1
    assert sorted(c["key"] for c in found) == ["device.id", "device.location", "device.unit_code",
                                               "device.unit_name", "dock.admin_password"]
    by_key = {c["key"]: c for c in found}
    assert "示例执法单位" in by_key["device.unit_name"]["detail"] and "占位值" in by_key["device.id"]["detail"]
    assert "dev-0001" in by_key["device.id"]["detail"] and "placeholder" in by_key["device.id"]["detail"]
    assert "000000" not in by_key["dock.admin_password"]["detail"], "a password is never printed"
    text = run_cli(cfg, "doctor", "--offline").stdout
    assert f"修复 / fix: edge-agent --config {cfg} config set device.id" in text and "[device.unit_name]" in text
    for c in found:  # the fix named is a command that runs, and it clears the finding
        words = shlex.split(c["fix"])
        assert words[:5] == ["edge-agent", "--config", str(cfg), "config", "set"], "names the file doctor read"
        parse(c["fix"])
        p = subprocess.run([EDGE, *words[1:]], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    assert _failed(cfg, "placeholder")[0] == []
    assert config_mod.load(cfg).dock.admin_password != "000000"


def test_room_camera_file_or_device_missing(tmp_path):
    cfg = make_config(tmp_path, device__kind="room", room__cameras=[f"file:{tmp_path / 'nope.mp4'}", "/dev/video97"])
    assert run_cli(cfg, "init").returncode == 0
    found, p = _failed(cfg, "camera")
    assert p.returncode == 1 and len(found) == 2
    assert "文件不存在 / no such file" in found[0]["detail"] and "设备不存在 / no such device" in found[1]["detail"]
    assert all(c["key"] == "room.cameras" for c in found)
    parse(found[0]["fix"])
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\0" * 10)
    assert run_cli(cfg, "config", "set", "room.cameras", f'["file:{clip}", "rtsp://10.0.0.2/main"]').returncode == 0
    assert _failed(cfg, "camera")[0] == []


def test_broker_unreachable_names_key_and_fix(tmp_path):
    cfg = make_config(tmp_path, mqtt__port=free_port())
    assert run_cli(cfg, "init").returncode == 0
    p = run_cli(cfg, "doctor", "--json")
    broker = next(c for c in _checks(p) if c["name"] == "broker")
    assert broker["status"] == "FAIL" and "无法连接代理" in broker["detail"] and "unreachable" in broker["detail"]
    assert broker["key"] == "mqtt.host" and broker["fix"].startswith(f"edge-agent --config {cfg} config set mqtt.host")
    parse(broker["fix"])


def test_clock_off_by_more_than_the_policy(tmp_path):
    cfg = config_mod.load(make_config(tmp_path, health__clock_drift_alarm_ms=500))
    off = check_clock(cfg, {"synchronized": True, "source": "adjtimex", "offset_ms": -800})
    assert off.status == "FAIL" and "-800" in off.detail and "500" in off.detail and "时钟偏差" in off.detail
    assert off.key == "health.clock_drift_alarm_ms" and off.fix
    assert check_clock(cfg, {"synchronized": True, "source": "adjtimex", "offset_ms": 400}).status == "OK"
    unsynced = check_clock(cfg, {"synchronized": False, "source": "adjtimex", "offset_ms": None})
    assert unsynced.status == "FAIL" and "时钟未同步" in unsynced.detail and unsynced.fix == "timedatectl set-ntp true"
    assert check_clock(cfg).status in ("OK", "WARN", "FAIL")  # this machine's own clock, measured for real


def test_disk_below_the_watermark(tmp_path):
    cfg = make_config(tmp_path, storage__reserve_mb=1 << 40)
    assert run_cli(cfg, "init").returncode == 0
    found, p = _failed(cfg, "disk")
    assert p.returncode == 1 and len(found) == 1
    assert found[0]["key"] == "storage.reserve_mb" and "低于保留水位" in found[0]["detail"]
    assert "below the reserve" in found[0]["detail"]
    parse(found[0]["fix"])


def test_doctor_beside_the_running_agent_does_not_take_its_session(tmp_path):
    """The generated broker binds one session to each login (use_username_as_clientid): a doctor
    logging in with the device's credentials would end the running agent's connection (and
    publish its last will, "offline"). While the agent's live figures say it is connected, the
    doctor reports them and does not log in: the broker sees the device log in once."""
    from agent.wire import broker_auth
    from tests.support.broker import free_port
    from tests.support.uplink import agent_config, start_agent, wait_for
    from tests.wire.test_broker_clientid import Broker

    port = free_port()
    files = broker_auth.generate(tmp_path / "b", ["dock-0001"], port=port)
    pw = {i.name: i.password for i in files.identities}
    mq = Broker(tmp_path, files.conf.read_text(), port)
    cfg = agent_config(tmp_path, port, mqtt__username="dock-0001", mqtt__password=pw["dock-0001"])
    assert run_cli(cfg, "init").returncode == 0
    ag = start_agent(cfg, tmp_path)
    try:
        status = tmp_path / "dock-0001" / "uplink-status.json"
        wait_for(lambda: status.exists() and json.loads(status.read_text()).get("connected"), 20,
                 "the agent's live figures say connected", [ag])
        p = run_cli(cfg, "doctor", "--json")
        checks = {c["name"]: c for c in json.loads(p.stdout)["checks"]}
        assert checks["broker"]["status"] == "OK" and "running edge-agent" in checks["broker"]["detail"], checks
        assert checks["archive"]["status"] == "FAIL" and "archive serve" in checks["archive"]["detail"]
        logins = [ln for ln in mq.text().splitlines() if "New client connected" in ln and " u'dock-0001'" in ln]
        assert len(logins) == 1, logins
        assert "closing old connection" not in mq.text()
    finally:
        ag.stop()
        mq.stop()
    # the agent stopped (its figures say so): the doctor logs in itself
    checks = {c["name"]: c for c in json.loads(run_cli(cfg, "doctor", "--json").stdout)["checks"]}
    assert checks["broker"]["status"] == "FAIL" and "unreachable" in checks["broker"]["detail"]
