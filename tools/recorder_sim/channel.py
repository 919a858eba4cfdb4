"""The recorder command protocol on a pty (docs/recorder-protocol.md): the serial side of
:class:`tools.recorder_sim.RecorderSim`, with its faults (garbage, silence, bad CRCs, a channel
that drops after SetMSDC and comes back, answers a recorder does not know or cuts short)."""

from __future__ import annotations

import errno
import logging
import os
import select
import struct
import time
import tty

from drivers.recorder.errors import ProtocolError
from drivers.recorder.protocol import (
    MAX_PAYLOAD,
    NEEDS_AUTH,
    SOF,
    VERSION,
    Command,
    Frame,
    FrameDecoder,
    Result,
    encode_response,
)
from drivers.recorder.zfy import DEVICE_TIME_LEN, ZfyInfo, decode_device_time, encode_device_time, encode_file_record

logger = logging.getLogger(__name__)

PASSWORD_LEN = 6
WRITE_TIMEOUT = 2.0

_SERIAL_FUNCTIONS = {
    Command.GET_ID_CODE: "get_id_code", Command.WRITE_ZFY_INFO: "write_zfy_info",
    Command.READ_RESOLUTION: "read_resolution", Command.BATTERY: "read_battery", Command.SET_CLOCK: "sync_dev_time",
    Command.SET_MSDC: "set_msdc", Command.READ_CLOCK: "read_clock", Command.STORAGE: "storage",
}


