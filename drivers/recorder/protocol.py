"""Framing of the recorder command channel (see docs/recorder-protocol.md).

Frame, all integers big-endian::

    SOF(1)=0xA5  VER(1)=0x01  CMD(1)  SEQ(1)  LEN(2)  PAYLOAD(LEN)  CRC(2)

CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over VER..PAYLOAD.
A response carries ``CMD | 0x80``, the request's SEQ, and a payload whose first
byte is the result code.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from enum import IntEnum

logger = logging.getLogger(__name__)

SOF = 0xA5
VERSION = 0x01
RESPONSE_BIT = 0x80
MAX_PAYLOAD = 4096
HEADER = struct.Struct(">BBBBH")  # sof, version, cmd, seq, length
HEADER_LEN = HEADER.size  # 6
CRC_LEN = 2
OVERHEAD = HEADER_LEN + CRC_LEN


class Command(IntEnum):
    IDENTIFY = 0x01  # Init_Device + GetZFYInfo
    AUTH = 0x02  # admin password
    READ_CLOCK = 0x03
    SET_CLOCK = 0x04  # SyncDevTime
    BATTERY = 0x05  # ReadDeviceBatteryDumpEnergy
    STORAGE = 0x06
    SET_MSDC = 0x07  # switch to mass storage
    LIST_FILES = 0x08
    ERASE = 0x09
    GET_ID_CODE = 0x0A  # GetIDCode
    WRITE_ZFY_INFO = 0x0B  # WriteZFYInfo (auth)
    READ_RESOLUTION = 0x0C  # ReadDeviceResolution


class Result(IntEnum):
    CONNECT_OK = 1
    CONNECT_FAIL = 2
    PASSWORD_OK = 3
    PASSWORD_FAIL = 4
    TIME_SYNC_OK = 5
    TIME_SYNC_FAIL = 6
    MSDC_OK = 7
    MSDC_FAIL = 8
    OK = 9  # query answered (clock, battery, storage, list)
    FAIL = 10  # query failed (device fault)
    ERASE_OK = 11
    NOT_FOUND = 12  # erase: no such file
    PROTECTED = 13  # erase refused: file marked important or locked
    AUTH_REQUIRED = 14  # command needs a successful AUTH first
    UNKNOWN_COMMAND = 15
    BAD_REQUEST = 16  # request payload malformed


#: The one result code that means success for each command.
SUCCESS = {
    Command.IDENTIFY: Result.CONNECT_OK,
    Command.AUTH: Result.PASSWORD_OK,
    Command.READ_CLOCK: Result.OK,
    Command.SET_CLOCK: Result.TIME_SYNC_OK,
    Command.BATTERY: Result.OK,
    Command.STORAGE: Result.OK,
    Command.SET_MSDC: Result.MSDC_OK,
    Command.LIST_FILES: Result.OK,
    Command.ERASE: Result.ERASE_OK,
    Command.GET_ID_CODE: Result.CONNECT_OK,
    Command.WRITE_ZFY_INFO: Result.CONNECT_OK,
    Command.READ_RESOLUTION: Result.OK,
}

#: Commands the recorder refuses with AUTH_REQUIRED until AUTH succeeded.
NEEDS_AUTH = frozenset({Command.SET_CLOCK, Command.SET_MSDC, Command.ERASE, Command.WRITE_ZFY_INFO})

RESULT_TEXT = {
    Result.CONNECT_OK: "连接成功 / connected",
    Result.CONNECT_FAIL: "记录仪连接失败 / recorder refused the connection",
    Result.PASSWORD_OK: "密码正确 / password accepted",
    Result.PASSWORD_FAIL: "管理员密码错误 / wrong admin password",
    Result.TIME_SYNC_OK: "校时成功 / clock set",
    Result.TIME_SYNC_FAIL: "记录仪校时失败 / recorder refused to set its clock",
    Result.MSDC_OK: "已切换为大容量存储 / switched to mass storage",
    Result.MSDC_FAIL: "记录仪无法切换为大容量存储 / recorder failed to switch to mass storage",
    Result.OK: "成功 / ok",
    Result.FAIL: "记录仪内部错误 / recorder reported a device fault",
    Result.ERASE_OK: "已删除 / erased",
    Result.NOT_FOUND: "记录仪上无此文件 / no such file on the recorder",
    Result.PROTECTED: "重点或锁定文件不可删除 / file is marked important or locked, erase refused",
    Result.AUTH_REQUIRED: "需先验证管理员密码 / admin password authentication required",
    Result.UNKNOWN_COMMAND: "记录仪不支持该命令 / recorder does not know this command",
    Result.BAD_REQUEST: "记录仪拒绝请求格式 / recorder rejected the request payload",
}


def result_text(code: int) -> str:
    try:
        return RESULT_TEXT[Result(code)]
    except ValueError:
        return f"未知结果码 {code} / unknown result code {code}"


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC_TABLE = _make_table()


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE; ``crc16(b"123456789") == 0x29B1``."""
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


