"""Recorder protocol: framing, resync, checksums, ZFY_INFO, device time, file records,
file numbers and safe names (no device needed)."""

from __future__ import annotations

import datetime as _dt
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.common.errors import EdgeError
from drivers.recorder import (
    CHINA_TZ,
    FileRecord,
    FileType,
    Frame,
    FrameDecoder,
    Mark,
    ProtocolError,
    RecorderError,
    Result,
    UnsafeName,
    ZfyInfo,
    crc16,
    derive_recorder_id,
    encode_frame,
    file_number,
    parse_file_number,
    safe_name,
)
from drivers.recorder.errors import AuthError, RecorderGone, RecorderRefused, RecorderTimeout
from drivers.recorder.protocol import MAX_PAYLOAD, SOF, Command
from drivers.recorder.zfy import (
    ZFY_INFO_LEN,
    decode_device_time,
    decode_file_record,
    encode_device_time,
    encode_file_record,
)

# --- framing -------------------------------------------------------------------------


def test_crc16_check_value():
    assert crc16(b"123456789") == 0x29B1  # CRC-16/CCITT-FALSE
    assert crc16(b"") == 0xFFFF


def test_frame_layout():
    raw = encode_frame(Command.IDENTIFY, 0x07, b"")
    assert raw == bytes.fromhex("a5 01 01 07 0000") + crc16(bytes.fromhex("01 01 07 0000")).to_bytes(2, "big")


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\xa5" * 10, bytes(range(256)) * 3, b"x" * MAX_PAYLOAD])
def test_round_trip_whole_and_byte_by_byte(payload):
    raw = encode_frame(0x88, 200, payload)
    assert FrameDecoder().feed(raw) == [Frame(0x88, 200, payload)]
    dec = FrameDecoder()
    out = []
    for b in raw:
        out += dec.feed(bytes([b]))
    assert out == [Frame(0x88, 200, payload)]
    assert out[0].is_response and out[0].command == 0x08
    assert dec.pending == 0 and dec.discarded_bytes == 0


def test_encode_rejects_oversize_and_out_of_range():
    with pytest.raises(ValueError):
        encode_frame(1, 1, b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode_frame(1, 256)


def test_resync_after_garbage():
    frames = [encode_frame(1, i, bytes([i]) * i) for i in range(5)]
    stream = b"\x00\xff\xa5garbage" + frames[0] + b"\xa5" + frames[1] + b"\x13\x37" + frames[2] + frames[3] + b"\xa5\x01"
    dec = FrameDecoder()
    got = dec.feed(stream) + dec.feed(frames[4])
    assert [f.seq for f in got] == [0, 1, 2, 3, 4]
    assert dec.discarded_bytes == len(b"\x00\xff\xa5garbage") + 1 + 2 + 2


def test_fake_header_does_not_swallow_real_frame():
    # a stray SOF + version announcing 600 bytes of payload that never come
    fake = bytes([SOF, 0x01, 0x81, 0x05, 0x02, 0x58])
    real = encode_frame(0x81, 6, b"hello")
    dec = FrameDecoder()
    assert dec.feed(fake + real) == [Frame(0x81, 6, b"hello")]
    assert dec.pending == 0


def test_checksum_error_discarded_then_next_frame():
    good = encode_frame(0x83, 9, b"20261127085600+0800")
    bad = bytearray(good)
    bad[8] ^= 0x40  # flip a payload bit
    dec = FrameDecoder()
    assert dec.feed(bytes(bad)) == []
    assert dec.feed(good) == [Frame(0x83, 9, b"20261127085600+0800")]
    assert dec.bad_frames == 1
    assert dec.discarded_bytes == len(bad)


def test_wrong_version_and_overlong_length_are_not_frames():
    body = bytes([0x02, 0x01, 0x01, 0x00, 0x00])
    v2 = bytes([SOF]) + body + crc16(body).to_bytes(2, "big")
    huge = bytes([SOF, 0x01, 0x01, 0x01, 0xFF, 0xFF])
    good = encode_frame(1, 2)
    dec = FrameDecoder()
    assert dec.feed(v2 + huge + good) == [Frame(1, 2, b"")]
    assert dec.bad_frames == 2


_garbage = st.binary(max_size=40).map(lambda b: b.replace(bytes([SOF]), b"\x00"))
_noise = st.one_of(
    _garbage,
    st.tuples(st.integers(0, 255), st.integers(0, 2000), st.binary(max_size=10)).map(
        lambda t: bytes([SOF, 0x01, t[0], 0]) + t[1].to_bytes(2, "big") + t[2]
    ),
)


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.lists(st.tuples(_noise, st.integers(0, 255), st.binary(max_size=64)), min_size=1, max_size=6),
    st.integers(0, 2**32),
)
def test_property_frames_survive_noise_and_chunking(items, seed):
    stream = b"".join(noise + encode_frame(0x85, seq, payload) for noise, seq, payload in items)
    rng = random.Random(seed)
    dec = FrameDecoder()
    got = []
    i = 0
    while i < len(stream):
        n = rng.randint(1, 17)
        got += dec.feed(stream[i : i + n])
        i += n
    assert [(f.seq, f.payload) for f in got] == [(seq, payload) for _, seq, payload in items]


