"""Leaner paths through paho for the bulk of the transfer (docs/mqtt.md, "Where the CPU goes").

- :func:`install_lean_decoder` (the archive receiver's process: every chunk arrives through it):
  paho copies each received payload several times while decoding; :func:`_lean_decode_publish`
  hands paho's receive buffer over as the payload.
- :func:`lean_client` (each of our connections, never process-wide: the benchmark's bare paho
  baseline runs in the agent's process and must stay paho as it is): a large packet is queued as
  a memoryview, so paho's writer sends it in place instead of copying it at every ``send`` (it
  slices ``packet[pos:]``: a full copy of each 256 KiB chunk even when one ``send`` takes it all);
  a PUBACK with no reason code and no properties (every successful one) is settled without the
  ``ReasonCode`` and ``Properties`` objects paho builds for it (two of each, about 20 us a chunk).
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

#: shared stand-ins for the empty objects paho would build for every chunk and every PUBACK;
#: nothing of ours (nor paho) writes to a received packet's reason code or properties
_NO_PUBLISH_PROPS = Properties(PacketTypes.PUBLISH)
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PUBACK_PROPS = Properties(PacketTypes.PUBACK)
#: packets at least this large are queued as memoryviews (slicing a small one costs nothing)
LEAN_SEND_MIN = 4096


def _lean_decode_publish(header: int, packet, protocol):
    """paho's ``_packet.decode_publish`` without copying the payload.

    paho 2 peels the topic, the packet id and the properties off with ``struct.unpack('...Ns')``,
    and each step copies the whole rest of the packet: four copies of every 256 KiB chunk, made
    while holding the GIL the archive's hashing and writing threads wait for. This reads the same
    fields from a memoryview, copies the topic and the property bytes, and hands over paho's
    receive buffer (a fresh bytearray per packet, which paho drops afterwards) with the header cut
    off the front as the payload. Same result (payload a bytearray, as paho's types allow), same
    ``MalformedPacket`` for anything short or inconsistent (tests compare both).
    """
    from paho.mqtt._packet import MalformedPacket, PublishPacket

    mv = memoryview(packet)
    n = len(mv)
    if n < 2:
        raise MalformedPacket("PUBLISH shorter than its topic length")
    qos = (header & 0x06) >> 1
    pos = 2 + ((mv[0] << 8) | mv[1])
    if pos > n:
        raise MalformedPacket("PUBLISH topic runs past the packet")
    topic = bytes(mv[2:pos])
    if protocol != mqtt.MQTTv5 and len(topic) == 0:
        raise MalformedPacket("topic can't be empty in MQTTv3")
    mid = 0
    if qos > 0:
        if pos + 2 > n:
            raise MalformedPacket("PUBLISH packet id runs past the packet")
        mid = (mv[pos] << 8) | mv[pos + 1]
        pos += 2
    properties = None
    if protocol == mqtt.MQTTv5 and pos < n and mv[pos] == 0:  # no properties (a chunk): no object built
        properties = _NO_PUBLISH_PROPS
        pos += 1
    elif protocol == mqtt.MQTTv5:
        plen, shift, k = 0, 0, pos
        while True:  # property length: variable byte integer, at most 4 bytes
            if k >= n or k - pos >= 4:
                raise MalformedPacket("PUBLISH property length malformed")
            b = mv[k]
            k += 1
            plen |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        end = k + plen
        if end > n:
            raise MalformedPacket("PUBLISH properties run past the packet")
        properties = Properties(PacketTypes.PUBLISH)
        properties.unpack(bytes(mv[pos:end]))
        pos = end
    mv.release()
    if isinstance(packet, bytearray):  # paho's receive buffer, dropped by paho after this packet:
        del packet[:pos]               # the payload is what remains (CPython: no copy)
        payload = packet
    else:
        payload = bytes(packet[pos:])
    return PublishPacket(dup=((header & 0x08) >> 3) != 0, qos=qos, retain=(header & 0x01) != 0,
                         topic=topic, mid=mid, properties=properties, payload=payload)


def install_lean_decoder() -> bool:
    """Make paho decode PUBLISH packets with :func:`_lean_decode_publish` in this process (the
    archive receiver: every chunk arrives through it). Only for the paho versions whose internals
    it matches (paho-mqtt 2.1 and later); otherwise paho stays as it is. Returns whether it is on."""
    try:
        from paho.mqtt import _packet
    except ImportError:
        return False
    cur = getattr(_packet, "decode_publish", None)
    if cur is None or not hasattr(_packet, "PublishPacket") or not hasattr(_packet, "convert_exception"):
        return False
    if getattr(cur, "_edge_lean", False):
        return True
    lean = _packet.convert_exception(_lean_decode_publish)
    lean._edge_lean = True
    lean._edge_original = cur
    _packet.decode_publish = lean
    return True


def lean_client(c: mqtt.Client) -> bool:
    """Make this one paho client send large packets in place and settle plain PUBACKs without
    building objects (module docstring). Only for the paho versions whose internals it matches
    (paho-mqtt 2.1 and later); otherwise the client stays as it is. Returns whether it is on."""
    queue = getattr(c, "_packet_queue", None)
    handle = getattr(c, "_handle_pubackcomp", None)
    if (queue is None or handle is None or not hasattr(c, "_out_message_mutex") or not hasattr(c, "_out_messages")
            or not hasattr(c, "_do_on_publish") or not isinstance(getattr(c, "_in_packet", None), dict)):
        return False
    if getattr(queue, "_edge_lean", False):
        return True

    def packet_queue(command, packet, mid, qos, info=None):
        if len(packet) >= LEAN_SEND_MIN and not isinstance(packet, memoryview):
            packet = memoryview(packet)  # paho's writer slices it at every send: no copy of a view
        return queue(command, packet, mid, qos, info)

    def handle_pubackcomp(cmd):
        pkt = c._in_packet["packet"]
        n = len(pkt)
        # success, no properties: mid only (MQTT 3.1.1 and 5), or reason 0 and an empty property length (5)
        if cmd == "PUBACK" and (n == 2 or (c._protocol == mqtt.MQTTv5 and 3 <= n <= 4 and pkt[2] == 0
                                           and (n == 3 or pkt[3] == 0))):
            mid = (pkt[0] << 8) | pkt[1]
            with c._out_message_mutex:
                if mid in c._out_messages:
                    return c._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PUBACK_PROPS)
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return handle(cmd)  # anything else (a refusal, properties, malformed): paho's own decoding

    packet_queue._edge_lean = True  # type: ignore[attr-defined]
    c._packet_queue = packet_queue  # type: ignore[method-assign]
    c._handle_pubackcomp = handle_pubackcomp  # type: ignore[method-assign]
    return True
