"""A leaner PUBLISH decoder for paho (the archive receiver: every chunk arrives through it).

paho copies each received payload several times while decoding; :func:`install_lean_decoder`
swaps in :func:`_lean_decode_publish`, which hands paho's receive buffer over as the payload.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


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
    if protocol == mqtt.MQTTv5:
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
