"""A device's fallback brokers (``mqtt.fallback``): read from the config, refused with the key when
malformed, and used by the connection: a primary that cannot be reached or that dies sends the
connection to the next broker at once (real Mosquittos).
"""

from __future__ import annotations

import threading

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError, EdgeError
from agent.wire.client import settings_from_config
from agent.wire.mqtt import Connection
from tests.support.broker import Mosquitto, free_port


def _cfg(**mqtt):
    return config_mod.loads(config_mod.render_default({"device": {"id": "dock-0001"}, "mqtt": mqtt}))


def test_fallback_read_and_refused_with_the_key():
    s = settings_from_config(_cfg(port=1884, fallback=["10.0.0.2:1883", "mqtt://b.example"]).mqtt, "dock-0001")
    assert s.brokers == [("127.0.0.1", 1884), ("10.0.0.2", 1883), ("b.example", 1883)]
    # --broker on the command line: that one broker, no fallback
    assert settings_from_config(_cfg(fallback=["10.0.0.2:1883"]).mqtt, "x", broker="10.0.0.9:1883").brokers == \
        [("10.0.0.9", 1883)]
    with pytest.raises(ConfigError, match="mqtt.fallback") as exc:
        _cfg(fallback=["no-port-here"])
    assert "HOST:PORT" in str(exc.value)
    with pytest.raises(ConfigError, match="listed twice"):
        _cfg(fallback=["a:1", "a:1"])
    with pytest.raises(EdgeError, match="same TLS settings serve every broker"):
        settings_from_config(_cfg(fallback=["mqtts://b.example"]).mqtt, "dock-0001")


def test_connection_goes_to_the_next_broker(tmp_path):
    a = Mosquitto(tmp_path / "a").start()
    b = Mosquitto(tmp_path / "b").start()
    dead = free_port()  # nothing listens here
    try:
        s = settings_from_config(_cfg(port=dead, fallback=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]).mqtt, "d1")
        ups = []
        up = threading.Event()
        conn = Connection(s, on_connect=lambda c: (ups.append(c.broker), up.set()), name="t")
        conn.start()
        try:
            # the primary is unreachable: the first fallback, without a backoff round
            assert up.wait(10) and conn.broker == f"127.0.0.1:{a.port}", conn.last_error
            up.clear()
            a.kill()  # the broker in use dies: the next one
            assert up.wait(10) and conn.broker == f"127.0.0.1:{b.port}"
            assert conn.failovers >= 2 and ups == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
        finally:
            conn.stop()
    finally:
        a.kill()
        b.kill()
