"""The serial transport of the recorder command set: the framing of docs/recorder-protocol.md
over USB serial (CDC-ACM), and :class:`RecorderClient`, a :class:`~drivers.recorder.commands.Recorder`
on a serial port."""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from dataclasses import dataclass

import serial

from .commands import Function, Recorder, Resolution
from .errors import ProtocolError, RecorderError, RecorderGone, RecorderTimeout
from .protocol import (
    RESPONSE_BIT,
    SUCCESS,
    Command,
    FrameDecoder,
    Result,
    encode_frame,
)
from .zfy import Battery, ZfyInfo, decode_id_code, encode_device_time

logger = logging.getLogger(__name__)

PASSWORD_LEN = 6
POLL = 0.05  # seconds, granularity of the response deadline

#: the serial command of each function of the command set
COMMANDS = {
    Function.INIT_DEVICE: Command.IDENTIFY,
    Function.GET_ID_CODE: Command.GET_ID_CODE,
    Function.GET_ZFY_INFO: Command.IDENTIFY,
    Function.WRITE_ZFY_INFO: Command.WRITE_ZFY_INFO,
    Function.SYNC_DEV_TIME: Command.SET_CLOCK,
    Function.SET_MSDC: Command.SET_MSDC,
    Function.READ_RESOLUTION: Command.READ_RESOLUTION,
    Function.READ_BATTERY: Command.BATTERY,
    Function.AUTHENTICATE: Command.AUTH,
    Function.READ_CLOCK: Command.READ_CLOCK,
    Function.STORAGE: Command.STORAGE,
    Function.LIST_FILES: Command.LIST_FILES,
    Function.ERASE: Command.ERASE,
}


@dataclass
class LinkStats:
    requests: int = 0
    retries: int = 0  # re-sends after a timeout
    stale_frames: int = 0  # responses with another seq/cmd (late answers to earlier attempts)


def _cmd_name(cmd: int) -> str:
    try:
        return Command(cmd).name
    except ValueError:
        return f"0x{cmd:02x}"


class SerialCodec:
    """Value layouts on the serial channel (docs/recorder-protocol.md)."""

    zfy_len = 89

    def encode_zfy(self, info: ZfyInfo) -> bytes:
        return info.encode("89")

    def decode_zfy(self, data: bytes) -> ZfyInfo:
        return ZfyInfo.decode(data, "89")

    def encode_time(self, ts) -> bytes:
        return encode_device_time(ts)  # "YYYYMMDDhhmmss+0800": the zone of ts travels with it

    def decode_battery(self, data: bytes) -> Battery:
        if len(data) != 2 or data[0] > 100 or data[1] > 1:
            raise ProtocolError(f"电量应答错误 / bad battery answer {data.hex()}")
        return Battery(level=data[0], charging=bool(data[1]))

    def decode_resolution(self, data: bytes) -> Resolution:
        if len(data) != 4:
            raise ProtocolError(f"分辨率应答错误 / bad resolution answer {data.hex()} (expected 4 bytes)")
        w, h = struct.unpack(">HH", data)
        if not (w and h):
            raise ProtocolError(f"分辨率应答错误 / bad resolution answer {w}x{h}")
        return Resolution(w, h)

    def decode_id_code(self, data: bytes) -> str:
        return decode_id_code(data)


