"""docs/recorder-protocol.md is exact: its example frames are what the encoder produces, and each rule
of "Rules an implementation follows" holds on the simulator over a real pty."""

from __future__ import annotations

import datetime as _dt
import re
import struct
import time
from pathlib import Path

import pytest

from drivers.recorder import ProtocolError, RecorderClient, ZfyInfo
from drivers.recorder.protocol import Command, FrameDecoder, Result, encode_frame
from drivers.recorder.zfy import decode_device_time, encode_device_time
from tools.media import make_recorder_media
from tools.recorder_sim import RecorderSim

DOC = Path(__file__).resolve().parents[2] / "docs" / "recorder-protocol.md"
TZ = _dt.timezone(_dt.timedelta(hours=8))
# no test here expects a serial timeout: a generous one keeps a loaded machine from failing them
SERIAL_TIMEOUT = 5.0


def example_frames() -> list[tuple[str, bytes]]:
    """(direction, bytes) of every tx/rx frame in the doc's first example block."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("## Example exchange (run on the simulator)", 1)[1].split("```", 2)[1]
    frames: list[tuple[str, bytes]] = []
    for line in block.splitlines():
        m = re.match(r"^(tx|rx) (.*)$", line)
        if m:
            frames.append((m.group(1), b""))
            line = m.group(2)
        elif line.startswith("   ") and frames and re.fullmatch(r"[0-9a-f /]+", line.strip()):
            line = line.strip()
        else:
            continue
        frames[-1] = (frames[-1][0], frames[-1][1] + bytes.fromhex(line.replace("/", " ")))
    return frames


def test_example_frames_decode_and_identify_is_98_bytes():
    frames = example_frames()
    assert len(frames) == 18
    for direction, raw in frames:
        dec = FrameDecoder()
        got = dec.feed(raw)
        assert len(got) == 1 and dec.bad_frames == 0 and dec.pending == 0, (direction, raw.hex(" "))
        f = got[0]
        assert f.encode() == raw  # byte for byte what the encoder writes
        assert f.is_response == (direction == "rx")
    ident = frames[1][1]
    assert len(ident) == 98 and ident[:6] == bytes.fromhex("a5 01 81 65 00 5a")
    info = ZfyInfo.decode(ident[7:-2])
    assert info == ZfyInfo("1234567", "000123", "张三", "330100000001", "杭州市城市管理局")
    assert ident[7 + 13:7 + 45] == "张三".encode("gbk").ljust(32, b"\0")  # the officer-name field: 32 bytes
    assert frames[0][1] == encode_frame(Command.IDENTIFY, 0x65)


def test_device_time_zone_limits():
    assert decode_device_time(b"20261127170350-0500").utcoffset() == -_dt.timedelta(hours=5)
    assert decode_device_time(b"20261127170350+2359").utcoffset() == _dt.timedelta(hours=23, minutes=59)
    for bad in (b"20261127170350+0860", b"20261127170350+2400", b"20260230170350+0800", b"2026112717035+08000"):
        with pytest.raises(ProtocolError):
            decode_device_time(bad)


@pytest.fixture
def sim(tmp_path):
    media = tmp_path / "media"
    make_recorder_media(media, n_files=2, seconds=1, size="160x120", serial="1234567")
    made = []

    def start(**kw):
        kw.setdefault("probe", False)
        s = RecorderSim(media, tmp_path / "ttyREC0", **kw).start()
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


def test_rules_auth_per_connection_and_checked_before_the_payload(sim):
    s = sim()
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        assert c.request(Command.ERASE, b"\xff\xfe")[0] == Result.AUTH_REQUIRED  # auth before payload
        assert c.request(Command.SET_CLOCK, b"junk")[0] == Result.AUTH_REQUIRED
        assert c.request(Command.AUTH, b"000000")[0] == Result.PASSWORD_OK
        assert c.request(Command.AUTH, b"0000")[0] == Result.BAD_REQUEST  # changes nothing
        assert c.request(Command.SET_CLOCK, b"junk")[0] == Result.BAD_REQUEST  # still authenticated
        assert c.request(Command.AUTH, b"999999")[0] == Result.PASSWORD_FAIL  # a wrong AUTH ends it
        assert c.request(Command.SET_MSDC)[0] == Result.AUTH_REQUIRED
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:  # reopening the port is the same connection
        assert c.request(Command.AUTH, b"000000")[0] == Result.PASSWORD_OK
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        assert c.request(Command.SET_MSDC)[0] == Result.MSDC_OK


def test_rules_new_connection_after_the_drop_needs_auth_again(sim):
    s = sim(msdc_drop=0.5)
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        c.authenticate("000000")
        path = c.mass_storage()
    assert s.channel_dropped.wait(5) and s.channel_back.wait(5)
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        assert c.request(Command.SET_MSDC)[0] == Result.AUTH_REQUIRED
        c.authenticate("000000")
        assert c.mass_storage() == path  # still mass storage, same path: it ends only at unplug
    assert Path(path).is_dir() and s.connections == 2


def test_rules_clock_truncated_and_zone_adopted(sim):
    start = _dt.datetime(2026, 11, 27, 17, 3, 50, tzinfo=TZ)
    s = sim(clock_fixed=start)
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        # read when the device is 0.5-0.9 s into a second (e.g. 17:03:50.6): truncating gives :50,
        # rounding :51. The device clock just before and after the read bounds what it answered,
        # so a loaded machine only costs another try, never a wrong verdict.
        for _ in range(20):
            time.sleep((0.6 - s.clock_seconds() % 1) % 1)
            before = s.clock_seconds()
            t = c.read_clock()
            after = s.clock_seconds()
            if int(before) == int(after) and before % 1 >= 0.5:
                break
        assert int(before) == int(after) and before % 1 >= 0.5, (before, after)
        assert t.timestamp() == int(before) and t - start < _dt.timedelta(seconds=20)  # truncated, not rounded
        c.authenticate("000000")
        west = _dt.timezone(-_dt.timedelta(hours=5))
        t0 = time.monotonic()
        c.set_clock(_dt.datetime(2026, 11, 27, 4, 5, 0, tzinfo=west), align=False)
        t = c.read_clock()
        took = time.monotonic() - t0
        assert t.utcoffset() == -_dt.timedelta(hours=5)  # the recorder's zone from now on
        assert -1 <= (t - _dt.datetime(2026, 11, 27, 4, 5, 0, tzinfo=west)).total_seconds() <= 1 + took
        assert c.request(Command.SET_CLOCK, b"20261127040500+0860")[0] == Result.BAD_REQUEST


def test_rules_listing_order_from_index_0_and_paging(sim):
    s = sim()
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        recs = c.list_files()
        assert [r.name for r in recs] == [f.name for f in sorted(s.files, key=lambda f: (f.capture_time, f.name))]
        total, count = struct.unpack_from(">HB", c.request(Command.LIST_FILES, struct.pack(">H", 0))[1])
        assert (total, count) == (len(recs), len(recs))
        code, data = c.request(Command.LIST_FILES, struct.pack(">H", total))
        assert code == Result.OK and struct.unpack(">HB", data) == (total, 0)  # start >= total: count 0
        code, data = c.request(Command.LIST_FILES, struct.pack(">H", 1))
        assert struct.unpack_from(">HB", data) == (total, total - 1)
        assert c.request(Command.LIST_FILES, b"\x00")[0] == Result.BAD_REQUEST
        c.authenticate("000000")
        assert c.mass_storage() == c.mass_storage()  # SET_MSDC again: 7 and the same path
        c.erase(recs[0].name)  # ERASE in mass-storage mode: gone from the listing and the volume
        assert [r.name for r in c.list_files()] == [r.name for r in recs[1:]]
        assert not (Path(s.mount_dir) / recs[0].name).exists()


def test_rules_erase_fail_in_mass_storage(sim):
    s = sim(msdc_erase_fail=True)
    with RecorderClient(s.port_path, timeout=SERIAL_TIMEOUT) as c:
        c.authenticate("000000")
        name = c.list_files()[0].name
        c.erase(name)  # before SET_MSDC it erases
        c.mass_storage()
        other = c.list_files()[0].name
        assert c.request(Command.ERASE, other.encode())[0] == Result.FAIL
    assert s.erased == [name]


def test_device_time_round_trip():
    ts = _dt.datetime(2026, 11, 27, 17, 3, 50, tzinfo=TZ)
    assert encode_device_time(ts) == b"20261127170350+0800" and decode_device_time(b"20261127170350+0800") == ts
