"""A connection we stop is reported as stopped, every time; a connection the broker drops is
reported as lost with paho's reason. (The uplink logged "uplink: disconnected" as a warning at
its own clean stop in some benchmark rounds and not in others: paho's on_disconnect raced the
teardown.)"""

from __future__ import annotations

import threading

from agent.wire.client import ConnSettings
from agent.wire.mqtt import STOPPED, Connection
from tests.support.broker import login


def _conn(port: int, name: str, reasons: list[str], event: threading.Event) -> Connection:
    def on_disconnect(conn, reason):
        reasons.append(reason)
        event.set()

    return Connection(ConnSettings("127.0.0.1", port, name, min_backoff=0.2, max_backoff=0.5, **login(port, name)),
                      on_disconnect=on_disconnect, name=name)


def test_a_clean_stop_is_reported_as_stopped_every_time(broker):
    for n in range(6):
        reasons: list[str] = []
        done = threading.Event()
        c = _conn(broker.port, f"stop-{n}", reasons, done)
        c.start()
        assert c.wait_connected(20)
        c.stop()
        assert done.wait(20) and reasons == [STOPPED], reasons


def test_a_broker_that_goes_away_is_reported_as_a_loss(broker):
    reasons: list[str] = []
    lost = threading.Event()
    c = _conn(broker.port, "lost-1", reasons, lost)
    c.start()
    try:
        assert c.wait_connected(20)
        broker.kill()
        assert lost.wait(30)
        assert reasons[0] != STOPPED and reasons[0].startswith("connection lost"), reasons
    finally:
        c.stop()
