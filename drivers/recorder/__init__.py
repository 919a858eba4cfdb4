"""Body-worn recorder (执法记录仪) driver: one command set (the GA/T 947 行标 functions plus the
station's serial extras, ``commands.py``) over two transports (the serial framing, ``client.py``;
SCSI pass-through via SG_IO with a per-vendor table, ``scsi.py`` / ``sgio.py``), records, file
numbers, safe names, and plain mass-storage recorders. See docs/recorder-protocol.md and
docs/gat947.md."""

from __future__ import annotations

from .client import LinkStats, RecorderClient, SerialTransport
from .commands import Function, Recorder, Resolution, assign
from .errors import (
    AuthError,
    ProtocolError,
    RecorderError,
    RecorderGone,
    RecorderRefused,
    RecorderTimeout,
    UnsafeName,
    Unsupported,
)
from .mass_storage import guess_type, probe_duration, scan_mass_storage, time_from_name
from .naming import FileNumber, derive_recorder_id, file_number, parse_file_number, safe_name
from .protocol import Command, Frame, FrameDecoder, Result, crc16, encode_frame
from .zfy import CHINA_TZ, Battery, FileRecord, FileType, Mark, Storage, ZfyInfo

__all__ = [
    "AuthError",
    "Battery",
    "CHINA_TZ",
    "Command",
    "FileNumber",
    "FileRecord",
    "FileType",
    "Frame",
    "FrameDecoder",
    "LinkStats",
    "Mark",
    "ProtocolError",
    "RecorderClient",
    "RecorderError",
    "RecorderGone",
    "RecorderRefused",
    "RecorderTimeout",
    "Result",
    "Storage",
    "UnsafeName",
    "Unsupported",
    "Function",
    "Recorder",
    "Resolution",
    "SerialTransport",
    "assign",
    "ZfyInfo",
    "crc16",
    "derive_recorder_id",
    "encode_frame",
    "file_number",
    "guess_type",
    "parse_file_number",
    "probe_duration",
    "safe_name",
    "scan_mass_storage",
    "time_from_name",
]
