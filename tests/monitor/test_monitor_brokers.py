"""The monitor subscribes to every broker: the ones given with --broker (repeatable: the fail-over
test, tests/e2e/test_broker_failover.py), else the config's mqtt.host/port and mqtt.fallback
(here, two real Mosquittos)."""

from __future__ import annotations

import json
import subprocess

from agent import config as config_mod
from tests.support.broker import Mosquitto
from tests.support.health import EDGE, empty_enrolment


def _ready(args: list[str]) -> dict:
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    events = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    return next(e for e in events if e["event"] == "ready")


def test_monitor_subscribes_to_every_broker(tmp_path):
    a = Mosquitto(tmp_path / "a", shipped=True).start()
    b = Mosquitto(tmp_path / "b", shipped=a.identities).start()  # the same identities on both
    try:
        enrol = empty_enrolment(tmp_path / "archive")
        common = ["--no-tui", "--duration", "2", "--json", "--enrolment", str(enrol)]
        cfg = tmp_path / "monitor.toml"
        user, password = a.identity("monitor", "monitor")
        cfg.write_text(config_mod.render_default({"mqtt": {"port": a.port, "fallback": [f"127.0.0.1:{b.port}"],
                                                           "username": user, "password": password}}))
        got = _ready([EDGE, "--config", str(cfg), "monitor", "--db", str(tmp_path / "m.db"), *common])
        assert got["brokers"] == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"] and got["subscribed"], got
        for mq in (a, b):  # each broker saw the monitor log in as itself and subscribe
            log = mq.log_path.read_text()
            assert "u'monitor'" in log and "edge/archive/checkpoint" in log, mq.log_tail()
    finally:
        a.kill()
        b.kill()
