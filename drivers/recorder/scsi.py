"""The SCSI transport of the recorder command set: 行标 functions as vendor SCSI commands sent
through SG_IO (docs/gat947.md section 3, docs/recorder-protocol.md "Transports").

Which bytes go into each command block is not standardised: it comes from a per-vendor table
(:class:`VendorProfile`, filled from the ``[[scsi.vendors]]`` config section by the agent). The
only publicly documented table is the JieLi "DV16" one (:data:`JIELI_DV16`). Above the seam
(:meth:`drivers.recorder.sgio.SgDevice.execute`) this module builds the CDBs, runs the password
check and the status read the table asks for, retries, decodes payloads and turns everything
into the command set's result codes.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import struct
import threading
from dataclasses import dataclass, field
from typing import Protocol

from .commands import Function, Resolution
from .errors import ProtocolError, RecorderError, RecorderTimeout
from .protocol import Result
from .sgio import Direction, SgResult
from .zfy import ZFY_LAYOUTS, Battery, ZfyInfo, decode_id_code

logger = logging.getLogger(__name__)

#: payload codecs the driver implements, and the functions each may serve
PAYLOADS = {
    "zfy_info": {"get_zfy_info", "write_zfy_info"},
    "ascii": {"get_id_code"},
    "time_u16le_6u8": {"sync_dev_time"},
    "time_text": {"sync_dev_time"},
    "i32le": {"read_battery"},
    "u8": {"read_battery"},
    "i32le_pair": {"read_resolution"},
    "u8_nonzero": {"sd_status"},
    "cstring": {"read_password"},
}
#: table keys beyond the command set's functions: steps other functions use
HELPERS = ("read_password", "sd_status")
FUNCTION_KEYS = tuple(f.value for f in Function if f not in (
    Function.AUTHENTICATE, Function.READ_CLOCK, Function.STORAGE, Function.LIST_FILES, Function.ERASE)) + HELPERS
PASSWORD_MODES = ("host-compare", "none")
SENSE_ILLEGAL_REQUEST = 0x05
SENSE_UNIT_ATTENTION = 0x06
SENSE_NOT_READY = 0x02

#: the result code a function answers when the recorder reports failure (status byte, helper)
FAIL_CODES = {
    "init_device": Result.CONNECT_FAIL,
    "sync_dev_time": Result.TIME_SYNC_FAIL,
    "set_msdc": Result.MSDC_FAIL,
}
_CDB_TOKEN = re.compile(r"^(?:[0-9A-Fa-f]{2}|\{len\})$")
_TZ = re.compile(r"^([+-])(\d{2}):(\d{2})$")


def parse_cdb(template: str, length: int, cdb_length: int) -> bytes:
    """``"FD 81 00 00 00 03 {len}"`` -> the command block: hex bytes, ``{len}`` = the data length
    as a big-endian u16 (two bytes), zero-filled to ``cdb_length``. ValueError if malformed."""
    out = bytearray()
    tokens = template.split()
    if not tokens:
        raise ValueError("CDB 为空 / empty CDB template")
    for tok in tokens:
        if not _CDB_TOKEN.match(tok):
            raise ValueError(f"CDB 字节无效 / bad CDB byte {tok!r}: two hex digits or {{len}}")
        if tok == "{len}":
            out += struct.pack(">H", length)
        else:
            out.append(int(tok, 16))
    if len(out) > cdb_length:
        raise ValueError(f"CDB 过长 / CDB template is {len(out)} bytes, cdb_length is {cdb_length}")
    return bytes(out.ljust(cdb_length, b"\x00"))


def parse_zone(text: str) -> _dt.timezone:
    m = _TZ.match(text)
    if not m:
        raise ValueError(f"时区格式应为 +08:00 / time zone must look like +08:00, got {text!r}")
    delta = _dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    if delta >= _dt.timedelta(hours=24):
        raise ValueError(f"时区超出范围 / time zone out of range: {text!r}")
    return _dt.timezone(-delta if m.group(1) == "-" else delta)


@dataclass(frozen=True)
class ScsiFunction:
    """One function's command block and what comes with it (docs/gat947.md 3.4)."""

    cdb: str
    dir: str  # in | out | none
    length: int = 0
    payload: str | None = None
    check_status: bool = False  # read the vendor's status after the call
    password: bool = False  # password check first (the vendor's password mode)
    before: str | None = None  # a helper step first (sd_status: 0 means "cannot")
    ok: int = int(Result.CONNECT_OK)  # the result code this function reports on success