# --- result codes and errors -----------------------------------------------------------


def test_ministry_result_codes():
    assert [Result.CONNECT_OK, Result.CONNECT_FAIL, Result.PASSWORD_OK, Result.PASSWORD_FAIL] == [1, 2, 3, 4]
    assert [Result.TIME_SYNC_OK, Result.TIME_SYNC_FAIL, Result.MSDC_OK, Result.MSDC_FAIL] == [5, 6, 7, 8]


def test_error_hierarchy():
    # drivers know no agent: their errors have their own base, and the CLI turns them into one line
    for cls in (RecorderTimeout, ProtocolError, AuthError, RecorderGone, UnsafeName):
        assert issubclass(cls, RecorderError) and not issubclass(cls, EdgeError)
    assert RecorderRefused("x", 13).result == 13


def test_cli_prints_a_recorder_error_as_one_line():
    import click
    from click.testing import CliRunner

    from agent.cli import _Group

    @click.group(cls=_Group)
    def grp():
        pass

    @grp.command()
    def probe():
        raise RecorderTimeout("记录仪无应答 / the recorder did not answer")

    res = CliRunner().invoke(grp, ["probe"])
    assert res.exit_code == 1
    assert res.output.strip() == "error: 记录仪无应答 / the recorder did not answer"


# --- ZFY_INFO ------------------------------------------------------------------------------


def test_zfy_info_gbk_round_trip():
    info = ZfyInfo("A123456", "012345", "欧阳娜娜", "330106000001", "杭州市西湖区综合行政执法局")
    raw = info.encode()
    assert len(raw) == ZFY_INFO_LEN == 89
    assert raw[:7] == b"A123456"
    assert raw[13:45] == "欧阳娜娜".encode("gbk").ljust(32, b"\x00")
    assert raw[57:89] == "杭州市西湖区综合行政执法局".encode("gbk").ljust(32, b"\x00")
    assert ZfyInfo.decode(raw) == info


def test_zfy_info_full_width_fields():
    # 16 Chinese characters are exactly 32 GBK bytes: no NUL at all
    name = "中" * 16
    info = ZfyInfo("1234567", "123456", name, "123456789012", name)
    assert ZfyInfo.decode(info.encode()) == info


@pytest.mark.parametrize(
    "field,value",
    [("officer_name", "中" * 17), ("serial", "12345678"), ("officer_number", "1234567"), ("officer_name", "😀")],
)
def test_zfy_info_rejects_what_does_not_fit(field, value):
    kwargs = dict(serial="1234567", officer_number="000001", officer_name="张三", unit_number="1", unit_name="局")
    kwargs[field] = value
    with pytest.raises(ValueError, match=field):
        ZfyInfo(**kwargs).encode()


def test_zfy_info_decode_errors():
    with pytest.raises(ProtocolError, match="89"):
        ZfyInfo.decode(b"\x00" * 88)
    raw = bytearray(ZfyInfo("1234567", "000001", "张三", "1", "局").encode())
    raw[13:15] = b"\xff\xff"  # not GBK
    with pytest.raises(ProtocolError, match="officer_name"):
        ZfyInfo.decode(bytes(raw))


# --- device time and file records ------------------------------------------------------------


def test_device_time():
    ts = _dt.datetime(2026, 11, 27, 8, 56, 0, tzinfo=CHINA_TZ)
    assert encode_device_time(ts) == b"20261127085600+0800"
    assert decode_device_time(b"20261127085600+0800") == ts
    west = decode_device_time(b"19700101000000-0530")
    assert west.utcoffset() == -_dt.timedelta(hours=5, minutes=30)
    assert encode_device_time(west) == b"19700101000000-0530"
    with pytest.raises(ValueError):
        encode_device_time(_dt.datetime(2026, 1, 1))
    for bad in (b"2026112708560+0800", b"20261327085600+0800", b"20261127085600 0800", b"20261127085600+2500"):
        with pytest.raises(ProtocolError):
            decode_device_time(bad)


