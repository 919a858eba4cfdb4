"""Fuzzing of the wire parsers: transfer messages (manifest, chunk, finish, answer), health
payloads (status, health, alarm, component, ratio) and Modbus RTU sensor frames. Only clean
errors (ProtocolError / PayloadError / EdgeError), never a crash."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from agent.common.errors import EdgeError
from agent.wire import health_parse as payloads
from agent.wire import protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5), max_leaves=25)
blobs = st.one_of(st.binary(max_size=600), json_values.map(lambda v: json.dumps(v).encode()))
props = st.dictionaries(st.sampled_from(["sig", "file", "offset", "sha256", "size", "x"]),
                        st.one_of(st.text(max_size=40), st.sampled_from(["0", "-1", "99999999999999999999", "../x",
                                                                          "Zm9v", "a" * 64])), max_size=5)


def _clean(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except (EdgeError, ValueError):
        pass


@given(blobs, props)
def test_transfer_messages(payload, p):
    _clean(protocol.parse_manifest, payload, p, item="dock-01-x", device="dock-01", max_manifest=4096)
    _clean(protocol.parse_chunk, payload, p)
    _clean(protocol.parse_chunk, payload, {})  # the header-line form
    _clean(protocol.parse_chunk, b'{"file":"a","offset":0,"sha256":"' + payload + b'\n' + payload, {})
    protocol.chunk_corr(payload)  # never raises
    _clean(protocol.parse_finish, payload)
    _clean(protocol.parse_answer, payload)


@given(blobs, st.text(max_size=30))
def test_health_payloads(payload, name):
    _clean(payloads.parse_status, payload)
    _clean(payloads.parse_health, payload)
    _clean(payloads.parse_alarm, payload, name or "disk_low")
    _clean(payloads.parse_component, payload, name or "bay-1")
    _clean(payloads.parse_ratio, payload, name or "dock-01")


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_modbus_rtu_frames(chunks):
    """The sensor driver's framing (pymodbus RTU, client side) on garbage: no exception escapes
    the decode step the driver relies on."""
    framer = FramerRTU(DecodePDU(is_server=False))
    buf = b""
    for c in chunks:
        buf += c
        try:
            used, _pdu = framer.handleFrame(buf, 0, 0)
        except Exception as exc:  # pymodbus signals bad frames with its own exceptions
            assert "ModbusIOException" in type(exc).__name__ or isinstance(exc, (ValueError, KeyError, IndexError)), exc
            buf = b""
            continue
        buf = buf[used:]
