"""Records the recorder reports: ZFY_INFO identity, battery, storage, file records,
and their byte layouts on the command channel (docs/recorder-protocol.md)."""

from __future__ import annotations

import datetime as _dt
import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import ProtocolError

CHINA_TZ = _dt.timezone(_dt.timedelta(hours=8), "+0800")

# ZFY_INFO field widths (bytes, GBK, NUL-padded). Two layouts circulate (docs/gat947.md 1.5):
# "89" = 7/6/32/12/32, a full field has no terminator (the serial channel, the JieLi SCSI table);
# "94" = 8/7/33/13/33, the same usable lengths plus one NUL terminator per field.
ZFY_NAMES = ("serial", "officer_number", "officer_name", "unit_number", "unit_name")
ZFY_LAYOUTS = {"89": (7, 6, 32, 12, 32), "94": (8, 7, 33, 13, 33)}
ZFY_FIELDS = tuple(zip(ZFY_NAMES, ZFY_LAYOUTS["89"]))
ZFY_INFO_LEN = sum(width for _, width in ZFY_FIELDS)  # 89


def _layout(layout: str) -> tuple[tuple[tuple[str, int], ...], int]:
    """(fields with their widths, bytes reserved for a terminator per field)."""
    try:
        widths = ZFY_LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown ZFY_INFO layout {layout!r} (89 or 94)") from None
    return tuple(zip(ZFY_NAMES, widths)), (1 if layout == "94" else 0)


@dataclass(frozen=True)
class ZfyInfo:
    """GetZFYInfo: device serial (产品序号), officer number (警号), officer name,
    unit number (单位编号), unit name."""

    serial: str
    officer_number: str
    officer_name: str
    unit_number: str
    unit_name: str

    def encode(self, layout: str = "89") -> bytes:
        """89 (or 94) bytes, each field GBK and NUL-padded; ValueError if a field does not fit."""
        fields, term = _layout(layout)
        out = bytearray()
        for field, width in fields:
            value = getattr(self, field)
            try:
                raw = value.encode("gbk")
            except UnicodeEncodeError:
                raise ValueError(f"ZFY_INFO {field}: {value!r} is not encodable in GBK") from None
            if len(raw) > width - term or b"\x00" in raw:
                raise ValueError(f"ZFY_INFO {field}: {value!r} is {len(raw)} GBK bytes, at most {width - term}")
            out += raw.ljust(width, b"\x00")
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, layout: str = "89") -> ZfyInfo:
        fields, _ = _layout(layout)
        size = sum(w for _, w in fields)
        if len(data) != size:
            raise ProtocolError(
                f"ZFY_INFO 长度错误 / ZFY_INFO is {len(data)} bytes, expected {size}"
            )
        values = {}
        offset = 0
        for field, width in fields:
            raw = data[offset : offset + width].split(b"\x00", 1)[0]
            offset += width
            try:
                values[field] = raw.decode("gbk")
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"ZFY_INFO 字段非GBK编码 / ZFY_INFO {field} is not valid GBK: {raw.hex()}"
                ) from None
        return cls(**values)


def decode_id_code(data: bytes) -> str:
    """GetIDCode's answer: printable ASCII up to 8 bytes, NUL-padded."""
    raw = data.split(b"\x00", 1)[0]
    if not raw or len(raw) > 8 or not all(0x20 < b < 0x7F for b in raw):
        raise ProtocolError(f"厂商型号代码无效 / bad ID code {data.hex()} (printable ASCII, 1-8 bytes)")
    return raw.decode("ascii")


class FileType(IntEnum):
    VIDEO = 0
    AUDIO = 1
    IMAGE = 2
    TEXT = 3
    OTHER = 4


class Mark(IntEnum):
    NORMAL = 0
    IMPORTANT = 1  # 重点文件


@dataclass(frozen=True)
class Battery:
    level: int  # percent 0..100
    charging: bool | None  # None: the transport does not report it (行标 has no charging flag)


@dataclass(frozen=True)
class Storage:
    used: int  # bytes
    free: int  # bytes

    @property
    def total(self) -> int:
        return self.used + self.free

    @property
    def full(self) -> bool:
        return self.free == 0