@dataclass(frozen=True)
class Frame:
    cmd: int
    seq: int
    payload: bytes = b""
    version: int = VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.cmd & RESPONSE_BIT)

    @property
    def command(self) -> int:
        """The command number without the response bit."""
        return self.cmd & ~RESPONSE_BIT

    @property
    def result(self) -> int:
        """Result code of a response (first payload byte)."""
        if not self.payload:
            raise ValueError("empty payload has no result code")
        return self.payload[0]

    def encode(self) -> bytes:
        return encode_frame(self.cmd, self.seq, self.payload, version=self.version)


def encode_frame(cmd: int, seq: int, payload: bytes = b"", *, version: int = VERSION) -> bytes:
    if not 0 <= cmd <= 0xFF or not 0 <= seq <= 0xFF:
        raise ValueError(f"cmd/seq out of range: {cmd}, {seq}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = HEADER.pack(SOF, version, cmd, seq, len(payload))[1:] + bytes(payload)
    return bytes([SOF]) + body + crc16(body).to_bytes(2, "big")


def encode_response(cmd: int, seq: int, result: int, data: bytes = b"") -> bytes:
    return encode_frame(cmd | RESPONSE_BIT, seq, bytes([result]) + data)


_OK, _BAD, _INCOMPLETE = 0, 1, 2


class FrameDecoder:
    """Incremental decoder that resynchronises after garbage.

    It scans for SOF, checks version and length, waits for the whole frame and
    verifies the CRC. A candidate that fails is dropped one byte at a time (so a
    stray 0xA5 inside garbage never swallows the real frame behind it); while a
    candidate is still incomplete, a complete valid frame found later in the
    buffer wins and everything before it is discarded.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self._buf = bytearray()
        self.frames = 0
        self.bad_frames = 0  # complete candidates with a bad CRC, version or length
        self.discarded_bytes = 0

    def reset(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out = []
        while True:
            frame = self._next()
            if frame is None:
                return out
            out.append(frame)

    def _check(self, pos: int) -> tuple[int, Frame | None, int]:
        buf = self._buf
        if len(buf) - pos < HEADER_LEN:
            return _INCOMPLETE, None, 0
        _, version, cmd, seq, length = HEADER.unpack_from(buf, pos)
        if version != VERSION or length > self.max_payload:
            return _BAD, None, 0
        end = pos + HEADER_LEN + length + CRC_LEN
        if len(buf) < end:
            return _INCOMPLETE, None, 0
        body = bytes(buf[pos + 1 : end - CRC_LEN])
        if crc16(body) != int.from_bytes(buf[end - CRC_LEN : end], "big"):
            return _BAD, None, 0
        return _OK, Frame(cmd, seq, bytes(buf[pos + HEADER_LEN : end - CRC_LEN]), version), end

    def _next(self) -> Frame | None:
        buf = self._buf
        keep_from: int | None = None
        bad: list[int] = []
        start = 0
        while True:
            pos = buf.find(SOF, start)
            if pos < 0:
                cut = len(buf) if keep_from is None else keep_from
                self._discard(cut, sum(1 for b in bad if b < cut))
                return None
            status, frame, end = self._check(pos)
            if status == _OK:
                self._discard(pos, sum(1 for b in bad if b < pos))
                del self._buf[: end - pos]
                self.frames += 1
                return frame
            if status == _BAD:
                bad.append(pos)
            elif keep_from is None:
                keep_from = pos
            start = pos + 1

    def _discard(self, n: int, bad: int) -> None:
        if n:
            logger.debug("discarding %d bytes (%d bad frames) while resyncing", n, bad)
            del self._buf[:n]
            self.discarded_bytes += n
        self.bad_frames += bad
