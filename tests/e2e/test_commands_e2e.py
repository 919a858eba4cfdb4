"""Signed commands end to end: an operator sends `status` and `config.set` to a running agent
through a real Mosquitto; an unsigned command published raw is refused and audited."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from agent import config as config_mod
from tests.support.spine import EDGE, make_config, run_cli
from tests.support.uplink import credentials


def test_operator_commands_over_mqtt(tmp_path, broker):
    cfg = make_config(tmp_path, mqtt__port=broker.port, dock__bays=[str(tmp_path / "nobay*")], health__interval_s=5)
    assert run_cli(cfg, "init").returncode == 0
    ops = tmp_path / "data" / "keys" / "operators"
    p = run_cli(cfg, "command", "keygen", "ops-center", "--out", str(tmp_path / "op"))
    assert p.returncode == 0, p.stderr
    ops.mkdir(parents=True, exist_ok=True)
    (tmp_path / "op" / "ops-center.pub").rename(ops / "ops-center.pub")
    # the operator logs in as ops (shipped broker: the device's login would end the agent's session)
    ops_cfg = Path(credentials(tmp_path, broker.port, "ops", "ops")[1])
    agent = subprocess.Popen([EDGE, "--config", str(cfg), "run"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        send = None
        for _ in range(20):  # the agent subscribes a moment after it starts
            send = run_cli(ops_cfg, "command", "send", "status", "--device", "dock-01", "--key", str(tmp_path / "op" / "ops-center.key"),
                           "--broker", f"127.0.0.1:{broker.port}", "--timeout", "3", "--json")
            if send.returncode == 0:
                break
            time.sleep(0.5)
        assert send.returncode == 0, send.stderr
        answer = json.loads(send.stdout)
        assert answer["ok"] and answer["result"]["store"]["device"]["id"] == "dock-01"
        setr = run_cli(ops_cfg, "command", "send", "config.set", "--device", "dock-01", "--args",
                       '{"key": "storage.retention_days", "value": 30}', "--key", str(tmp_path / "op" / "ops-center.key"),
                       "--broker", f"127.0.0.1:{broker.port}", "--json")
        assert setr.returncode == 0, setr.stderr
        assert config_mod.load(cfg).storage.retention_days == 30
        raw = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        raw.username_pw_set(*broker.identity("ops", "ops"))  # an operator's password without the key
        raw.connect("127.0.0.1", broker.port)
        raw.loop_start()
        raw.publish("edge/dev/dock-01/cmd", json.dumps({
            "cmd": "config.set", "args": {"key": "storage.retention_days", "value": 0}, "device": "dock-01",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()), "nonce": "0123456789abcdef0123"}), qos=1).wait_for_publish(5)
        raw.loop_stop()
        raw.disconnect()
        for _ in range(50):
            entries = json.loads(run_cli(cfg, "audit", "list", "--action", "command", "--json").stdout)
            if any('"refused"' in e["detail"] for e in entries):
                break
            time.sleep(0.2)
        refused = [e for e in entries if '"refused"' in e["detail"]]
        assert refused and "unsigned command" in refused[-1]["detail"]
        assert config_mod.load(cfg).storage.retention_days == 30
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(20)
