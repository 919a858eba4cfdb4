"""The recorder as a SCSI generic device at the SG_IO seam (docs/gat947.md 3.1): the JieLi "DV16"
command blocks answered from the same device state as the serial channel."""

from __future__ import annotations

import datetime as _dt
import struct
from typing import TYPE_CHECKING

from drivers.recorder.errors import ProtocolError
from drivers.recorder.zfy import ZfyInfo

if TYPE_CHECKING:
    from drivers.recorder.sgio import SgResult

    from . import RecorderSim

# JieLi "DV16" sub-commands (docs/gat947.md 3.1), written out here independently of the driver's table
JL_INIT, JL_ID, JL_GET_INFO, JL_WRITE_INFO, JL_TIME, JL_MSDC, JL_RES, JL_BATTERY = 1, 2, 3, 4, 5, 6, 7, 8
JL_SD, JL_PASSWORD, JL_STATUS = 12, 13, 14
_JL_FUNCTIONS = {JL_INIT: "init_device", JL_ID: "get_id_code", JL_GET_INFO: "get_zfy_info",
                 JL_WRITE_INFO: "write_zfy_info", JL_TIME: "sync_dev_time", JL_MSDC: "set_msdc",
                 JL_RES: "read_resolution", JL_BATTERY: "read_battery"}
INQUIRY_VENDOR, INQUIRY_PRODUCT, INQUIRY_REV = "DV16", "DEVICE V1.00", "1.00"


class SimSgDevice:
    """The recorder as a SCSI generic device answering at the SG_IO seam: ``execute`` has the
    signature of ``drivers.recorder.sgio.SgDevice.execute`` and returns an ``SgResult``.

    It decodes JieLi vendor CDBs (byte 0 0xFD read / 0xFB write, byte 1 0x81 / 0x82, bytes 2-5 the
    sub-command big-endian, bytes 6-7 the length big-endian) and standard INQUIRY; anything else is
    CHECK CONDITION / ILLEGAL REQUEST. The stored password is the 16-byte block the JieLi DLL reads.

    Faults: ``timeouts=N`` the first N commands time out (host status DID_TIME_OUT);
    ``unit_attention=N`` the first N commands end in CHECK CONDITION / UNIT ATTENTION;
    ``gone=True`` every command raises RecorderGone (the device was unplugged); the recorder's
    ``unsupported``, ``short_answers``, ``time_sync_fail``, ``no_sd``, ``wrong_password`` apply too.
    """

    def __init__(self, sim: RecorderSim, path: str = "/dev/sg-sim", *, timeouts: int = 0, unit_attention: int = 0,
                 gone: bool = False):
        self.sim = sim
        self.path = path
        self.timeouts = timeouts
        self.unit_attention = unit_attention
        self.gone = gone
        self.closed = False
        self.cdbs: list[bytes] = []  # every CDB received, in order
        self._last_ok = True

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def _check(key: int) -> "SgResult":
        from drivers.recorder.sgio import CHECK_CONDITION, SgResult

        sense = bytearray(18)
        sense[0], sense[2], sense[7] = 0x70, key, 10
        return SgResult(status=CHECK_CONDITION, sense=bytes(sense))

    def execute(self, cdb: bytes, direction, data_out: bytes = b"", length_in: int = 0, timeout_ms: int = 2000):
        from drivers.recorder.errors import RecorderError, RecorderGone
        from drivers.recorder.sgio import DID_TIME_OUT, Direction, SgResult

        if self.closed:
            raise RecorderError(f"device closed: {self.path}")
        if self.gone:
            raise RecorderGone(f"记录仪已断开 / recorder disconnected ({self.path})")
        self.cdbs.append(bytes(cdb))
        if self.timeouts > 0:
            self.timeouts -= 1
            return SgResult(host_status=DID_TIME_OUT, duration_ms=timeout_ms)
        if self.unit_attention > 0:
            self.unit_attention -= 1
            return self._check(0x06)
        sim = self.sim
        if cdb[:1] == b"\x12":  # INQUIRY
            d = bytearray(36)
            d[0], d[1], d[4] = 0x00, 0x80, 31  # direct access, removable
            d[8:16] = INQUIRY_VENDOR.encode().ljust(8)
            d[16:32] = INQUIRY_PRODUCT.encode().ljust(16)
            d[32:36] = INQUIRY_REV.encode().ljust(4)
            return SgResult(data=bytes(d[:length_in]), resid=max(0, length_in - 36))
        if len(cdb) != 16 or (cdb[0], cdb[1]) not in ((0xFD, 0x81), (0xFB, 0x82)):
            return self._check(0x05)
        sub = int.from_bytes(cdb[2:6], "big")
        length = int.from_bytes(cdb[6:8], "big")
        reading = cdb[0] == 0xFD
        want_dir = Direction.IN if reading else (Direction.OUT if length else Direction.NONE)
        if direction != want_dir or (reading and length != length_in) or (not reading and length != len(data_out)):
            return self._check(0x05)  # the CDB and the transfer disagree
        fn = _JL_FUNCTIONS.get(sub)
        if fn is not None and fn in sim.unsupported:
            return self._check(0x05)
        try:
            out = self._answer(sub, data_out)
        except LookupError:
            return self._check(0x05)
        if sub != JL_STATUS:
            self._last_ok = out[1]
        data = out[0]
        if reading:
            if sim.short_answers and sub in (JL_ID, JL_GET_INFO, JL_RES, JL_BATTERY):
                data = data[:-1]
            data = data[:length]
            return SgResult(data=data, resid=length - len(data))
        return SgResult()

    def _answer(self, sub: int, data: bytes) -> tuple[bytes, bool]:
        """(data to the host, whether the command succeeded: what the status read reports)."""
        sim = self.sim
        if sub == JL_INIT:
            return b"", True
        if sub == JL_ID:
            return sim.id_code.encode("ascii").ljust(6, b"\x00")[:6], True
        if sub == JL_GET_INFO:
            return sim.info.encode("89"), True
        if sub == JL_WRITE_INFO:
            try:
                info = ZfyInfo.decode(data, "89")
            except ProtocolError:
                return b"", False
            sim.write_info(info)
            return b"", True
        if sub == JL_TIME:
            if len(data) != 7 or sim.time_sync_fail:
                return b"", False
            year, month, day, hour, minute, second = struct.unpack("<H5B", data)
            try:
                target = _dt.datetime(year, month, day, hour, minute, second, tzinfo=sim.tz)
            except ValueError:
                return b"", False
            sim.set_clock_to(target)
            return b"", True
        if sub == JL_MSDC:
            if sim.msdc_fail:
                return b"", False
            sim.enter_msdc()
            return b"", True
        if sub == JL_RES:
            return struct.pack("<ii", *sim.resolution), True
        if sub == JL_BATTERY:
            return struct.pack("<i", sim.battery_level), True
        if sub == JL_SD:
            return bytes([0 if sim.no_sd else 1, 0, 0, 0]), True
        if sub == JL_PASSWORD:
            return sim.device_password.rstrip(b"\x00").ljust(16, b"\x00"), True
        if sub == JL_STATUS:
            return bytes([0 if self._last_ok else 1, 0, 0, 0]), True
        raise LookupError(sub)