@dataclass(frozen=True)
class StatusRead:
    """The vendor's "status of the previous command" read."""

    cdb: str
    length: int = 4
    ok_byte0: int = 0


@dataclass(frozen=True)
class VendorProfile:
    """A vendor SCSI table; built by the agent from config, or :data:`JIELI_DV16`."""

    name: str
    functions: dict[str, ScsiFunction]
    inquiry_vendor: str = ""
    inquiry_product: str = ""
    usb_vid: str = ""
    usb_pid: str = ""
    cdb_length: int = 16
    timeout_in_ms: int = 2000
    timeout_out_ms: int = 10000
    retries: int = 2
    zfy_info: str = "89"
    password: str = "host-compare"
    password_length: int = 16
    time_zone: str = "+08:00"
    status: StatusRead | None = None
    _cdbs: dict = field(default_factory=dict, compare=False, repr=False, init=False)

    def __post_init__(self) -> None:
        """Every byte checked once, here: ValueError names the function."""
        if self.zfy_info not in ZFY_LAYOUTS:
            raise ValueError(f"zfy_info {self.zfy_info!r}: 89 or 94")
        if self.password not in PASSWORD_MODES:
            raise ValueError(f"password {self.password!r}: one of {', '.join(PASSWORD_MODES)}")
        parse_zone(self.time_zone)
        zfy_len = sum(ZFY_LAYOUTS[self.zfy_info])
        for key, fn in self.functions.items():
            where = f"functions.{key}"
            if key not in FUNCTION_KEYS:
                raise ValueError(f"{where}: unknown function (known: {', '.join(FUNCTION_KEYS)})")
            if fn.dir not in ("in", "out", "none"):
                raise ValueError(f"{where}: dir {fn.dir!r}: in, out or none")
            if (fn.dir == "none") != (fn.length == 0):
                raise ValueError(f"{where}: dir none takes length 0, in/out a length > 0")
            if fn.payload is not None:
                if fn.payload not in PAYLOADS:
                    raise ValueError(f"{where}: payload {fn.payload!r} unknown (known: {', '.join(PAYLOADS)})")
                if key not in PAYLOADS[fn.payload]:
                    raise ValueError(f"{where}: payload {fn.payload!r} cannot carry {key}")
                need = {"zfy_info": zfy_len, "time_u16le_6u8": 7, "time_text": 19, "i32le": 4, "i32le_pair": 8}
                if fn.payload in need and fn.length != need[fn.payload]:
                    raise ValueError(f"{where}: payload {fn.payload} is {need[fn.payload]} bytes, length is {fn.length}")
            elif key not in ("init_device", "set_msdc"):
                raise ValueError(f"{where}: needs a payload")
            if fn.check_status and self.status is None:
                raise ValueError(f"{where}: check_status needs a status read (status = {{cdb, length}})")
            if fn.before is not None and fn.before not in HELPERS:
                raise ValueError(f"{where}: before {fn.before!r}: one of {', '.join(HELPERS)}")
            if fn.before is not None and fn.before not in self.functions:
                raise ValueError(f"{where}: before {fn.before!r} is not in the table")
            if fn.password and self.password == "host-compare" and "read_password" not in self.functions:
                raise ValueError(f"{where}: password check host-compare needs functions.read_password")
            try:
                self._cdbs[key] = parse_cdb(fn.cdb, fn.length, self.cdb_length)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        if self.status is not None:
            if not 1 <= self.status.length <= 255:
                raise ValueError("status.length: 1..255")
            self._cdbs["_status"] = parse_cdb(self.status.cdb, self.status.length, self.cdb_length)

    def cdb(self, key: str) -> bytes:
        return self._cdbs[key]

    def matches(self, vendor: str = "", product: str = "", usb_vid: str = "", usb_pid: str = "") -> bool:
        """INQUIRY strings (compared stripped, case-insensitive) or USB ids; a profile that names
        neither matches nothing."""
        by_inquiry = bool(self.inquiry_vendor or self.inquiry_product) and (
            self.inquiry_vendor.strip().lower() == vendor.strip().lower()
            and self.inquiry_product.strip().lower() == product.strip().lower())
        by_usb = bool(self.usb_vid and self.usb_pid) and (
            self.usb_vid.lower() == usb_vid.lower() and self.usb_pid.lower() == usb_pid.lower())
        return by_inquiry or by_usb