def test_file_record_round_trip():
    rec = FileRecord(
        name="1234567_20261127085600_0001.MP4",
        size=3 * 2**30 + 5,
        capture_time=_dt.datetime(2026, 11, 27, 8, 56, tzinfo=CHINA_TZ),
        duration=600,
        type=FileType.VIDEO,
        mark=Mark.IMPORTANT,
        locked=True,
    )
    raw = encode_file_record(rec) + b"tail"
    back, end = decode_file_record(raw)
    assert back == rec and raw[end:] == b"tail"
    assert back.protected
    with pytest.raises(ProtocolError, match="truncated"):
        decode_file_record(raw[:20])
    bad_type = bytearray(encode_file_record(rec))
    bad_type[-3] = 9
    with pytest.raises(ProtocolError, match="type"):
        decode_file_record(bytes(bad_type))


# --- file number -------------------------------------------------------------------------------

CAPTURE = _dt.datetime(2026, 11, 27, 8, 56, 1, tzinfo=CHINA_TZ)
IMPORT = _dt.datetime(2026, 11, 27, 18, 30, 0, tzinfo=CHINA_TZ)
RID = "33010600001311234567"


def test_file_number_format():
    n = file_number("33010600", RID, CAPTURE, FileType.VIDEO, Mark.IMPORTANT, IMPORT, 7)
    assert n == "33010600" + RID + "20261127085601" + "00" + "01" + "20261127183000" + "0007"
    assert len(n) == 64 and n.isdigit()
    back = parse_file_number(n)
    assert (back.unit_domain_code, back.recorder_id, back.capture_time, back.file_type, back.mark,
            back.import_time, back.sequence) == ("33010600", RID, CAPTURE, FileType.VIDEO, Mark.IMPORTANT, IMPORT, 7)


def test_file_number_writes_beijing_time():
    utc = CAPTURE.astimezone(_dt.timezone.utc)
    assert file_number("33010600", RID, utc, 1, 0, IMPORT, 9999)[28:42] == "20261127085601"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"unit_domain_code": "3301060"},
        {"unit_domain_code": "3301060A"},
        {"recorder_id": RID[:-1]},
        {"recorder_id": RID[:-1] + "x"},
        {"capture_time": CAPTURE.replace(tzinfo=None)},
        {"import_time": "20261127183000"},
        {"file_type": 5},
        {"mark": 2},
        {"sequence": 10000},
        {"sequence": -1},
        {"sequence": True},
    ],
)
def test_file_number_validation(kwargs):
    args = dict(unit_domain_code="33010600", recorder_id=RID, capture_time=CAPTURE, file_type=0, mark=0,
                import_time=IMPORT, sequence=1)
    args.update(kwargs)
    with pytest.raises(ValueError):
        file_number(**args)


def test_derive_recorder_id():
    assert derive_recorder_id("33010600", "1234567") == "33010600" + "00" + "131" + "1234567"
    rid = derive_recorder_id("33010600", "ZFY-A9", industry="01", type_code="138")
    assert len(rid) == 20 and rid.isdigit() and rid.startswith("3301060001138")
    assert rid == derive_recorder_id("33010600", "ZFY-A9", industry="01", type_code="138")  # stable
    assert rid != derive_recorder_id("33010600", "ZFY-A8", industry="01", type_code="138")
    with pytest.raises(ValueError):
        derive_recorder_id("3301", "1234567")
    with pytest.raises(ValueError):
        derive_recorder_id("33010600", "  ")


# --- safe names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1234567_20261127085600_0001.MP4", "询问 记录.wav", "a..b.jpg", ".hidden", "中" * 85])
def test_safe_name_accepts(name):
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name,why",
    [
        ("../evil.mp4", "path"),
        ("..", "invalid"),
        (".", "invalid"),
        ("", "invalid"),
        ("/etc/passwd", "path"),
        ("DCIM/a.mp4", "path"),
        ("..\\..\\boot.ini", "path"),
        ("a\x00.mp4", "NUL"),
        ("C:evil.mp4", "drive"),
        ("a\nb.mp4", "control"),
        ("x" * 256, "too long|255"),
        ("中" * 86, "255"),
        (b"a.mp4", "not text"),
    ],
)
def test_safe_name_rejects(name, why):
    with pytest.raises(UnsafeName, match=why):
        safe_name(name)
