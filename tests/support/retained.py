"""What a broker retains right now, read by a fresh subscriber without waiting on a clock."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def retained(port: int, topic: str = "#", *, host: str = "127.0.0.1", timeout: float = 10.0) -> dict[str, bytes]:
    """Every retained message under ``topic`` (topic -> payload).

    A retained marker is published first and subscribed in the same SUBSCRIBE packet, after
    ``topic``: the broker queues the retained messages of each filter in the packet's order (all at
    QoS 0 here, so they leave in that order), hence once the marker arrives every retained message
    of ``topic`` has arrived before it. The marker is removed again."""
    from tests.support.broker import BY_PORT, login

    # On a shipped broker (tests.support.broker) the reader logs in as a monitor connection of its
    # own (monitor.63) and so sees what the monitor may read (status, health, alarms, components,
    # chain, ratio); the marker is then the retained status of a device "retained-marker".
    mq = BY_PORT.get(port)
    shipped = mq is not None and mq.identities is not None
    marker = "edge/dev/retained-marker/status" if shipped else f"test-retained-marker/{uuid.uuid4().hex}"
    # a filter that covers the marker delivers it once more, somewhere among its own messages
    expect = 2 if mqtt.topic_matches_sub(topic, marker) else 1
    seen = [0]
    got: dict[str, bytes] = {}
    done, connected = threading.Event(), threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"retained-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)

    def on_message(client, userdata, msg):
        if msg.topic == marker:
            seen[0] += 1
            if seen[0] >= expect:
                done.set()
        elif msg.retain and not done.is_set():
            got[msg.topic] = bytes(msg.payload)

    c.on_message = on_message
    c.on_connect = lambda *a: connected.set()
    w = c
    if shipped:
        creds = login(port, "monitor.63", "monitor")
        c.username_pw_set(creds["username"], creds["password"])
        w = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retained-marker", protocol=mqtt.MQTTv5)
        creds = login(port, "retained-marker")
        w.username_pw_set(creds["username"], creds["password"])
        w.connect(host, port)
        w.loop_start()
    c.connect(host, port)
    c.loop_start()
    try:
        assert connected.wait(timeout), f"cannot connect to the broker on port {port}"
        w.publish(marker, b"1", qos=1, retain=True).wait_for_publish(timeout)
        c.subscribe([(topic, 0), (marker, 0)])
        assert done.wait(timeout), f"the broker did not deliver the retained marker within {timeout} s"
        w.publish(marker, b"", qos=1, retain=True).wait_for_publish(timeout)
    finally:
        for x in {id(c): c, id(w): w}.values():
            x.disconnect()
            x.loop_stop()
    return got
