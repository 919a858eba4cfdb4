"""Body-worn recorder simulator: speaks the recorder command protocol on a pty and
serves a directory of real media files, with fault injection.

Library::

    sim = RecorderSim("media/", link="/tmp/x/ttyREC0", officer_name="张三", garbage=True)
    sim.start()
    RecorderClient(sim.port_path) ...     # files appear in sim.mount_dir after SetMSDC
    sim.stop()

CLI (runs until SIGINT/SIGTERM)::

    python -m tools.recorder_sim --link /tmp/x/ttyREC0 --media DIR \\
        --serial 1234567 --officer 000123 --officer-name 张三 \\
        --unit 330100000001 --unit-name 杭州市城市管理局 [--garbage] [--silent] \\
        [--disconnect-file NAME --disconnect-at N] [--clock-offset S | --clock-fixed 1970|2099] \\
        [--full] [--wrong-password] [--corrupt N] [--important NAME] [--locked NAME]

Faults (constructor keywords / flags):
  garbage            random bytes (some with fake frame headers) around every response,
                     each response split into chunks
  silent             read requests (counted in ``requests``) but never answer
  corrupt_responses  the first N responses go out with a bad CRC (the retry is answered
                     from the duplicate cache, not executed again)
  disconnect_file/_at  after SetMSDC that file is a FIFO in the mount dir: a reader gets
                     its first N bytes, then the pty master closes, the link vanishes
                     (serial hangup) and the volume (mount dir) goes: unplugged, before the
                     reader sees EOF
  flip_bit_at        with disconnect_file: the byte at this offset (< disconnect_at) goes out
                     through the FIFO with its lowest bit flipped (a read gone wrong before the
                     unplug); the file itself is unchanged, so a re-dock serves the true bytes
  clock_offset       device clock = real time + offset seconds
  clock_fixed        device clock starts at 1970-01-01 or 2099-01-01 00:00:00 (or a datetime)
  msdc_drop          the command channel goes away 0.3 s after the SET_MSDC answer (the pty closes,
                     the link vanishes: a recorder that re-enumerates as mass storage only) and comes
                     back this many seconds later as a new connection (a new pty at the same link;
                     authentication is gone, the volume stays in place); None = composite device
  msdc_erase_fail    ERASE answers 10 FAIL while in mass-storage mode (a recorder that cannot change a
                     volume the host has mounted); before SET_MSDC it erases
  msdc_no_path       SET_MSDC answers 7 with no mount path, as a recorder that cannot know where the
                     host mounts its volume: the station pairs the volume by USB serial (udev)
  no_clock_read      READ_CLOCK answers 15 UNKNOWN_COMMAND (a recorder that cannot tell its time,
                     like the 行标 functions: docs/gat947.md); SET_CLOCK still works
  storage_full       storage reports free = 0
  wrong_password     the device password differs from ``password``
  time_sync_fail / msdc_fail  SyncDevTime / SetMSDC answer 6 / 8
  inject_names       extra (hostile) names in the file listing, e.g. "../etc/passwd"
  list_trailing      bytes after the records of every file-list page (a malformed page)
  list_short         every file-list page announces one record more than it carries
  unsupported        function names (drivers.recorder.Function values, e.g. "read_resolution") the
                     recorder does not know: serial answers 15, SCSI CHECK CONDITION / ILLEGAL REQUEST
  short_answers      query answers (battery, resolution, ID code, ZFY_INFO) one byte short
  no_sd              no SD card: SetMSDC fails (serial 8; SCSI: the SD status byte is 0)

Both transports act on the same device state (officer, password, clock, battery...):
``sim.sg_device()`` is a simulated SCSI generic device for ``drivers.recorder.scsi.ScsiTransport``
answering the JieLi "DV16" command blocks (docs/gat947.md 3.1) at the SG_IO seam
(``execute(cdb, direction, data_out, length_in, timeout_ms)``), with faults of its own
(``SimSgDevice(sim, timeouts=N, unit_attention=N, gone=True)``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import logging
import os
import random
import select
import shutil
import signal
import struct
import tempfile
import threading
import time
import tty
from dataclasses import replace
from pathlib import Path

from drivers.recorder.errors import ProtocolError
from drivers.recorder.mass_storage import scan_mass_storage
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
from drivers.recorder.zfy import (
    DEVICE_TIME_LEN,
    FileRecord,
    FileType,
    Mark,
    ZfyInfo,
    decode_device_time,
    encode_device_time,
    encode_file_record,
)

logger = logging.getLogger(__name__)

PASSWORD_LEN = 6
WRITE_TIMEOUT = 2.0


def parse_tz(text: str) -> _dt.timezone:
    """"+0800" -> timezone(+8h)."""
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        raise ValueError(f"time zone must look like +0800, got {text!r}")
    delta = _dt.timedelta(hours=int(text[1:3]), minutes=int(text[3:5]))
    return _dt.timezone(-delta if text[0] == "-" else delta)


class RecorderSim:
    def __init__(
        self,
        media_dir: str | os.PathLike,
        link: str | os.PathLike | None = None,
        *,
        serial: str = "1234567",
        officer_number: str = "000123",
        officer_name: str = "张三",
        unit_number: str = "330100000001",
        unit_name: str = "杭州市城市管理局",
        password: str = "000000",
        battery_level: int = 76,
        charging: bool = True,
        capacity: int = 32 << 30,
        mount_dir: str | os.PathLike | None = None,
        tz: str = "+0800",
        probe: bool = True,
        important: tuple[str, ...] | list[str] = (),
        locked: tuple[str, ...] | list[str] = (),
        # faults
        garbage: bool = False,
        silent: bool = False,
        corrupt_responses: int = 0,
        response_delay: float = 0.0,
        disconnect_file: str | None = None,
        disconnect_at: int = 0,
        flip_bit_at: int | None = None,
        clock_offset: float = 0.0,
        clock_fixed: str | _dt.datetime | None = None,
        no_clock_read: bool = False,
        msdc_drop: float | None = None,
        msdc_erase_fail: bool = False,
        msdc_no_path: bool = False,
        storage_full: bool = False,
        wrong_password: bool = False,
        time_sync_fail: bool = False,
        msdc_fail: bool = False,
        inject_names: tuple[str, ...] | list[str] = (),
        list_trailing: bytes = b"",
        list_short: bool = False,
        seed: int = 0,
        id_code: str = "JL0001",
        resolution: tuple[int, int] = (1920, 1080),
        unsupported: tuple[str, ...] | list[str] = (),
        short_answers: bool = False,
        no_sd: bool = False,
    ):
        self.media_dir = Path(media_dir)
        if not self.media_dir.is_dir():
            raise ValueError(f"media dir does not exist: {self.media_dir}")
        self.link = Path(link) if link else None
        self.info = ZfyInfo(serial, officer_number, officer_name, unit_number, unit_name)
        self.info.encode()  # ValueError early if a field does not fit
        pw = password.encode("ascii")
        if not 1 <= len(pw) <= PASSWORD_LEN:
            raise ValueError("password must be 1..6 ASCII bytes")
        if wrong_password:
            pw = b"987654" if pw != b"987654" else b"123456"
        self.device_password = pw.ljust(PASSWORD_LEN, b"\x00")
        self.battery_level = battery_level
        self.charging = charging
        self.capacity = capacity
        self.tz = parse_tz(tz)
        self.probe = probe
        self.important = set(important)
        self.locked = set(locked)
        self.garbage = garbage
        self.silent = silent
        self.corrupt_responses = corrupt_responses
        self.response_delay = response_delay
        self.disconnect_file = disconnect_file
        self.disconnect_at = disconnect_at
        self.flip_bit_at = flip_bit_at  # fault: this byte of the FIFO's stream goes out with bit 0 flipped
        self.storage_full = storage_full
        self.no_clock_read = no_clock_read
        self.msdc_drop = msdc_drop  # fault: seconds the command channel stays away after SET_MSDC
        self.msdc_erase_fail = msdc_erase_fail  # fault: ERASE answers FAIL in mass-storage mode
        self.msdc_no_path = msdc_no_path  # SET_MSDC answers 7 with no mount path (the station finds the volume)
        self.time_sync_fail = time_sync_fail
        self.msdc_fail = msdc_fail
        self.inject_names = list(inject_names)
        self.list_trailing = bytes(list_trailing)  # fault: these bytes follow the records of every list page
        self.list_short = list_short  # fault: a list page announces one record more than it carries
        self._rng = random.Random(seed)
        self.id_code = id_code
        self.resolution = tuple(resolution)
        self.unsupported = set(unsupported)  # fault: drivers.recorder.Function values this recorder does not know
        self.short_answers = short_answers  # fault: query answers one byte short
        self.no_sd = no_sd  # fault: no SD card, SetMSDC fails
        self.writes: list[ZfyInfo] = []  # every WriteZFYInfo received (either transport)

        real_now = time.time()
        if clock_fixed is not None:
            if isinstance(clock_fixed, _dt.datetime):
                fixed = clock_fixed
            elif str(clock_fixed) in ("1970", "2099"):
                fixed = _dt.datetime(int(clock_fixed), 1, 1, tzinfo=self.tz)
            else:
                raise ValueError("clock_fixed must be '1970', '2099' or an aware datetime")
            self._clock_offset = fixed.timestamp() - real_now
        else:
            self._clock_offset = float(clock_offset)

        self._own_mount = mount_dir is None
        self.mount_dir = str(mount_dir) if mount_dir else None
        self.port_path: str | None = None
        self.authenticated = False
        self.msdc = False
        self.requests: list[tuple[int, int]] = []  # (cmd, seq) of every request received
        self.erased: list[str] = []
        self.disconnected = threading.Event()
        self.channel_dropped = threading.Event()  # msdc_drop: the channel went away after SET_MSDC
        self.channel_back = threading.Event()  # ... and came back
        self.connections = 1  # command-channel connections so far (a drop and return makes a new one)
        self._drop_at: float | None = None
        self._return_at: float | None = None
        self.fifo_bytes_sent = 0
        self.files: list[FileRecord] = []

        self._master: int | None = None
        self._slave: int | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stop = threading.Event()
        self._hangup = threading.Event()
        self._threads: list[threading.Thread] = []
        self._decoder = FrameDecoder()
        self._last: tuple[int, int, bytes] | None = None
        self._last_response = b""
        self._placed: list[str] = []
        self._started = False

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> RecorderSim:
        if self._started:
            raise RuntimeError("simulator already started")
        self._started = True
        self.files = self._load_files()
        if self.disconnect_file is not None:
            rec = next((f for f in self.files if f.name == self.disconnect_file), None)
            if rec is None:
                raise ValueError(f"disconnect_file {self.disconnect_file!r} is not in {self.media_dir}")
            if not 0 <= self.disconnect_at <= rec.size:
                raise ValueError(f"disconnect_at must be within 0..{rec.size}")
            if self.flip_bit_at is not None and not 0 <= self.flip_bit_at < self.disconnect_at:
                raise ValueError(f"flip_bit_at must be within 0..{self.disconnect_at - 1} (before the unplug)")
        elif self.flip_bit_at is not None:
            raise ValueError("flip_bit_at needs disconnect_file (the bit is flipped in what the FIFO sends)")
        if self.mount_dir is None:
            self.mount_dir = tempfile.mkdtemp(prefix="recsim-mnt-")
        else:
            os.makedirs(self.mount_dir, exist_ok=True)
        tty_path = self._open_port()
        self._wake_r, self._wake_w = os.pipe()
        t = threading.Thread(target=self._serve, name=f"recsim-{self.info.serial}", daemon=True)
        self._threads.append(t)
        t.start()
        logger.info("recorder sim %s on %s (%s), mount %s", self.info.serial, self.port_path, tty_path, self.mount_dir)
        return self

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

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        for t in self._threads:
            t.join(timeout=5)
        self._close_port()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1
        self._remove_volume()

    def __enter__(self) -> RecorderSim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

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

    # --- device state ------------------------------------------------------------

    def _load_files(self) -> list[FileRecord]:
        files = []
        for rec in scan_mass_storage(self.media_dir, recursive=False, probe=self.probe, tz=self.tz):
            mark = Mark.IMPORTANT if rec.name in self.important else rec.mark
            files.append(replace(rec, mark=mark, locked=rec.locked or rec.name in self.locked))
        now = _dt.datetime.now(self.tz).replace(microsecond=0)
        for name in self.inject_names:
            files.append(FileRecord(name=name, size=0, capture_time=now, duration=0, type=FileType.OTHER))
        return files

    def now(self) -> _dt.datetime:
        """The device clock."""
        return _dt.datetime.fromtimestamp(int(time.time() + self._clock_offset), self.tz)

    def clock_seconds(self) -> float:
        """The device clock as a POSIX timestamp with its fraction (what ``now`` truncates)."""
        return time.time() + self._clock_offset

    def storage(self) -> tuple[int, int]:
        used = sum(f.size for f in self.files)
        if self.storage_full:
            return max(used, self.capacity), 0
        return used, max(0, self.capacity - used)

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

    def _remove_volume(self) -> None:
        if not (self.mount_dir and os.path.isdir(self.mount_dir)):
            return
        if self._own_mount:
            shutil.rmtree(self.mount_dir, ignore_errors=True)
            return
        for name in self._placed:
            try:
                os.unlink(os.path.join(self.mount_dir, name))
            except OSError:
                pass

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

    def write_info(self, info: ZfyInfo) -> None:
        """WriteZFYInfo on the device (either transport): the serial stays the device's own."""
        self.info = replace(info, serial=self.info.serial)
        self.writes.append(info)
        logger.info("recorder sim %s: ZFY_INFO written: officer %s unit %s", self.info.serial,
                    info.officer_number, info.unit_number)

    def set_clock_to(self, target: _dt.datetime) -> None:
        self.tz = target.tzinfo  # type: ignore[assignment]
        self._clock_offset = target.timestamp() - time.time()

    def enter_msdc(self) -> None:
        if not self.msdc:
            if self.mount_dir is not None:
                self._populate_mount()
            self.msdc = True

    def sg_device(self, path: str = "/dev/sg-sim", **faults) -> "SimSgDevice":
        """A simulated SCSI generic device on this recorder (the SG_IO seam)."""
        return SimSgDevice(self, path, **faults)

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

    def _erase(self, name: str) -> int:
        rec = next((f for f in self.files if f.name == name), None)
        if rec is None or "/" in name or name in ("", ".", ".."):
            return Result.NOT_FOUND
        if rec.protected:
            return Result.PROTECTED
        for base in (self.media_dir, Path(self.mount_dir)):
            try:
                os.unlink(base / name)
            except FileNotFoundError:
                pass
        self.files.remove(rec)
        self.erased.append(name)
        logger.info("recorder sim %s: erased %s", self.info.serial, name)
        return Result.ERASE_OK

    # --- mass storage ------------------------------------------------------------

    def _populate_mount(self) -> None:
        mount = Path(self.mount_dir)
        for rec in self.files:
            if rec.name in self.inject_names or "/" in rec.name or "\x00" in rec.name or rec.name in ("", ".", ".."):
                continue  # injected (hostile) names are only listed, never placed: "/etc/x" must not touch /etc
            src = self.media_dir / rec.name
            if not src.is_file():
                continue
            dst = mount / rec.name
            if dst.exists() or dst.is_symlink():
                dst.unlink()
            if rec.name == self.disconnect_file:
                os.mkfifo(dst)
                t = threading.Thread(target=self._feed_fifo, args=(dst, src, self.disconnect_at),
                                     name="recsim-fifo", daemon=True)
                self._threads.append(t)
                t.start()
            else:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            self._placed.append(rec.name)

    def _feed_fifo(self, fifo: Path, src: Path, limit: int) -> None:
        fd = None
        try:
            while fd is None:
                if self._stop.is_set():
                    return
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # no reader yet
                        raise
                    self._stop.wait(0.01)
            with open(src, "rb") as fh:
                while self.fifo_bytes_sent < limit and not self._stop.is_set():
                    at = self.fifo_bytes_sent
                    chunk = fh.read(min(65536, limit - at))
                    if not chunk:
                        break
                    flip = self.flip_bit_at
                    if flip is not None and at <= flip < at + len(chunk):
                        chunk = bytearray(chunk)
                        chunk[flip - at] ^= 0x01
                        chunk = bytes(chunk)
                    view = memoryview(chunk)
                    while view and not self._stop.is_set():
                        try:
                            n = os.write(fd, view)
                        except BlockingIOError:
                            select.select([], [fd], [], 0.05)
                            continue
                        except BrokenPipeError:
                            return
                        view = view[n:]
                        self.fifo_bytes_sent += n
            # the device vanishes before the reader sees EOF
            self._hangup.set()
            self._wake()
            while not self.disconnected.wait(0.05) and not self._stop.is_set():
                pass
        except Exception:
            logger.exception("recorder sim: FIFO feeder failed")
        finally:
            if fd is not None:
                os.close(fd)


