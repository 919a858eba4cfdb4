"""The recorder command set: one vocabulary over every transport.

The vocabulary is the GA/T 947 行标 interface (docs/gat947.md): Init_Device, GetIDCode,
GetZFYInfo, WriteZFYInfo, SyncDevTime, SetMSDC, ReadDeviceResolution,
ReadDeviceBatteryDumpEnergy, the admin password, and the 行标 result codes 1-8; plus what a
collection station needs besides and only the serial command channel offers (read clock, storage,
list files, erase).

A :class:`Recorder` drives one recorder through one :class:`Transport`:

- the serial framing (``drivers.recorder.client.SerialTransport``, docs/recorder-protocol.md),
- SCSI pass-through via ``SG_IO`` (``drivers.recorder.scsi.ScsiTransport``) with the command
  blocks from a per-vendor table.

A transport moves bytes and answers ``(result code, data)`` per :class:`Function`; the byte
layouts of values (time, battery, resolution, ZFY_INFO) are its :class:`Codec`. Everything a
caller sees is the same whatever the transport: the same methods, the same records, the same
errors for the same result codes. A function a transport (or a vendor table) does not carry
answers 15 and raises :class:`~drivers.recorder.errors.Unsupported`.
"""

from __future__ import annotations

import datetime as _dt
import struct
import time
from dataclasses import dataclass
from enum import Enum
from typing import Iterator, Protocol

from .errors import AuthError, ProtocolError, RecorderError, RecorderRefused, Unsupported
from .naming import safe_name
from .protocol import Result, result_text
from .zfy import Battery, FileRecord, Storage, ZfyInfo, decode_file_record

PASSWORD_MAX = 6  # characters of an admin password (DOMAIN brief; carried in a 16-byte field on SCSI)


class Function(str, Enum):
    """The functions of the command set. The value is the key of a vendor SCSI table (config)."""

    INIT_DEVICE = "init_device"  # Init_Device
    GET_ID_CODE = "get_id_code"  # GetIDCode: manufacturer + model code
    GET_ZFY_INFO = "get_zfy_info"  # GetZFYInfo
    WRITE_ZFY_INFO = "write_zfy_info"  # WriteZFYInfo
    SYNC_DEV_TIME = "sync_dev_time"  # SyncDevTime
    SET_MSDC = "set_msdc"  # SetMSDC
    READ_RESOLUTION = "read_resolution"  # ReadDeviceResolution
    READ_BATTERY = "read_battery"  # ReadDeviceBatteryDumpEnergy
    AUTHENTICATE = "authenticate"  # admin password check (serial: AUTH; SCSI: per vendor table)
    # station extras (serial command channel only; no 行标 function)
    READ_CLOCK = "read_clock"
    STORAGE = "storage"
    LIST_FILES = "list_files"
    ERASE = "erase"

    @property
    def title(self) -> str:
        return _TITLES[self]


_TITLES = {
    Function.INIT_DEVICE: "Init_Device", Function.GET_ID_CODE: "GetIDCode", Function.GET_ZFY_INFO: "GetZFYInfo",
    Function.WRITE_ZFY_INFO: "WriteZFYInfo", Function.SYNC_DEV_TIME: "SyncDevTime", Function.SET_MSDC: "SetMSDC",
    Function.READ_RESOLUTION: "ReadDeviceResolution", Function.READ_BATTERY: "ReadDeviceBatteryDumpEnergy",
    Function.AUTHENTICATE: "password", Function.READ_CLOCK: "READ_CLOCK", Function.STORAGE: "STORAGE",
    Function.LIST_FILES: "LIST_FILES", Function.ERASE: "ERASE",
}


