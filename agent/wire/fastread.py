"""A paho client that reads its socket 64 KiB at a time (the monitor's subscriptions).

paho reads each incoming packet with three or four ``recv`` calls (the command byte, each byte
of the remaining length, then the rest) and handles one packet per wake-up of its network loop
(``select``, read, write, keep-alive). At thousands of small messages a second that is most of
the monitor's receive cost. :class:`BufferedClient` keeps paho's packet parser and state
machine as they are and changes only where the bytes come from: one ``recv`` of up to
:data:`READ_SIZE` bytes fills a buffer that the parser's small reads are served from, and one
wake-up handles every packet already buffered. A connection's buffer is dropped when its socket
is (reconnect, close): no byte of one connection is ever read as part of the next.

A subscriber that sets :attr:`BufferedClient.on_raw_message` also skips paho's message object
for QoS 0 and 1 PUBLISH packets: the topic (bytes, not decoded), the payload and the retain
flag go straight to that callback (MQTT v5 properties are skipped: the client announces no
Topic Alias Maximum, so the broker sends no topic alias), then the PUBACK (QoS 1) is sent as paho
would; QoS 2 and everything else take paho's own path. A packet whose lengths do not add up is
a protocol error (the connection is dropped and re-made), as in paho.

Only the private methods ``_sock_recv``, ``_sock_close``, ``_handle_publish`` and ``loop_read``
are overridden; a paho without them (checked at import) gets the plain client (:data:`AVAILABLE`).
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

READ_SIZE = 65536
AVAILABLE = all(callable(getattr(mqtt.Client, n, None))
                for n in ("_sock_recv", "_sock_close", "loop_read", "_packet_read", "_handle_publish", "_send_puback"))


class BufferedClient(mqtt.Client):
    """:class:`paho.mqtt.client.Client` with buffered socket reads (see the module)."""

    #: ``f(topic: bytes, payload: bytes, retain: bool)`` for QoS 0/1 messages (None: paho's on_message)
    on_raw_message = None

    def __init__(self, *args, **kwargs) -> None:
        self._rbuf = b""
        self._rpos = 0
        super().__init__(*args, **kwargs)
        self._v5 = kwargs.get("protocol") == mqtt.MQTTv5

    def _handle_publish(self) -> mqtt.MQTTErrorCode:
        raw = self.on_raw_message
        cmd = self._in_packet["command"]
        qos = (cmd & 0x06) >> 1
        if raw is None or qos > 1:
            return super()._handle_publish()
        pkt = self._in_packet["packet"]
        n = len(pkt)
        if n < 2:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        pos = 2 + ((pkt[0] << 8) | pkt[1])
        topic = pkt[2:pos]
        mid = 0
        if qos:
            if pos + 2 > n:
                return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
            mid = (pkt[pos] << 8) | pkt[pos + 1]
            pos += 2
        if self._v5:  # the properties' length (a variable byte integer), then the properties: skipped
            plen, mult, k = 0, 1, 0
            while True:
                if pos >= n or k == 4:
                    return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
                b = pkt[pos]
                pos += 1
                k += 1
                plen += (b & 0x7F) * mult
                mult <<= 7
                if not b & 0x80:
                    break
            pos += plen
        if pos > n:
            return mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
        with self._in_callback_mutex:
            try:
                raw(topic, pkt[pos:], bool(cmd & 0x01))
            except Exception:  # noqa: BLE001 - as paho with suppress_exceptions: the connection goes on
                if not self.suppress_exceptions:
                    raise
        return self._send_puback(mid) if qos else mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_recv(self, bufsize: int) -> bytes:
        pos, buf = self._rpos, self._rbuf
        if pos >= len(buf):
            data = super()._sock_recv(READ_SIZE)  # BlockingIOError when nothing is there: paho's "again"
            if not data:
                return data  # the peer closed the connection
            self._rbuf, self._rpos = buf, pos = data, 0
        out = buf[pos:pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def buffered(self) -> int:
        """Bytes read from the socket and not yet parsed."""
        return len(self._rbuf) - self._rpos

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(max_packets)  # the packets already read (select would not wake for them)
        return rc