def _f(cdb: str, dir: str, length: int = 0, **kw) -> ScsiFunction:
    return ScsiFunction(cdb=cdb, dir=dir, length=length, **kw)


#: The JieLi "DV16 DEVICE V1.00" table as docs/gat947.md 3.1 reads it from [S1]; the only publicly
#: documented one. Mirrored by config/scsi-vendors.toml and tested byte for byte.
JIELI_DV16 = VendorProfile(
    name="jieli-dv16", inquiry_vendor="DV16", inquiry_product="DEVICE V1.00",
    status=StatusRead("FD 81 00 00 00 0E {len}", 4, 0),
    functions={
        "init_device": _f("FB 82 00 00 00 01 {len}", "none"),
        "get_id_code": _f("FD 81 00 00 00 02 {len}", "in", 6, payload="ascii", check_status=True),
        "get_zfy_info": _f("FD 81 00 00 00 03 {len}", "in", 89, payload="zfy_info", check_status=True, password=True),
        "write_zfy_info": _f("FB 82 00 00 00 04 {len}", "out", 89, payload="zfy_info", check_status=True,
                             password=True),
        "sync_dev_time": _f("FB 82 00 00 00 05 {len}", "out", 7, payload="time_u16le_6u8", check_status=True,
                            password=True, ok=int(Result.TIME_SYNC_OK)),
        "sd_status": _f("FD 81 00 00 00 0C {len}", "in", 4, payload="u8_nonzero"),
        "set_msdc": _f("FB 82 00 00 00 06 {len}", "none", password=True, before="sd_status",
                       ok=int(Result.MSDC_OK)),
        "read_resolution": _f("FD 81 00 00 00 07 {len}", "in", 8, payload="i32le_pair", password=True),
        "read_battery": _f("FD 81 00 00 00 08 {len}", "in", 4, payload="i32le", check_status=True, password=True),
        "read_password": _f("FD 81 00 00 00 0D {len}", "in", 16, payload="cstring"),
    },
)


class ScsiCodec:
    """Value layouts from a vendor table."""

    def __init__(self, profile: VendorProfile):
        self.profile = profile
        self.layout = profile.zfy_info
        self.zfy_len = sum(ZFY_LAYOUTS[self.layout])
        self.tz = parse_zone(profile.time_zone)

    def _payload(self, key: str) -> str | None:
        fn = self.profile.functions.get(key)
        return fn.payload if fn else None

    def encode_zfy(self, info: ZfyInfo) -> bytes:
        return info.encode(self.layout)

    def decode_zfy(self, data: bytes) -> ZfyInfo:
        return ZfyInfo.decode(data, self.layout)

    def encode_time(self, ts: _dt.datetime) -> bytes:
        """The instant ``ts`` as wall-clock time in the table's zone (the wire has no zone field)."""
        local = ts.astimezone(self.tz)
        if self._payload("sync_dev_time") == "time_text":
            return f"{local:%Y-%m-%d %H:%M:%S}".encode("ascii")
        return struct.pack("<H5B", local.year, local.month, local.day, local.hour, local.minute, local.second)

    def decode_battery(self, data: bytes) -> Battery:
        if self._payload("read_battery") == "u8":
            level = data[0] if data else -1
        else:
            if len(data) != 4:
                raise ProtocolError(f"电量应答错误 / bad battery answer {data.hex()} (expected 4 bytes)")
            level = struct.unpack("<i", data)[0]
        if not 0 <= level <= 100:
            raise ProtocolError(f"电量应答错误 / bad battery answer {data.hex()}: {level} is not a percentage")
        return Battery(level=level, charging=None)

    def decode_resolution(self, data: bytes) -> Resolution:
        if len(data) != 8:
            raise ProtocolError(f"分辨率应答错误 / bad resolution answer {data.hex()} (expected 8 bytes)")
        w, h = struct.unpack("<ii", data)
        if not (0 < w <= 16384 and 0 < h <= 16384):
            raise ProtocolError(f"分辨率应答错误 / bad resolution answer {w}x{h}")
        return Resolution(w, h)

    def decode_id_code(self, data: bytes) -> str:
        return decode_id_code(data)


