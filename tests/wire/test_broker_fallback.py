"""A device's fallback brokers (``mqtt.fallback``): read from the config, refused with the key when
malformed, and used by the connection: a primary that cannot be reached or that dies sends the
connection to the next broker at once; on a fallback the primary is probed every
``mqtt.failback_s`` and the connection moves back to it once it takes the device (real Mosquittos).

The brokers run the shipped configuration, all on the same generated password file and ACL (as
the brokers of a real deployment would): the device logs in with its own identity on each, and
on each the ACL confines it to its own topics.
"""

from __future__ import annotations

import threading

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError, EdgeError
from agent.wire.client import settings_from_config
from agent.wire.client import probe
from agent.wire.mqtt import FAILBACK, Connection
from agent.wire.topics import Topics
from tests.faults.harness import wait_for
from tests.support.broker import Mosquitto, free_port

T = Topics("edge")


def _login(mq: Mosquitto, name: str, role: str = "device") -> dict:
    """``mqtt.username`` / ``mqtt.password`` of ``name`` on the shipped brokers sharing mq's files."""
    user, password = mq.identity(name, role)
    return {"username": user, "password": password}


def _refused_elsewhere(conn: Connection) -> None:
    """The ACL of the broker in use: the device publishes as itself, never as another device."""
    own = conn.publish(T.health("d1"), b"h")
    assert own.wait(5) and own.ok, own.reason
    forged = conn.publish(T.health("d2"), b"forged")
    assert forged.wait(5) and not forged.ok and forged.reason == 0x87


def _cfg(**mqtt):
    return config_mod.loads(config_mod.render_default({"device": {"id": "dock-0001"}, "mqtt": mqtt}))


def test_fallback_read_and_refused_with_the_key():
    # plain MQTT off the loopback: a lab's config says so (refused otherwise, test_wire_mqtt.py)
    s = settings_from_config(_cfg(port=1884, fallback=["10.0.0.2:1883", "mqtt://b.example"],
                                  allow_plaintext=True).mqtt, "dock-0001")
    assert s.brokers == [("127.0.0.1", 1884), ("10.0.0.2", 1883), ("b.example", 1883)]
    # --broker on the command line: that one broker, no fallback
    assert settings_from_config(_cfg(fallback=["10.0.0.2:1883"], allow_plaintext=True).mqtt, "x",
                                broker="10.0.0.9:1883").brokers == [("10.0.0.9", 1883)]
    with pytest.raises(ConfigError, match="mqtt.allow_plaintext = true"):
        _cfg(fallback=["10.0.0.2:1883"])
    with pytest.raises(ConfigError, match="mqtt.fallback") as exc:
        _cfg(fallback=["no-port-here"])
    assert "HOST:PORT" in str(exc.value)
    with pytest.raises(ConfigError, match="listed twice"):
        _cfg(fallback=["a:1", "a:1"])
    with pytest.raises(EdgeError, match="same TLS settings serve every broker"):
        settings_from_config(_cfg(fallback=["mqtts://b.example"]).mqtt, "dock-0001")
    # fail-back: every 300 s by default, as configured, 0 = never; refused with the key
    assert s.failback_s == 300
    assert settings_from_config(_cfg(fallback=["127.0.0.5:1"], failback_s=0).mqtt, "d").failback_s == 0
    with pytest.raises(ConfigError, match="mqtt.failback_s"):
        _cfg(failback_s=-1)


