"""The SG_IO seam: one SCSI command to a Linux SCSI generic device (``/dev/sg*``).

Everything above this (command blocks, payload layouts, result codes, retries) lives in
``drivers.recorder.scsi`` and is tested against the simulator's device object
(``tools.recorder_sim.scsi.SimSgDevice``), which answers at :meth:`SgDevice.execute` with the same
signature. This module only builds the ``sg_io_hdr`` (``<scsi/sg.h>``), calls
``ioctl(fd, SG_IO, hdr)`` and hands back what the kernel filled in.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from dataclasses import dataclass
from enum import IntEnum

from .errors import RecorderError, RecorderGone

SG_IO = 0x2285
SG_INTERFACE_ID = ord("S")
SENSE_LEN = 32
GOOD = 0x00
CHECK_CONDITION = 0x02
DID_TIME_OUT = 0x03  # host_status
DRIVER_TIMEOUT = 0x06  # driver_status (low nibble)


class Direction(IntEnum):
    """``dxfer_direction`` of sg_io_hdr."""

    NONE = -1  # SG_DXFER_NONE
    OUT = -2  # SG_DXFER_TO_DEV (host to device)
    IN = -3  # SG_DXFER_FROM_DEV (device to host)


class SgIoHdr(ctypes.Structure):
    """``struct sg_io_hdr`` (include/scsi/sg.h); 88 bytes on 64-bit Linux."""

    _fields_ = [
        ("interface_id", ctypes.c_int),
        ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte),
        ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort),
        ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p),
        ("cmdp", ctypes.c_void_p),
        ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p),
        ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte),
        ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte),
        ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort),
        ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint),
        ("info", ctypes.c_uint),
    ]


@dataclass(frozen=True)
class SgResult:
    """What one SCSI command came back with. ``data`` is what was transferred to the host
    (``dxfer_len - resid`` bytes of an IN command)."""

    status: int = GOOD
    host_status: int = 0
    driver_status: int = 0
    sense: bytes = b""
    data: bytes = b""
    resid: int = 0
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.status == GOOD and not self.host_status and not (self.driver_status & 0x0F)

    @property
    def timed_out(self) -> bool:
        return self.host_status == DID_TIME_OUT or (self.driver_status & 0x0F) == DRIVER_TIMEOUT

    @property
    def sense_key(self) -> int | None:
        """The sense key (fixed or descriptor format), None without sense data."""
        s = self.sense
        if len(s) >= 3 and (s[0] & 0x7F) in (0x70, 0x71):
            return s[2] & 0x0F
        if len(s) >= 2 and (s[0] & 0x7F) in (0x72, 0x73):
            return s[1] & 0x0F
        return None


def sg_io(fd: int, cdb: bytes, direction: Direction, data_out: bytes = b"", length_in: int = 0,
          timeout_ms: int = 2000) -> SgResult:
    """The seam: ``ioctl(fd, SG_IO)`` with one command. OSError from the kernel is raised as is."""
    cmd = ctypes.create_string_buffer(bytes(cdb), len(cdb))
    sense = ctypes.create_string_buffer(SENSE_LEN)
    if direction == Direction.OUT:
        buf = ctypes.create_string_buffer(bytes(data_out), len(data_out))
        length = len(data_out)
    elif direction == Direction.IN:
        buf = ctypes.create_string_buffer(length_in)
        length = length_in
    else:
        buf, length = None, 0
    hdr = SgIoHdr(interface_id=SG_INTERFACE_ID, dxfer_direction=int(direction), cmd_len=len(cdb),
                  mx_sb_len=SENSE_LEN, dxfer_len=length,
                  dxferp=ctypes.cast(buf, ctypes.c_void_p) if buf is not None else None,
                  cmdp=ctypes.cast(cmd, ctypes.c_void_p), sbp=ctypes.cast(sense, ctypes.c_void_p),
                  timeout=timeout_ms)
    fcntl.ioctl(fd, SG_IO, hdr)  # mutates hdr in place (a ctypes Structure is a writable buffer)
    got = length - hdr.resid if direction == Direction.IN else 0
    return SgResult(status=hdr.status, host_status=hdr.host_status, driver_status=hdr.driver_status,
                    sense=sense.raw[: hdr.sb_len_wr], data=buf.raw[: max(0, got)] if buf is not None and got else b"",
                    resid=hdr.resid, duration_ms=hdr.duration)


class SgDevice:
    """A SCSI generic device node, opened read-write. ``execute`` is the seam the transport calls."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RecorderGone(f"记录仪设备不存在 / recorder device not found: {path}") from None
        except OSError as exc:
            raise RecorderError(f"无法打开记录仪设备 / cannot open recorder device {path}: {exc.strerror}") from None

    def execute(self, cdb: bytes, direction: Direction, data_out: bytes = b"", length_in: int = 0,
                timeout_ms: int = 2000) -> SgResult:
        if self.fd is None:
            raise RecorderError(f"记录仪设备已关闭 / recorder device is closed ({self.path})")
        try:
            return sg_io(self.fd, cdb, direction, data_out, length_in, timeout_ms)
        except OSError as exc:
            if exc.errno in (errno.ENODEV, errno.ENXIO, errno.EIO):
                raise RecorderGone(f"记录仪已断开 / recorder disconnected ({self.path}): {exc.strerror}") from None
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise RecorderError(f"不是SCSI通用设备 / {self.path} is not a SCSI generic device "
                                    f"(SG_IO refused: {exc.strerror})") from None
            raise RecorderError(f"SG_IO 失败 / SG_IO failed on {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
