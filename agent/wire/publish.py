"""One outgoing PUBLISH of :class:`agent.wire.mqtt.Connection`: the handle its owner waits on, the
refusal raised before it leaves, and its size on the wire (what the broker's ``Maximum Packet
Size`` is checked against)."""

from __future__ import annotations

import threading
import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.common.errors import EdgeError

#: fixed header + topic length + packet id + property length bytes, rounded up
PACKET_OVERHEAD = 64


class PublishError(EdgeError):
    """A publish was refused before it left (too large, not connected, no slot in time)."""


class PubHandle:
    """A QoS 1 publish in flight: ``wait(timeout)`` returns True once the broker answered."""

    __slots__ = ("topic", "size", "event", "reason", "error", "sent_at", "acked_at", "mid")

    def __init__(self, topic: str, size: int):
        self.topic, self.size = topic, size
        self.event = threading.Event()
        self.reason: int | None = None
        self.error: str | None = None
        self.sent_at = time.monotonic()
        self.acked_at: float | None = None
        self.mid: int | None = None

    def complete(self, reason: int | None, error: str | None = None) -> None:
        self.reason, self.error = reason, error
        self.acked_at = time.monotonic()
        self.event.set()

    @property
    def ok(self) -> bool:
        return self.event.is_set() and self.error is None and (self.reason or 0) < 0x80

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


def properties(user_properties: list[tuple[str, str]] | None, response_topic: str | None,
               correlation: bytes | None) -> tuple[Properties | None, int]:
    """The PUBLISH properties (None when there are none) and the bytes they take on the wire."""
    props = None
    plen = 0
    if user_properties or response_topic or correlation is not None:
        props = Properties(PacketTypes.PUBLISH)
        if user_properties:
            props.UserProperty = list(user_properties)
            plen += sum(len(k.encode()) + len(v.encode()) + 5 for k, v in user_properties)
        if response_topic:
            props.ResponseTopic = response_topic
            plen += len(response_topic.encode()) + 3
        if correlation is not None:
            props.CorrelationData = correlation
            plen += len(correlation) + 3
    return props, plen


def packet_size(topic: str, payload_len: int, props_len: int = 0) -> int:
    """The PUBLISH packet's size, at most (:data:`PACKET_OVERHEAD` rounds the headers up)."""
    return payload_len + len(topic.encode()) + props_len + PACKET_OVERHEAD