def test_connection_goes_to_the_next_broker(tmp_path):
    a = Mosquitto(tmp_path / "a", shipped=True).start()
    b = Mosquitto(tmp_path / "b", shipped=a.identities).start()  # the same generated files
    dead = free_port()  # nothing listens here
    try:
        s = settings_from_config(_cfg(port=dead, fallback=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"],
                                      **_login(a, "d1")).mqtt, "d1")
        ups = []
        up = threading.Event()
        conn = Connection(s, on_connect=lambda c: (ups.append(c.broker), up.set()), name="t")
        conn.start()
        try:
            # the primary is unreachable: the first fallback, without a backoff round
            assert up.wait(10) and conn.broker == f"127.0.0.1:{a.port}", conn.last_error
            _refused_elsewhere(conn)
            up.clear()
            a.kill()  # the broker in use dies: the next one
            assert up.wait(10) and conn.broker == f"127.0.0.1:{b.port}"
            assert conn.failovers >= 2 and ups == [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
            _refused_elsewhere(conn)  # the same identity and the same ACL on the fallback
        finally:
            conn.stop()
    finally:
        a.kill()
        b.kill()


def test_connection_moves_back_to_its_primary_when_it_returns(tmp_path):
    """The primary is down at start: the connection works on the fallback; the primary comes back
    (same port): the connection probes it every failback_s and moves back, cleanly (the will stays
    unpublished on the fallback, no error noted); the primary's probe asks the owner's check."""
    primary = Mosquitto(tmp_path / "p", shipped=True)
    primary.port = free_port()
    fb = Mosquitto(tmp_path / "fb", shipped=primary.identities).start()  # the same generated files
    # the will is the device's status (the monitor reads it); the probe waits for a receiver's
    # status (the archive writes it, the device reads it): what the uplink uses, under the ACL
    ready_topic = T.archive_receiver("rx-1")
    try:
        s = settings_from_config(_cfg(port=primary.port, fallback=[f"127.0.0.1:{fb.port}"], failback_s=1,
                                      **_login(fb, "d1")).mqtt, "d1")
        ups, downs, checked = [], [], []
        up = threading.Event()
        safe = threading.Event()
        conn = Connection(s, on_connect=lambda c: (ups.append(c.broker), up.set()),
                          on_disconnect=lambda c, why: downs.append(why), name="t",
                          will=lambda: (T.status("d1"), b"gone"),
                          probe=lambda: ((T.all_archive_receivers(),), lambda t, p: checked.append(p) or p == b"yes"),
                          safe_point=safe.is_set)
        wills = []
        watcher = Connection(settings_from_config(_cfg(port=fb.port, **_login(fb, "monitor", "monitor")).mqtt,
                                                  "watcher"), name="w",
                             on_message=lambda t, p, props: wills.append(p))
        watcher.subscribe(T.status("d1"))
        watcher.start()
        conn.start()
        try:
            assert up.wait(10) and conn.broker == f"127.0.0.1:{fb.port}", conn.last_error
            assert watcher.wait_connected(10)
            _refused_elsewhere(conn)  # the fallback has the device's identity and the ACL
            up.clear()
            primary.start()  # back on its port
            assert probe(s, "127.0.0.1", primary.port, timeout=5) is None  # it takes us (a CONNACK)
            ready = Connection(settings_from_config(_cfg(port=primary.port, **_login(fb, "archive", "archive")).mqtt,
                                                    "ready"), name="r")
            ready.start()
            assert ready.wait_connected(10)
            assert (h := ready.publish(ready_topic, b"no", retain=True)).wait(5) and h.ok, h.reason
            # the owner's check refuses what the primary shows: the connection stays on the fallback
            wait_for(lambda: b"no" in checked, 20, "the probe asks the owner's check")
            assert conn.broker == f"127.0.0.1:{fb.port}" and not conn.failback_pending and conn.failbacks == 0
            assert (h := ready.publish(ready_topic, b"yes", retain=True)).wait(5) and h.ok, h.reason
            ready.stop()
            # passed, but the owner is busy (no safe point): it still moves within failback_s
            assert up.wait(20) and conn.broker == f"127.0.0.1:{primary.port}", (conn.last_probe, conn.last_error)
            assert conn.failbacks == 1 and ups[-1] == f"127.0.0.1:{primary.port}"
            assert downs == [FAILBACK] and conn.last_probe == "ok", (downs, conn.last_probe)
            assert not conn.failback_pending
            assert conn.connected and (h := conn.publish(T.health("d1"), b"1")).wait(5) and h.ok
            _refused_elsewhere(conn)  # and on the primary again
            assert wills == []  # left the fallback with DISCONNECT: no will published there
        finally:
            conn.stop()
            watcher.stop()
    finally:
        primary.kill()
        fb.kill()
