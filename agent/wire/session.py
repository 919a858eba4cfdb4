"""Short MQTT sessions for the command line, the doctor and the tools: :func:`exchange` connects,
subscribes, publishes one message, collects the answers and disconnects (on a
:class:`agent.wire.mqtt.Connection`)."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

from .client import ConnSettings
from .mqtt import Connection


@dataclasses.dataclass
class Exchange:
    """What :func:`exchange` saw: whether the broker accepted us, why not, and the messages."""

    connected: bool
    error: str | None
    messages: list[tuple[str, bytes, Any]]


def exchange(settings: ConnSettings, *, subscribe: tuple[str, ...] = (),
             publish: tuple[str, bytes] | None = None, response_topic: str | None = None,
             correlation: bytes | None = None,
             until: Callable[[list[tuple[str, bytes, Any]]], bool] | None = None,
             timeout: float = 10.0) -> Exchange:
    """One short session for the command line and the doctor: connect (TLS and credentials as
    set), subscribe, publish one message (QoS 1, with response topic and correlation data when
    given; the broker handles the subscription first), collect messages until ``until(messages)``
    holds or ``timeout`` passes, disconnect."""
    got: list[tuple[str, bytes, Any]] = []
    done = threading.Event()

    def on_message(topic: str, payload: bytes, props: Any) -> None:
        got.append((topic, payload, props))
        if until is not None and until(got):
            done.set()

    conn = Connection(dataclasses.replace(settings, max_backoff=1.0), on_message=on_message, name="mqtt-exchange")
    for t in subscribe:
        conn.subscribe(t, 1)
    deadline = time.monotonic() + timeout
    conn.start()
    try:
        if not conn.wait_connected(timeout):
            return Exchange(False, conn.last_error or f"no connection within {timeout:g} s", got)
        if publish is not None:
            h = conn.publish(publish[0], publish[1], qos=1, response_topic=response_topic, correlation=correlation,
                             timeout=max(0.1, deadline - time.monotonic()))
            if h.wait(max(0.1, deadline - time.monotonic())) and not h.ok:
                return Exchange(True, h.error, got)
        if until is not None:
            done.wait(max(0.0, deadline - time.monotonic()))
        return Exchange(True, None, got)
    finally:
        conn.stop(timeout=2.0)