class SgDeviceLike(Protocol):
    """What the transport needs of a device: the seam (``SgDevice`` or the simulator's)."""

    path: str

    def execute(self, cdb: bytes, direction: Direction, data_out: bytes = b"", length_in: int = 0,
                timeout_ms: int = 2000) -> SgResult: ...
    def close(self) -> None: ...


class ScsiTransport:
    """The command set over SCSI pass-through, as one vendor table says."""

    kind = "scsi"

    def __init__(self, device: SgDeviceLike, profile: VendorProfile, password: str | None = None):
        self.device = device
        self.profile = profile
        self.where = f"{device.path}, {profile.name}"
        self.codec = ScsiCodec(profile)
        self._password: bytes | None = password.encode("ascii") if password else None
        self._lock = threading.Lock()
        self.commands = 0  # CDBs sent (retries included)
        self.retries = 0

    def close(self) -> None:
        self.device.close()

    def supports(self, fn: Function) -> bool:
        return fn.value in self.profile.functions or fn == Function.AUTHENTICATE

    def success(self, fn: Function) -> int:
        if fn == Function.AUTHENTICATE:
            return int(Result.PASSWORD_OK)
        spec = self.profile.functions.get(fn.value)
        return spec.ok if spec else int(Result.CONNECT_OK)

    # --- one CDB, retried ----------------------------------------------------------------------
    def _exec(self, key: str, cdb: bytes, direction: str, data_out: bytes = b"", length: int = 0) -> SgResult | None:
        """Run one command block; None if the recorder refuses it as unknown (ILLEGAL REQUEST)."""
        p = self.profile
        d = {"in": Direction.IN, "out": Direction.OUT, "none": Direction.NONE}[direction]
        timeout = p.timeout_in_ms if d == Direction.IN else p.timeout_out_ms
        last: SgResult | None = None
        for attempt in range(1 + p.retries):
            if attempt:
                self.retries += 1
                logger.info("recorder %s: %s failed (%s), retry %d/%d", self.where, key, _describe(last), attempt,
                            p.retries)
            self.commands += 1
            res = self.device.execute(cdb, d, data_out, length, timeout)
            if res.ok:
                return res
            last = res
            if res.sense_key == SENSE_ILLEGAL_REQUEST:
                return None
        assert last is not None
        if last.timed_out:
            raise RecorderTimeout(f"记录仪无应答 / recorder did not answer {key} ({1 + p.retries} attempts, "
                                  f"{timeout} ms each, {self.where})")
        raise RecorderError(f"记录仪SCSI命令失败 / SCSI command {key} failed ({_describe(last)}, {self.where})")

    def _read(self, key: str, cdb: bytes, length: int) -> bytes | None:
        res = self._exec(key, cdb, "in", b"", length)
        if res is None:
            return None
        if len(res.data) != length:
            raise ProtocolError(f"记录仪应答过短 / short answer to {key}: {len(res.data)} of {length} bytes "
                                f"({self.where})")
        return res.data

    def _status_ok(self, key: str) -> bool:
        st = self.profile.status
        assert st is not None
        data = self._read(f"{key} status", self.profile.cdb("_status"), st.length)
        if data is None:
            raise ProtocolError(f"记录仪不支持状态读取 / the recorder refuses the status read ({self.where})")
        return data[0] == st.ok_byte0

    def _password_ok(self) -> int | None:
        """None if the password check passes, else the result code to answer."""
        if self.profile.password == "none":
            return None
        if self._password is None:
            return int(Result.AUTH_REQUIRED)
        data = self._read("read_password", self.profile.cdb("read_password"),
                          self.profile.functions["read_password"].length)
        if data is None:
            return int(Result.UNKNOWN_COMMAND)
        stored = data.split(b"\x00", 1)[0]
        return None if stored == self._password else int(Result.PASSWORD_FAIL)

    # --- the command set's view ----------------------------------------------------------------
    def authenticate(self, password: bytes) -> tuple[int, bytes]:
        """Keep the password for every protected function and check it now (host-compare: the
        stored password is read and compared here; it is never logged)."""
        if len(password) > self.profile.password_length:
            return int(Result.BAD_REQUEST), b""
        with self._lock:
            self._password = password
            if self.profile.password == "none":
                return int(Result.PASSWORD_OK), b""
            code = self._password_ok()
        return (int(Result.PASSWORD_OK) if code is None else code), b""

    def call(self, fn: Function, payload: bytes = b"") -> tuple[int, bytes]:
        key = fn.value
        spec = self.profile.functions.get(key)
        if spec is None:
            return int(Result.UNKNOWN_COMMAND), b""
        fail = int(FAIL_CODES.get(key, Result.FAIL))
        with self._lock:
            if spec.password:
                code = self._password_ok()
                if code is not None:
                    return code, b""
            if spec.before:
                pre = self.profile.functions[spec.before]
                data = self._read(spec.before, self.profile.cdb(spec.before), pre.length)
                if data is None:
                    return int(Result.UNKNOWN_COMMAND), b""
                if data[0] == 0:
                    return fail, b""
            if spec.dir == "out":
                if len(payload) != spec.length:
                    raise ValueError(f"{key}: payload is {len(payload)} bytes, the table says {spec.length}")
                res = self._exec(key, self.profile.cdb(key), "out", payload)
                data = b""
            elif spec.dir == "in":
                got = self._read(key, self.profile.cdb(key), spec.length)
                res = None if got is None else SgResult(data=got)
                data = got or b""
            else:
                res = self._exec(key, self.profile.cdb(key), "none")
                data = b""
            if res is None:
                return int(Result.UNKNOWN_COMMAND), b""
            if spec.check_status and not self._status_ok(key):
                return fail, b""
        return spec.ok, data


