"""Station side of the recorder command channel over USB serial (CDC-ACM)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import serial

from .errors import AuthError, ProtocolError, RecorderError, RecorderGone, RecorderRefused, RecorderTimeout, Unsupported
from .naming import safe_name
from .protocol import (
    MAX_PAYLOAD,
    RESPONSE_BIT,
    SUCCESS,
    Command,
    FrameDecoder,
    Result,
    encode_frame,
    result_text,
)
from .zfy import (
    DEVICE_TIME_LEN,
    Battery,
    FileRecord,
    Storage,
    ZfyInfo,
    decode_device_time,
    decode_file_record,
    encode_device_time,
)

logger = logging.getLogger(__name__)

PASSWORD_LEN = 6
POLL = 0.05  # seconds, granularity of the response deadline


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


class RecorderClient:
    """One recorder on one serial port. Not shared between threads without its lock
    (every request holds it). ``timeout`` is per attempt; a request is sent at most
    ``1 + retries`` times with the same sequence number, so the recorder can answer
    a repeated request from its cache instead of executing it twice.

    Example::

        with RecorderClient("/dev/ttyACM0") as rec:
            info = rec.identify()
            rec.authenticate("000000")
            rec.set_clock(datetime.now().astimezone())  # keep the fraction: see set_clock
            mount = rec.mass_storage()
    """

    def __init__(self, port_path: str, timeout: float = 1.0, retries: int = 3, *, baudrate: int = 115200):
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.port_path = port_path
        self.timeout = timeout
        self.retries = retries
        self.stats = LinkStats()
        self._decoder = FrameDecoder()
        self._lock = threading.Lock()
        self._seq = int.from_bytes(os.urandom(1), "big")
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

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        port, self._port = getattr(self, "_port", None), None
        if port is not None:
            try:
                port.close()
            except (OSError, serial.SerialException):
                pass

    def __enter__(self) -> RecorderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def decoder(self) -> FrameDecoder:
        """Framing counters: ``frames``, ``bad_frames``, ``discarded_bytes``."""
        return self._decoder

    # --- transport ---------------------------------------------------------------

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

    def _call(self, cmd: Command, payload: bytes = b"") -> bytes:
        code, data = self.request(cmd, payload)
        if code == SUCCESS[cmd]:
            return data
        text = result_text(code)
        if code in (Result.PASSWORD_FAIL, Result.AUTH_REQUIRED):
            raise AuthError(f"{text} ({cmd.name})")
        if code == Result.UNKNOWN_COMMAND:
            raise Unsupported(f"{text} ({cmd.name})")
        if code == Result.BAD_REQUEST:
            raise ProtocolError(f"{text} ({cmd.name})")
        try:
            Result(code)
        except ValueError:
            raise ProtocolError(f"{text} ({cmd.name})") from None
        raise RecorderRefused(f"{text} ({cmd.name})", code)

    # --- commands ----------------------------------------------------------------

    def identify(self) -> ZfyInfo:
        """Init_Device + GetZFYInfo."""
        data = self._call(Command.IDENTIFY)
        return ZfyInfo.decode(data)

    def authenticate(self, password: str) -> None:
        """Admin password (up to 6 ASCII bytes, NUL-padded). AuthError if refused."""
        try:
            raw = password.encode("ascii")
        except UnicodeEncodeError:
            raise AuthError("管理员密码须为ASCII字符 / admin password must be ASCII") from None
        if not 1 <= len(raw) <= PASSWORD_LEN or b"\x00" in raw:
            raise AuthError(f"管理员密码须为1至6字节 / admin password must be 1 to {PASSWORD_LEN} bytes")
        self._call(Command.AUTH, raw.ljust(PASSWORD_LEN, b"\x00"))

    def read_clock(self) -> _dt.datetime:
        data = self._call(Command.READ_CLOCK)
        if len(data) != DEVICE_TIME_LEN:
            raise ProtocolError(f"时钟应答长度错误 / clock answer is {len(data)} bytes, expected {DEVICE_TIME_LEN}")
        return decode_device_time(data)

    def clock_skew(self) -> float:
        """Recorder clock minus station clock, seconds. The device reports whole
        seconds (truncated), so its reading stands for the middle of that second; the
        station time is the middle of the exchange. Accurate to about ±0.5 s."""
        before = time.time()
        device = self.read_clock()
        after = time.time()
        return device.timestamp() + 0.5 - (before + after) / 2

    def set_clock(self, ts: _dt.datetime, *, align: bool = True) -> None:
        """SyncDevTime; ``ts`` must be aware (its offset becomes the device zone).

        The device takes whole seconds: with ``align`` and a ``ts`` that has a
        fraction, the call waits for the next whole second of ``ts`` and sends that,
        so the device ends up within transmission delay of ``ts`` (not up to 1 s behind)."""
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError("set_clock needs an aware datetime (e.g. +08:00)")
        if align and ts.microsecond:
            wait = 1 - ts.microsecond / 1e6
            ts = ts.replace(microsecond=0) + _dt.timedelta(seconds=1)
            time.sleep(wait)
        self._call(Command.SET_CLOCK, encode_device_time(ts))

    def battery(self) -> Battery:
        data = self._call(Command.BATTERY)
        if len(data) != 2 or data[0] > 100 or data[1] > 1:
            raise ProtocolError(f"电量应答错误 / bad battery answer {data.hex()}")
        return Battery(level=data[0], charging=bool(data[1]))

    def storage(self) -> Storage:
        data = self._call(Command.STORAGE)
        if len(data) != 16:
            raise ProtocolError(f"存储应答错误 / bad storage answer {data.hex()}")
        used, free = struct.unpack(">QQ", data)
        return Storage(used=used, free=free)

    def mass_storage(self) -> str:
        """SetMSDC; returns the mount path where the recorder's files appear."""
        data = self._call(Command.SET_MSDC)
        try:
            path = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"挂载路径编码错误 / mount path is not UTF-8: {data.hex()}") from None
        if not path.startswith("/") or "\x00" in path:
            raise ProtocolError(f"挂载路径无效 / mount path must be absolute: {path!r}")
        return path

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
            data = self._call(Command.LIST_FILES, struct.pack(">H", seen))
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
        """Every file on the recorder, in the recorder's order. UnsafeName if the
        recorder reports a name with a path, NUL, control characters..."""
        records = []
        for rec in self.file_records():
            safe_name(rec.name)
            records.append(rec)
        return records

    def erase(self, name: str) -> None:
        """Erase one file. RecorderRefused(result=13) for important/locked files,
        RecorderRefused(result=12) if the recorder has no such file."""
        raw = safe_name(name).encode("utf-8")
        if len(raw) > MAX_PAYLOAD:
            raise ValueError("name too long")
        self._call(Command.ERASE, raw)