@dataclass(frozen=True)
class FileRecord:
    """A file on the recorder. ``name`` is a bare, safe name relative to the mount root;
    ``path`` is set when the record comes from a mounted directory."""

    name: str
    size: int
    capture_time: _dt.datetime  # aware
    duration: int  # seconds
    type: FileType
    mark: Mark = Mark.NORMAL
    locked: bool = False
    path: str | None = None

    @property
    def protected(self) -> bool:
        """The recorder refuses to erase it (important or locked)."""
        return self.mark == Mark.IMPORTANT or self.locked


# --- device time: "YYYYMMDDhhmmss+0800" (19 ASCII bytes) ---------------------------

DEVICE_TIME_LEN = 19
_DEVICE_TIME = re.compile(rb"^(\d{14})([+-])(\d{2})(\d{2})$")


def encode_device_time(ts: _dt.datetime) -> bytes:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("device time needs an aware datetime (e.g. +08:00)")
    offset = ts.utcoffset()
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hh, mm = divmod(abs(minutes), 60)
    return f"{ts:%Y%m%d%H%M%S}{sign}{hh:02d}{mm:02d}".encode("ascii")


def decode_device_time(raw: bytes) -> _dt.datetime:
    m = _DEVICE_TIME.match(raw)
    if not m:
        raise ProtocolError(f"记录仪时间格式错误 / bad device time {raw!r} (want YYYYMMDDhhmmss+0800)")
    digits, sign, hh, mm = m.groups()
    offset = _dt.timedelta(hours=int(hh), minutes=int(mm))
    if int(hh) > 23 or int(mm) > 59:  # zone +hhmm: hh 00-23, mm 00-59 (docs/recorder-protocol.md)
        raise ProtocolError(f"记录仪时区错误 / bad device time zone in {raw!r}")
    tz = _dt.timezone(-offset if sign == b"-" else offset)
    try:
        return _dt.datetime.strptime(digits.decode(), "%Y%m%d%H%M%S").replace(tzinfo=tz)
    except ValueError:
        raise ProtocolError(f"记录仪时间无效 / invalid device time {raw!r}") from None


# --- file record on the wire --------------------------------------------------------
# name_len u8, name (UTF-8), size u64, capture time (19), duration u32, type u8, mark u8, locked u8

_REC_TAIL = struct.Struct(">Q19sIBBB")


def encode_file_record(rec: FileRecord) -> bytes:
    name = rec.name.encode("utf-8")
    if len(name) > 255:
        raise ValueError(f"file name longer than 255 bytes: {rec.name!r}")
    return (
        bytes([len(name)])
        + name
        + _REC_TAIL.pack(
            rec.size,
            encode_device_time(rec.capture_time),
            rec.duration,
            int(rec.type),
            int(rec.mark),
            1 if rec.locked else 0,
        )
    )


def decode_file_record(data: bytes, offset: int = 0) -> tuple[FileRecord, int]:
    """Decode one record at ``offset``; returns it and the offset after it.
    The name is returned as sent: callers run it through ``safe_name``."""
    try:
        n = data[offset]
        raw_name = data[offset + 1 : offset + 1 + n]
        if len(raw_name) != n:
            raise IndexError
        size, ts, duration, ftype, mark, locked = _REC_TAIL.unpack_from(data, offset + 1 + n)
    except (IndexError, struct.error):
        raise ProtocolError("文件列表截断 / file list record truncated") from None
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"文件名非UTF-8编码 / file name is not UTF-8: {raw_name.hex()}") from None
    try:
        ftype = FileType(ftype)
        mark = Mark(mark)
    except ValueError:
        raise ProtocolError(
            f"文件类型或标记无效 / bad file type {ftype} or mark {mark} for {name!r}"
        ) from None
    rec = FileRecord(
        name=name,
        size=size,
        capture_time=decode_device_time(ts),
        duration=duration,
        type=ftype,
        mark=mark,
        locked=bool(locked),
    )
    return rec, offset + 1 + n + _REC_TAIL.size