def _describe(res: SgResult | None) -> str:
    if res is None:
        return "-"
    parts = [f"status 0x{res.status:02x}"]
    if res.host_status:
        parts.append(f"host 0x{res.host_status:02x}")
    if res.driver_status:
        parts.append(f"driver 0x{res.driver_status:02x}")
    if res.sense_key is not None:
        parts.append(f"sense key 0x{res.sense_key:x}")
    return ", ".join(parts)


def inquiry(device: SgDeviceLike, timeout_ms: int = 2000) -> tuple[str, str, str]:
    """Standard INQUIRY: (vendor, product, revision), stripped. Chooses the vendor table."""
    res = device.execute(bytes([0x12, 0, 0, 0, 36, 0]), Direction.IN, b"", 36, timeout_ms)
    if not res.ok:
        raise RecorderError(f"INQUIRY 失败 / INQUIRY failed on {device.path} ({_describe(res)})")
    d = res.data
    if len(d) < 36:
        raise ProtocolError(f"INQUIRY 应答过短 / short INQUIRY answer from {device.path}: {len(d)} bytes")
    return tuple(d[a:b].decode("ascii", "replace").strip() for a, b in ((8, 16), (16, 32), (32, 36)))  # type: ignore[return-value]


def choose_profile(profiles: list[VendorProfile], vendor: str = "", product: str = "", usb_vid: str = "",
                   usb_pid: str = "") -> VendorProfile | None:
    """The first table that matches the device's INQUIRY strings or USB ids."""
    return next((p for p in profiles if p.matches(vendor, product, usb_vid, usb_pid)), None)


def open_scsi(device: SgDeviceLike, profiles: list[VendorProfile], password: str | None = None,
              usb_vid: str = "", usb_pid: str = ""):
    """INQUIRY the device, choose its table and return a :class:`~drivers.recorder.commands.Recorder`
    on it. RecorderError naming what the device reported if no table matches."""
    from .commands import Recorder

    vendor, product, rev = inquiry(device)
    profile = choose_profile(profiles, vendor, product, usb_vid, usb_pid)
    if profile is None:
        raise RecorderError(f"无匹配的厂商命令表 / no vendor SCSI table matches {device.path}: INQUIRY vendor "
                            f"{vendor!r} product {product!r} revision {rev!r}, USB {usb_vid or '?'}:{usb_pid or '?'}; "
                            "add one to [[scsi.vendors]]")
    return Recorder(ScsiTransport(device, profile, password))
