"""File numbers as the field builds them, recorder ids, and safe file names."""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from .errors import UnsafeName
from .zfy import CHINA_TZ, FileType, Mark

FILE_NUMBER_LEN = 8 + 20 + 14 + 2 + 2 + 14 + 4  # 64
MAX_NAME_BYTES = 255

_DIGITS = re.compile(r"^\d+$")


def _digits(value: str, n: int, what: str) -> str:
    if not isinstance(value, str) or len(value) != n or not _DIGITS.match(value) or not value.isascii():
        raise ValueError(f"{what} must be {n} ASCII digits, got {value!r}")
    return value


def _stamp(ts: _dt.datetime, what: str, tz: _dt.tzinfo) -> str:
    if not isinstance(ts, _dt.datetime):
        raise ValueError(f"{what} must be a datetime, got {ts!r}")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (with UTC offset), got {ts!r}")
    return f"{ts.astimezone(tz):%Y%m%d%H%M%S}"


def derive_recorder_id(
    unit_domain_code: str,
    serial: str,
    *,
    industry: str = "00",
    type_code: str = "131",
) -> str:
    """A 20-digit id in GB/T 28181 rule-A layout: centre code (8) + industry (2) +
    type (3) + sequence (7). The sequence is the 7-byte device serial when it is
    7 digits, else 7 digits derived from SHA-256 of the serial (stable)."""
    _digits(unit_domain_code, 8, "unit domain code")
    _digits(industry, 2, "industry code")
    _digits(type_code, 3, "type code")
    serial = serial.strip()
    if not serial:
        raise ValueError("recorder serial is empty")
    if len(serial) == 7 and serial.isascii() and serial.isdigit():
        seq = serial
    else:
        seq = f"{int.from_bytes(hashlib.sha256(serial.encode('utf-8')).digest()[:8], 'big') % 10**7:07d}"
    return unit_domain_code + industry + type_code + seq


def file_number(
    unit_domain_code: str,
    recorder_id: str,
    capture_time: _dt.datetime,
    file_type: int,
    mark: int,
    import_time: _dt.datetime,
    sequence: int,
    *,
    tz: _dt.tzinfo = CHINA_TZ,
) -> str:
    """64 characters: domain code (8) + recorder id (20) + capture time (14) +
    type (2) + mark (2) + import time (14) + sequence (4).

    Times are aware datetimes, written as YYYYMMDDhhmmss in ``tz`` (Beijing time by
    default) so that the same instant always gives the same number. ValueError on
    any malformed part."""
    _digits(unit_domain_code, 8, "unit domain code")
    _digits(recorder_id, 20, "recorder id")
    try:
        ftype = FileType(file_type)
    except ValueError:
        raise ValueError(f"file type must be 0..4, got {file_type!r}") from None
    try:
        fmark = Mark(mark)
    except ValueError:
        raise ValueError(f"mark must be 0 or 1, got {mark!r}") from None
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence <= 9999:
        raise ValueError(f"sequence must be an integer 0..9999, got {sequence!r}")
    out = (
        unit_domain_code
        + recorder_id
        + _stamp(capture_time, "capture time", tz)
        + f"{int(ftype):02d}{int(fmark):02d}"
        + _stamp(import_time, "import time", tz)
        + f"{sequence:04d}"
    )
    assert len(out) == FILE_NUMBER_LEN
    return out


@dataclass(frozen=True)
class FileNumber:
    unit_domain_code: str
    recorder_id: str
    capture_time: _dt.datetime
    file_type: FileType
    mark: Mark
    import_time: _dt.datetime
    sequence: int


def parse_file_number(number: str, *, tz: _dt.tzinfo = CHINA_TZ) -> FileNumber:
    """Inverse of ``file_number``; ValueError if malformed."""
    _digits(number, FILE_NUMBER_LEN, "file number")

    def ts(s: str, what: str) -> _dt.datetime:
        try:
            return _dt.datetime.strptime(s, "%Y%m%d%H%M%S").replace(tzinfo=tz)
        except ValueError:
            raise ValueError(f"file number: invalid {what} {s!r}") from None

    return FileNumber(
        unit_domain_code=number[0:8],
        recorder_id=number[8:28],
        capture_time=ts(number[28:42], "capture time"),
        file_type=FileType(int(number[42:44])),
        mark=Mark(int(number[44:46])),
        import_time=ts(number[46:60], "import time"),
        sequence=int(number[60:64]),
    )


def safe_name(name: str) -> str:
    """Return ``name`` if it is a bare file name safe to join under a directory;
    raise UnsafeName otherwise (paths, ``..``, NUL, control characters, > 255 bytes)."""
    if not isinstance(name, str):
        raise UnsafeName(f"文件名类型错误 / file name is not text: {name!r}")
    if name in ("", ".", ".."):
        raise UnsafeName(f"文件名无效 / invalid file name {name!r}")
    if "\x00" in name:
        raise UnsafeName(f"文件名含NUL字符 / file name contains NUL: {name!r}")
    if "/" in name or "\\" in name:
        raise UnsafeName(f"文件名含路径 / file name carries a path: {name!r}")
    if len(name) >= 2 and name[1] == ":" and name[0].isascii() and name[0].isalpha():
        raise UnsafeName(f"文件名含盘符 / file name carries a drive: {name!r}")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UnsafeName(f"文件名含控制字符 / file name contains control characters: {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeName(f"文件名编码无效 / file name is not valid Unicode: {name!r}") from None
    if size > MAX_NAME_BYTES:
        raise UnsafeName(f"文件名过长 / file name is {size} bytes, at most {MAX_NAME_BYTES}: {name[:40]!r}...")
    return name
