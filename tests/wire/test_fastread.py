"""The monitor's buffered paho client (agent/wire/fastread.py) against a real Mosquitto: every
message a stock paho subscriber gets, it gets too, byte for byte and in order (QoS 0 and 1,
retained, empty, larger than its 64 KiB read, across reads), it acknowledges QoS 1 (more
messages than the broker sends without PUBACKs), and nothing of a dropped connection is read as
part of the next one. Through the shipped broker: the publisher logs in as a device (its own
subtree), each subscriber as a monitor connection of its own (what the monitor reads)."""

from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as mqtt

from agent.wire import fastread
from agent.wire.client import ConnSettings, new_client
from tests.support.broker import login

D = "edge/dev/fr-pub"  # the publishing device's subtree
MONITOR = {"stock": "monitor.41", "buf": "monitor.42", "raw": "monitor.43", "raw-drop": "monitor.44"}


def _sub(port: int, name: str, raw: bool, got: list, topic: str = f"{D}/#"):
    s = ConnSettings(host="127.0.0.1", port=port, client_id=name, **login(port, MONITOR[name], "monitor"))
    c = new_client(s, buffered=True) if raw or name.startswith("buf") else new_client(s)
    ready = threading.Event()
    c.on_connect = lambda cl, *_a: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *_a: ready.set()
    c.on_message = lambda _c, _u, m: got.append((m.topic, bytes(m.payload), bool(m.retain)))
    if raw:
        c.on_raw_message = lambda t, p, r: got.append((t.decode(), bytes(p), r))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(10)
    return c


def _until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_buffered_client_gets_what_paho_gets(broker):
    assert fastread.AVAILABLE
    port = broker.port
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fr-pub", protocol=mqtt.MQTTv5)
    pub.username_pw_set(*broker.identity("fr-pub"))
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    pub.publish(f"{D}/status", b"kept", qos=1, retain=True).wait_for_publish(10)
    stock, buffered, raw = [], [], []
    subs = [_sub(port, "stock", False, stock), _sub(port, "buf", False, buffered), _sub(port, "raw", True, raw)]
    try:
        assert isinstance(subs[2], fastread.BufferedClient) and not isinstance(subs[0], fastread.BufferedClient)
        sent, q1 = [], set()
        sizes = [0, 1, 127, 128, 16383, 16384, 70_000, 200_000, 300] + [900 + (i % 700) for i in range(1500)]
        for i, size in enumerate(sizes):
            topic = f"{D}/alarm/a{i % 7}"
            payload = os.urandom(size)
            qos = 1 if i % 3 == 0 else 0  # QoS 1: more than the broker sends unacknowledged (Receive Maximum)
            sent.append((topic, payload, False))
            if qos:
                q1.add(payload)
            pub.publish(topic, payload, qos=qos)
        pub.publish(f"{D}/ratio", b"end", qos=1).wait_for_publish(30)
        sent.append((f"{D}/ratio", b"end", False))
        for got in (stock, buffered, raw):
            _until(lambda got=got: len(got) >= len(sent) + 1)
        for got in (stock, buffered, raw):
            assert got[0] == (f"{D}/status", b"kept", True)
            assert sorted(got[1:]) == sorted(sent)  # every message once, byte for byte
            for qos1 in (False, True):  # in order within each QoS (the broker may let QoS 0 overtake QoS 1)
                assert [m for m in got[1:] if (m[1] in q1) == qos1] == [m for m in sent if (m[1] in q1) == qos1]
    finally:
        for c in subs + [pub]:
            c.disconnect()
            c.loop_stop()


def test_a_dropped_connection_leaves_nothing_in_the_buffer(broker):
    got: list = []
    c = _sub(broker.port, "raw-drop", True, got, topic="edge/dev/fr-pub2/#")
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fr-pub2", protocol=mqtt.MQTTv5)
    pub.username_pw_set(*broker.identity("fr-pub2"))
    try:
        assert isinstance(c, fastread.BufferedClient)
        c._rbuf, c._rpos = b"\x30\x05\x00\x02fr", 0  # half a PUBLISH of the old connection, unread
        c._sock_close()  # the connection drops: paho's loop makes a new one and subscribes again
        assert c.buffered() == 0
        assert subscribed.wait(20), "no new connection and subscription"
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("edge/dev/fr-pub2/health", b"fresh", qos=1).wait_for_publish(10)
        _until(lambda: ("edge/dev/fr-pub2/health", b"fresh", False) in got)
        assert got == [("edge/dev/fr-pub2/health", b"fresh", False)]
    finally:
        for x in (c, pub):
            x.disconnect()
            x.loop_stop()
