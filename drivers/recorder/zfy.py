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

# ZFY_INFO field widths (bytes, GBK, NUL-padded)
ZFY_FIELDS = (
    ("serial", 7),
    ("officer_number", 6),
    ("officer_name", 32),
    ("unit_number", 12),
    ("unit_name", 32),
)
ZFY_INFO_LEN = sum(width for _, width in ZFY_FIELDS)  # 89


@dataclass(frozen=True)
class ZfyInfo:
    """GetZFYInfo: device serial (产品序号), officer number (警号), officer name,
    unit number (单位编号), unit name."""

    serial: str
    officer_number: str
    officer_name: str
    unit_number: str
    unit_name: str

    def encode(self) -> bytes:
        """89 bytes, each field GBK and NUL-padded; ValueError if a field does not fit."""
        out = bytearray()
        for field, width in ZFY_FIELDS:
            value = getattr(self, field)
            try:
                raw = value.encode("gbk")
            except UnicodeEncodeError:
                raise ValueError(f"ZFY_INFO {field}: {value!r} is not encodable in GBK") from None
            if len(raw) > width or b"\x00" in raw:
                raise ValueError(f"ZFY_INFO {field}: {value!r} is {len(raw)} GBK bytes, at most {width}")
            out += raw.ljust(width, b"\x00")
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> ZfyInfo:
        if len(data) != ZFY_INFO_LEN:
            raise ProtocolError(
                f"ZFY_INFO 长度错误 / ZFY_INFO is {len(data)} bytes, expected {ZFY_INFO_LEN}"
            )
        values = {}
        offset = 0
        for field, width in ZFY_FIELDS:
            raw = data[offset : offset + width].split(b"\x00", 1)[0]
            offset += width
            try:
                values[field] = raw.decode("gbk")
            except UnicodeDecodeError:
                raise ProtocolError(
                    f"ZFY_INFO 字段非GBK编码 / ZFY_INFO {field} is not valid GBK: {raw.hex()}"
                ) from None
        return cls(**values)


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
    charging: bool


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
    if offset >= _dt.timedelta(hours=24):
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