@dataclass(frozen=True)
class Resolution:
    """ReadDeviceResolution: the current recording picture size."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class Codec(Protocol):
    """Byte layouts of the values a transport carries (each transport has its own)."""

    zfy_len: int

    def encode_zfy(self, info: ZfyInfo) -> bytes: ...
    def decode_zfy(self, data: bytes) -> ZfyInfo: ...
    def encode_time(self, ts: _dt.datetime) -> bytes: ...
    def decode_battery(self, data: bytes) -> Battery: ...
    def decode_resolution(self, data: bytes) -> Resolution: ...
    def decode_id_code(self, data: bytes) -> str: ...


class Transport(Protocol):
    """Moves one function call to the recorder and back. ``call`` returns the result code (行标
    codes 1-8, the serial channel's own 9-16) and the data after it; it raises RecorderTimeout,
    RecorderGone or ProtocolError for what is not an answer at all."""

    kind: str  # "serial" | "scsi"
    where: str  # the device path, for messages
    codec: Codec

    def call(self, fn: Function, payload: bytes = b"") -> tuple[int, bytes]: ...
    def success(self, fn: Function) -> int: ...
    def authenticate(self, password: bytes) -> tuple[int, bytes]: ...
    def supports(self, fn: Function) -> bool: ...
    def close(self) -> None: ...


def check_password(password: str) -> bytes:
    """The admin password as bytes (1-6 ASCII, no NUL); AuthError otherwise."""
    try:
        raw = password.encode("ascii")
    except UnicodeEncodeError:
        raise AuthError("管理员密码须为ASCII字符 / admin password must be ASCII") from None
    if not 1 <= len(raw) <= PASSWORD_MAX or b"\x00" in raw:
        raise AuthError(f"管理员密码须为1至6字节 / admin password must be 1 to {PASSWORD_MAX} bytes")
    return raw


def raise_for_result(fn: Function, code: int, expected: int, where: str = "") -> None:
    """The one mapping of result codes to errors, for every transport."""
    if code == expected:
        return
    text = f"{result_text(code)} ({fn.title}{', ' + where if where else ''})"
    err: RecorderError
    if code in (Result.PASSWORD_FAIL, Result.AUTH_REQUIRED):
        err = AuthError(text)
    elif code == Result.UNKNOWN_COMMAND:
        err = Unsupported(text)
    elif code == Result.BAD_REQUEST or code not in Result._value2member_map_:
        err = ProtocolError(text)
    else:
        raise RecorderRefused(text, code)
    err.result = code  # type: ignore[attr-defined]  # the code that was answered, whatever the class
    raise err


class Recorder:
    """One recorder over one transport. Not shared between threads (the transport serialises
    its own requests; a caller's sequence such as write-then-read-back is its own)."""

    def __init__(self, transport: Transport):
        self.transport = transport

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.transport.kind

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def supports(self, fn: Function) -> bool:
        return self.transport.supports(fn)

    def _call(self, fn: Function, payload: bytes = b"") -> bytes:
        t = self.transport
        if not t.supports(fn):
            raise_for_result(fn, Result.UNKNOWN_COMMAND, t.success(fn), t.where)
        code, data = t.call(fn, payload)
        raise_for_result(fn, code, t.success(fn), t.where)
        return data

    # --- the 行标 functions -------------------------------------------------------------------
    def init_device(self) -> None:
        """Init_Device: open the connection (CONNECT_FAILED 2 -> RecorderRefused)."""
        self._call(Function.INIT_DEVICE)

    def get_id_code(self) -> str:
        """GetIDCode: manufacturer and model code, an opaque ASCII string of up to 8 bytes."""
        return self.transport.codec.decode_id_code(self._call(Function.GET_ID_CODE))

    def get_zfy_info(self) -> ZfyInfo:
        """GetZFYInfo: serial, officer number and name, unit number and name."""
        return self.transport.codec.decode_zfy(self._call(Function.GET_ZFY_INFO))

    def identify(self) -> ZfyInfo:
        """Init_Device + GetZFYInfo (one IDENTIFY on the serial channel)."""
        if self.transport.kind != "serial":
            self.init_device()
        return self.get_zfy_info()

    def write_zfy_info(self, info: ZfyInfo) -> None:
        """WriteZFYInfo. ValueError (before anything is sent) if a field does not fit the layout."""
        self._call(Function.WRITE_ZFY_INFO, self.transport.codec.encode_zfy(info))

    def authenticate(self, password: str) -> None:
        """The admin password: AuthError (result 4) if the recorder's differs. Serial: AUTH, valid
        for the connection. SCSI: kept and checked before every protected function as the vendor
        table says (host-compare: the stored password is read and compared here)."""
        raw = check_password(password)
        t = self.transport
        code, _ = t.authenticate(raw)
        raise_for_result(Function.AUTHENTICATE, code, t.success(Function.AUTHENTICATE), t.where)

    def sync_dev_time(self, ts: _dt.datetime, *, align: bool = True) -> None:
        """SyncDevTime to ``ts`` (aware). The device takes whole seconds: with ``align`` and a
        ``ts`` that has a fraction, wait for the next whole second of ``ts`` and send that, so the
        device ends up within transmission delay of ``ts`` (not up to 1 s behind)."""
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError("sync_dev_time needs an aware datetime (e.g. +08:00)")
        if align and ts.microsecond:
            wait = 1 - ts.microsecond / 1e6
            ts = ts.replace(microsecond=0) + _dt.timedelta(seconds=1)
            time.sleep(wait)
        self._call(Function.SYNC_DEV_TIME, self.transport.codec.encode_time(ts))

    set_clock = sync_dev_time

    def set_msdc(self) -> str | None:
        """SetMSDC. The serial channel answers the mount path, or nothing (None) from a recorder
        that cannot know where the host mounts it; over SCSI the command channel *is* the disk and
        nothing is returned (None): the station finds the volume itself (by USB serial, udev)."""
        data = self._call(Function.SET_MSDC)
        if self.transport.kind != "serial" or not data:
            return None
        try:
            path = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"挂载路径编码错误 / mount path is not UTF-8: {data.hex()}") from None
        if not path.startswith("/") or "\x00" in path:
            raise ProtocolError(f"挂载路径无效 / mount path must be absolute: {path!r}")
        return path

    def mass_storage(self) -> str:
        """SetMSDC where the answer must be a mount path (serial channel)."""
        path = self.set_msdc()
        if path is None:
            raise ProtocolError("该传输不返回挂载路径 / this transport returns no mount path")
        return path

    def read_resolution(self) -> Resolution:
        return self.transport.codec.decode_resolution(self._call(Function.READ_RESOLUTION))

    def battery(self) -> Battery:
        """ReadDeviceBatteryDumpEnergy: percent 0-100 (``charging`` None where not reported)."""
        return self.transport.codec.decode_battery(self._call(Function.READ_BATTERY))

    read_battery = battery

    # --- station extras (serial command channel) --------------------------------------------
    def read_clock(self) -> _dt.datetime:
        from .zfy import DEVICE_TIME_LEN, decode_device_time

        data = self._call(Function.READ_CLOCK)
        if len(data) != DEVICE_TIME_LEN:
            raise ProtocolError(f"时钟应答长度错误 / clock answer is {len(data)} bytes, expected {DEVICE_TIME_LEN}")
        return decode_device_time(data)

    def clock_skew(self) -> float:
        """Recorder clock minus station clock, seconds. The device reports whole seconds
        (truncated), so its reading stands for the middle of that second; the station time is the
        middle of the exchange. Accurate to about ±0.5 s."""
        before = time.time()
        device = self.read_clock()
        after = time.time()
        return device.timestamp() + 0.5 - (before + after) / 2

    def storage(self) -> Storage:
        data = self._call(Function.STORAGE)
        if len(data) != 16:
            raise ProtocolError(f"存储应答错误 / bad storage answer {data.hex()}")
        used, free = struct.unpack(">QQ", data)
        return Storage(used=used, free=free)

    def file_records(self) -> Iterator[FileRecord]:
        """Every file on the recorder, in the recorder's order, page by page (LIST_FILES from
        index k). Each page is checked whole before any of its records is yielded: the announced
        total must not change, a page before the end must not be empty, the page must hold
        exactly the records it announces (a truncated record or trailing bytes are a
        ProtocolError), and no more records than the total may arrive.

        Names are NOT checked here: run each through ``safe_name`` before using it (``list_files``
        does; the dock sets unsafe entries aside and copies the rest)."""
        seen = 0
        total = None
        while total is None or seen < total:
            data = self._call(Function.LIST_FILES, struct.pack(">H", seen))
            if len(data) < 3:
                raise ProtocolError("文件列表应答过短 / file list answer too short")
            page_total, count = struct.unpack_from(">HB", data)
            if total is None:
                total = page_total
            elif page_total != total:
                raise ProtocolError(
                    f"文件列表在读取中变化 / file list changed while reading ({total} -> {page_total})"
                )
            if count == 0 and seen < total:
                raise ProtocolError("文件列表分页为空 / empty file list page before the end")
            page = []
            offset = 3
            for _ in range(count):
                rec, offset = decode_file_record(data, offset)
                page.append(rec)
            if offset != len(data):
                raise ProtocolError(
                    f"文件列表有多余字节 / trailing bytes in file list page ({len(data) - offset} after "
                    f"{count} records)"
                )
            seen += count
            if seen > total:
                raise ProtocolError(f"文件列表超出总数 / more files than announced ({seen} > {total})")
            yield from page

    def list_files(self) -> list[FileRecord]:
        """Every file on the recorder, in the recorder's order. UnsafeName if the recorder reports
        a name with a path, NUL, control characters..."""
        records = []
        for rec in self.file_records():
            safe_name(rec.name)
            records.append(rec)
        return records

    def erase(self, name: str) -> None:
        """Erase one file. RecorderRefused(result=13) for important/locked files,
        RecorderRefused(result=12) if the recorder has no such file."""
        from .protocol import MAX_PAYLOAD

        raw = safe_name(name).encode("utf-8")
        if len(raw) > MAX_PAYLOAD:
            raise ValueError("name too long")
        self._call(Function.ERASE, raw)


def assign(recorder: Recorder, officer_number: str, officer_name: str, unit_number: str,
           unit_name: str) -> tuple[ZfyInfo, ZfyInfo]:
    """Write officer and unit into the recorder (WriteZFYInfo, keeping its serial) and read it
    back. Returns (before, after); RecorderError if what is read back differs from what was
    written (the recorder is then left as it answered, and the caller must not record success)."""
    before = recorder.get_zfy_info()
    want = ZfyInfo(before.serial, officer_number, officer_name, unit_number, unit_name)
    recorder.transport.codec.encode_zfy(want)  # ValueError before anything is written
    recorder.write_zfy_info(want)
    after = recorder.get_zfy_info()
    if after != want:
        raise RecorderError(
            f"写入后读回不符 / read back after WriteZFYInfo differs: wrote {want}, the recorder answers {after}"
        )
    return before, after