class SerialTransport:
    """The framing over one serial port. ``timeout`` is per attempt; a request is sent at most
    ``1 + retries`` times with the same sequence number, so the recorder can answer a repeated
    request from its cache instead of executing it twice. Thread-safe (every request holds a lock)."""

    kind = "serial"
    codec = SerialCodec()

    def __init__(self, port_path: str, timeout: float = 1.0, retries: int = 3, *, baudrate: int = 115200):
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.port_path = self.where = port_path
        self.timeout = timeout
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._lock = threading.Lock()
        self._seq = int.from_bytes(os.urandom(1), "big")
        self._port = None
        try:
            # a short read timeout: read() returns as soon as a byte arrives, and the
            # loop in _await checks the deadline (changing .timeout would reconfigure termios)
            self._port = serial.Serial(
                port_path, baudrate=baudrate, timeout=min(timeout, POLL), write_timeout=timeout, exclusive=True
            )
        except serial.SerialException as exc:
            if not os.path.exists(port_path):
                raise RecorderGone(f"记录仪串口不存在 / recorder port not found: {port_path}") from exc
            raise RecorderError(f"无法打开记录仪串口 / cannot open recorder port {port_path}: {exc}") from exc
        logger.debug("opened recorder port %s", port_path)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (OSError, serial.SerialException):
                pass

    @property
    def decoder(self) -> FrameDecoder:
        return self._decoder

    @property
    def closed(self) -> bool:
        return self._port is None

    # --- the command set's view ----------------------------------------------------------------
    def supports(self, fn: Function) -> bool:
        return fn in COMMANDS

    def success(self, fn: Function) -> int:
        return int(SUCCESS[COMMANDS[fn]]) if fn in COMMANDS else int(Result.CONNECT_OK)

    def call(self, fn: Function, payload: bytes = b"") -> tuple[int, bytes]:
        return self.request(COMMANDS[fn], payload)

    def authenticate(self, password: bytes) -> tuple[int, bytes]:
        """AUTH: valid for this connection (until the recorder is unplugged)."""
        return self.request(Command.AUTH, password.ljust(PASSWORD_LEN, b"\x00"))

    # --- framing ---------------------------------------------------------------------------------
    def _gone(self, exc: BaseException | None = None) -> RecorderGone:
        detail = f": {exc}" if exc else ""
        return RecorderGone(f"记录仪已断开 / recorder disconnected ({self.port_path}){detail}")

    def _write(self, data: bytes) -> None:
        logger.debug("tx %s", data.hex(" "))
        try:
            self._port.write(data)
            self._port.flush()
        except serial.SerialTimeoutException as exc:
            raise RecorderTimeout(f"记录仪串口写超时 / write to recorder timed out ({self.port_path})") from exc
        except (serial.SerialException, OSError) as exc:
            raise self._gone(exc) from exc

    def _await(self, cmd: int, seq: int, deadline: float):
        want = cmd | RESPONSE_BIT
        while True:
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise self._gone(exc) from exc
            if not chunk:
                continue
            logger.debug("rx %s", chunk.hex(" "))
            for frame in self._decoder.feed(chunk):
                if frame.cmd == want and frame.seq == seq:
                    return frame
                self.stats.stale_frames += 1
                logger.debug("ignoring frame cmd=0x%02x seq=%d (want 0x%02x/%d)", frame.cmd, frame.seq, want, seq)

    def request(self, cmd: int, payload: bytes = b"") -> tuple[int, bytes]:
        """Send one request, wait for its response (retrying on silence);
        returns (result code, data after the code)."""
        name = _cmd_name(cmd)
        if self._port is None:
            raise RecorderError(f"记录仪连接已关闭 / recorder client is closed ({self.port_path})")
        with self._lock:
            self._seq = (self._seq + 1) & 0xFF
            seq = self._seq
            frame = encode_frame(cmd, seq, payload)
            self.stats.requests += 1
            for attempt in range(1 + self.retries):
                if attempt:
                    self.stats.retries += 1
                    logger.info("recorder %s: no answer to %s, retry %d/%d", self.port_path, name, attempt, self.retries)
                self._write(frame)
                response = self._await(cmd, seq, time.monotonic() + self.timeout)
                if response is not None:
                    if not response.payload:
                        raise ProtocolError(f"记录仪应答无结果码 / empty response to {name}")
                    return response.payload[0], response.payload[1:]
                if not os.path.exists(self.port_path):
                    raise self._gone()
        raise RecorderTimeout(
            f"记录仪无应答 / recorder did not answer {name} "
            f"({1 + self.retries} attempts, {self.timeout:g} s each, {self.port_path})"
        )


class RecorderClient(Recorder):
    """One recorder on one serial port: the command set over :class:`SerialTransport`.

    Example::

        with RecorderClient("/dev/ttyACM0") as rec:
            info = rec.identify()
            rec.authenticate("000000")
            rec.set_clock(datetime.now().astimezone())  # keep the fraction: see sync_dev_time
            mount = rec.mass_storage()
    """

    def __init__(self, port_path: str, timeout: float = 1.0, retries: int = 3, *, baudrate: int = 115200):
        super().__init__(SerialTransport(port_path, timeout, retries, baudrate=baudrate))

    transport: SerialTransport

    @property
    def port_path(self) -> str:
        return self.transport.port_path

    @property
    def stats(self) -> LinkStats:
        return self.transport.stats

    @property
    def decoder(self) -> FrameDecoder:
        """Framing counters: ``frames``, ``bad_frames``, ``discarded_bytes``."""
        return self.transport.decoder

    def request(self, cmd: int, payload: bytes = b"") -> tuple[int, bytes]:
        """One raw request on the serial channel: (result code, data after the code)."""
        return self.transport.request(cmd, payload)