_SERIAL_FUNCTIONS = {
    Command.GET_ID_CODE: "get_id_code", Command.WRITE_ZFY_INFO: "write_zfy_info",
    Command.READ_RESOLUTION: "read_resolution", Command.BATTERY: "read_battery", Command.SET_CLOCK: "sync_dev_time",
    Command.SET_MSDC: "set_msdc", Command.READ_CLOCK: "read_clock", Command.STORAGE: "storage",
}

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.recorder_sim", description="body-worn recorder simulator on a pty")
    ap.add_argument("--link", required=True, help="symlink to create for the serial port, e.g. /tmp/x/ttyREC0")
    ap.add_argument("--media", required=True, help="directory of media files the recorder holds")
    ap.add_argument("--mount", help="directory where files appear after SetMSDC (default: a temp dir)")
    ap.add_argument("--serial", default="1234567")
    ap.add_argument("--officer", default="000123", help="officer number (警号, 6)")
    ap.add_argument("--officer-name", default="张三")
    ap.add_argument("--unit", default="330100000001", help="unit number (12)")
    ap.add_argument("--unit-name", default="杭州市城市管理局")
    ap.add_argument("--password", default="000000")
    ap.add_argument("--battery", type=int, default=76)
    ap.add_argument("--not-charging", action="store_true")
    ap.add_argument("--tz", default="+0800")
    ap.add_argument("--important", action="append", default=[], help="file name marked important (repeatable)")
    ap.add_argument("--locked", action="append", default=[], help="file name locked (repeatable)")
    ap.add_argument("--garbage", action="store_true", help="fault: garbage bytes around responses")
    ap.add_argument("--silent", action="store_true", help="fault: never answer")
    ap.add_argument("--corrupt", type=int, default=0, help="fault: first N responses with a bad CRC")
    ap.add_argument("--delay", type=float, default=0.0, help="fault: seconds before each response")
    ap.add_argument("--disconnect-file", help="fault: hang up while this file is read ...")
    ap.add_argument("--disconnect-at", type=int, default=0, help="... after this many bytes")
    ap.add_argument("--flip-bit-at", type=int, help="fault: with --disconnect-file, flip bit 0 of this byte before the unplug")
    ap.add_argument("--clock-offset", type=float, default=0.0, help="fault: device clock offset, seconds")
    ap.add_argument("--clock-fixed", choices=["1970", "2099"], help="fault: device clock starts at that year")
    ap.add_argument("--no-clock-read", action="store_true", help="fault: READ_CLOCK unknown to the recorder")
    ap.add_argument("--msdc-erase-fail", action="store_true", help="fault: ERASE answers 10 in mass-storage mode")
    ap.add_argument("--msdc-drop", type=float, metavar="S",
                    help="fault: the command channel goes away after SET_MSDC and comes back S seconds later")
    ap.add_argument("--msdc-no-path", action="store_true",
                    help="SET_MSDC answers no mount path (the station finds the volume by USB serial)")
    ap.add_argument("--full", action="store_true", help="fault: storage free 0")
    ap.add_argument("--wrong-password", action="store_true", help="fault: device password differs")
    ap.add_argument("--time-sync-fail", action="store_true")
    ap.add_argument("--msdc-fail", action="store_true")
    ap.add_argument("--inject-name", action="append", default=[], help="fault: extra name in the listing")
    ap.add_argument("--list-trailing", type=bytes.fromhex, default=b"", metavar="HEX",
                    help="fault: these bytes after the records of every file-list page")
    ap.add_argument("--list-short", action="store_true", help="fault: a file-list page announces one record more")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", default="1920x1080", help="recording resolution WxH")
    ap.add_argument("--id-code", default="JL0001", help="GetIDCode answer (ASCII, up to 6)")
    ap.add_argument("--unsupported", action="append", default=[],
                    help="fault: a function the recorder does not know (e.g. read_resolution; repeatable)")
    ap.add_argument("--short-answers", action="store_true", help="fault: query answers one byte short")
    ap.add_argument("--no-sd", action="store_true", help="fault: no SD card, SetMSDC fails")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sim = RecorderSim(
        a.media, a.link, serial=a.serial, officer_number=a.officer, officer_name=a.officer_name,
        unit_number=a.unit, unit_name=a.unit_name, password=a.password, battery_level=a.battery,
        charging=not a.not_charging, mount_dir=a.mount, tz=a.tz, important=a.important, locked=a.locked,
        garbage=a.garbage, silent=a.silent, corrupt_responses=a.corrupt, response_delay=a.delay,
        disconnect_file=a.disconnect_file, disconnect_at=a.disconnect_at, flip_bit_at=a.flip_bit_at,
        clock_offset=a.clock_offset,
        clock_fixed=a.clock_fixed, no_clock_read=a.no_clock_read, msdc_drop=a.msdc_drop, msdc_erase_fail=a.msdc_erase_fail,
        msdc_no_path=a.msdc_no_path, storage_full=a.full, wrong_password=a.wrong_password,
        time_sync_fail=a.time_sync_fail, msdc_fail=a.msdc_fail, inject_names=a.inject_name,
        list_trailing=a.list_trailing, list_short=a.list_short, seed=a.seed,
        resolution=tuple(int(x) for x in a.resolution.lower().split("x", 1)), id_code=a.id_code,
        unsupported=a.unsupported, short_answers=a.short_answers, no_sd=a.no_sd,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sim.start()
    print(f"recorder sim ready: port={sim.port_path} mount={sim.mount_dir} files={len(sim.files)}", flush=True)
    while not done.wait(0.5):
        if sim.disconnected.is_set():
            print("recorder sim: disconnected (fault)", flush=True)
            break
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