class SerialChannel:
    """The command channel of a :class:`tools.recorder_sim.RecorderSim` (a mix-in: the device's
    state is the simulator's own)."""

    # --- the pty -----------------------------------------------------------------

    def _open_port(self) -> str:
        """A new pty (a new connection of the command channel), linked at ``link``."""
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        tty_path = os.ttyname(self._slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            if self.link.is_symlink():
                self.link.unlink()
            elif self.link.exists():
                raise FileExistsError(f"{self.link} exists and is not a symlink")
            os.symlink(tty_path, self.link)
            self.port_path = str(self.link)
        else:
            self.port_path = tty_path
        return tty_path

    def _channel_timers(self) -> None:
        """msdc_drop: the serve thread closes the channel when due and opens a new one later."""
        now = time.monotonic()
        if self._drop_at is not None and now >= self._drop_at:
            self._drop_at = None
            self._close_port()
            self._return_at = now + float(self.msdc_drop or 0)
            logger.info("recorder sim %s: command channel gone (mass storage only)", self.info.serial)
            self.channel_dropped.set()
        if self._return_at is not None and now >= self._return_at:
            self._return_at = None
            self._open_port()
            # a new connection: authentication and the duplicate cache belong to the old one
            self.authenticated = False
            self._decoder = FrameDecoder()
            self._last, self._last_response = None, b""
            self.connections += 1
            logger.info("recorder sim %s: command channel back at %s", self.info.serial, self.port_path)
            self.channel_back.set()

    def _close_port(self) -> None:
        for attr in ("_master", "_slave"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.link is not None and self.link.is_symlink():
            try:
                self.link.unlink()
            except OSError:
                pass

    # --- serving -----------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                self._channel_timers()
                master = self._master
                if master is None:
                    if self._return_at is None:
                        return
                    self._stop.wait(0.05)
                    continue
                pending = self._drop_at is not None or self._return_at is not None
                readable, _, _ = select.select([master, self._wake_r], [], [], 0.05 if pending else 0.2)
                if self._wake_r in readable:
                    os.read(self._wake_r, 64)
                    if self._hangup.is_set():
                        self._do_hangup()
                        return
                if master in readable:
                    try:
                        data = os.read(master, 4096)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if exc.errno == errno.EIO:
                            time.sleep(0.05)
                            continue
                        raise
                    for frame in self._decoder.feed(data):
                        self._handle(frame)
        except Exception:
            logger.exception("recorder sim serve loop failed")

    def _do_hangup(self) -> None:
        logger.info("recorder sim %s: hangup (disconnect fault)", self.info.serial)
        self._close_port()
        self._remove_volume()  # unplugged: the volume goes with the channel
        self.disconnected.set()

    def _send(self, data: bytes) -> None:
        master = self._master
        if master is None:
            return
        deadline = time.monotonic() + WRITE_TIMEOUT
        view = memoryview(data)
        while view:
            try:
                n = os.write(master, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline or self._stop.is_set():
                    logger.warning("recorder sim: nobody reads the port, dropped %d bytes", len(view))
                    return
                select.select([], [master], [], 0.05)

    def _garbage(self) -> bytes:
        rng = self._rng
        junk = bytearray(rng.randbytes(rng.randint(1, 24)))
        if rng.random() < 0.5:
            # a fake frame header claiming a long payload: must not swallow the real frame
            junk += bytes([SOF, VERSION, rng.randint(0, 255), rng.randint(0, 255)]) + struct.pack(">H", rng.randint(20, 600))
            junk += rng.randbytes(rng.randint(0, 8))
        return bytes(junk)

    def _transmit(self, response: bytes) -> None:
        if self.response_delay:
            time.sleep(self.response_delay)
        if not self.garbage:
            self._send(response)
            return
        self._send(self._garbage())
        cut = sorted(self._rng.sample(range(1, len(response)), k=min(2, len(response) - 1)))
        start = 0
        for end in [*cut, len(response)]:
            self._send(response[start:end])
            time.sleep(self._rng.random() * 0.002)
            start = end
        if self._rng.random() < 0.5:
            self._send(self._rng.randbytes(self._rng.randint(1, 8)))

    def _handle(self, frame: Frame) -> None:
        if frame.is_response:
            return
        self.requests.append((frame.cmd, frame.seq))
        if self.silent or self._hangup.is_set():
            return
        key = (frame.cmd, frame.seq, frame.payload)
        if key == self._last:
            logger.debug("duplicate request seq=%d, answering from cache", frame.seq)
            response = self._last_response
        else:
            try:
                code, data = self._dispatch(frame)
            except Exception:
                logger.exception("recorder sim: command 0x%02x failed", frame.cmd)
                code, data = Result.FAIL, b""
            response = encode_response(frame.cmd, frame.seq, int(code), data)
            self._last, self._last_response = key, response
        if self.corrupt_responses > 0:
            self.corrupt_responses -= 1
            response = response[:-1] + bytes([response[-1] ^ 0xFF])
        self._transmit(response)

    def _dispatch(self, frame: Frame) -> tuple[int, bytes]:
        try:
            cmd = Command(frame.cmd)
        except ValueError:
            return Result.UNKNOWN_COMMAND, b""
        payload = frame.payload
        extra = self._dispatch_extra(cmd, payload)
        if extra is not None:
            return extra
        if cmd in NEEDS_AUTH and not self.authenticated:
            return Result.AUTH_REQUIRED, b""
        if cmd == Command.IDENTIFY:
            return Result.CONNECT_OK, self.info.encode()
        if cmd == Command.AUTH:
            if len(payload) != PASSWORD_LEN:
                return Result.BAD_REQUEST, b""
            self.authenticated = payload == self.device_password
            return (Result.PASSWORD_OK if self.authenticated else Result.PASSWORD_FAIL), b""
        if cmd == Command.READ_CLOCK:
            if self.no_clock_read:
                return Result.UNKNOWN_COMMAND, b""
            return Result.OK, encode_device_time(self.now())
        if cmd == Command.SET_CLOCK:
            if len(payload) != DEVICE_TIME_LEN:
                return Result.BAD_REQUEST, b""
            try:
                target = decode_device_time(payload)
            except ProtocolError:
                return Result.BAD_REQUEST, b""
            if self.time_sync_fail:
                return Result.TIME_SYNC_FAIL, b""
            self.tz = target.tzinfo  # type: ignore[assignment]
            self._clock_offset = target.timestamp() - time.time()
            return Result.TIME_SYNC_OK, b""
        if cmd == Command.BATTERY:
            return Result.OK, bytes([self.battery_level, 1 if self.charging else 0])
        if cmd == Command.STORAGE:
            return Result.OK, struct.pack(">QQ", *self.storage())
        if cmd == Command.SET_MSDC:
            if self.msdc_fail:
                return Result.MSDC_FAIL, b""
            if not self.msdc:
                self._populate_mount()
                self.msdc = True
                if self.msdc_drop is not None:  # re-enumerates as mass storage only, once the answer is out
                    self._drop_at = time.monotonic() + 0.3
            if self.msdc_no_path:
                return Result.MSDC_OK, b""
            return Result.MSDC_OK, os.path.abspath(self.mount_dir).encode("utf-8")
        if cmd == Command.LIST_FILES:
            if len(payload) != 2:
                return Result.BAD_REQUEST, b""
            return Result.OK, self._list_page(struct.unpack(">H", payload)[0])
        if cmd == Command.ERASE:
            try:
                name = payload.decode("utf-8")
            except UnicodeDecodeError:
                return Result.BAD_REQUEST, b""
            if self.msdc and self.msdc_erase_fail:
                return Result.FAIL, b""
            return self._erase(name), b""
        return Result.UNKNOWN_COMMAND, b""

    def _dispatch_extra(self, cmd: Command, payload: bytes) -> tuple[int, bytes] | None:
        """GET_ID_CODE, WRITE_ZFY_INFO, READ_RESOLUTION (the 行标 functions added to the serial
        channel for the command set), and the faults that cut across commands."""
        fn = _SERIAL_FUNCTIONS.get(cmd)
        if fn is not None and fn in self.unsupported:
            return Result.UNKNOWN_COMMAND, b""
        short = (lambda b: b[:-1]) if self.short_answers else (lambda b: b)
        if cmd == Command.GET_ID_CODE:
            return Result.CONNECT_OK, short(self.id_code.encode("ascii").ljust(6, b"\x00"))
        if cmd == Command.WRITE_ZFY_INFO:
            if not self.authenticated:
                return Result.AUTH_REQUIRED, b""
            try:
                info = ZfyInfo.decode(payload)
            except ProtocolError:
                return Result.BAD_REQUEST, b""
            self.write_info(info)
            return Result.CONNECT_OK, b""
        if cmd == Command.READ_RESOLUTION:
            return Result.OK, short(struct.pack(">HH", *self.resolution))
        if cmd == Command.BATTERY and self.short_answers:
            return Result.OK, bytes([self.battery_level])
        if cmd == Command.IDENTIFY and self.short_answers:
            return Result.CONNECT_OK, self.info.encode()[:-1]
        if cmd == Command.SET_MSDC and self.no_sd and self.authenticated:
            return Result.MSDC_FAIL, b""
        return None

    def _list_page(self, start: int) -> bytes:
        total = len(self.files)
        body = bytearray()
        count = 0
        for rec in self.files[start:]:
            raw = encode_file_record(rec)
            if count == 255 or 1 + 3 + len(body) + len(raw) > MAX_PAYLOAD:
                break
            body += raw
            count += 1
        if self.list_short and count:
            return struct.pack(">HB", total, count + 1) + bytes(body)
        return struct.pack(">HB", total, count) + bytes(body) + self.list_trailing
