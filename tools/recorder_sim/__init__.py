"""Body-worn recorder simulator: speaks the recorder command protocol on a pty and
serves a directory of real media files, with fault injection.

The package: this module is the device (``RecorderSim``: its state, clock, files, lifecycle);
``channel.py`` the command protocol on the pty (``SerialChannel``), ``volume.py`` the mass-storage
volume after SetMSDC (``MassStorage``), ``scsi.py`` the SCSI generic device (``SimSgDevice``),
``__main__.py`` the command line.

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

import datetime as _dt
import logging
import os
import random
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from drivers.recorder.mass_storage import scan_mass_storage
from drivers.recorder.protocol import FrameDecoder, Result
from drivers.recorder.zfy import FileRecord, FileType, Mark, ZfyInfo

from .channel import PASSWORD_LEN, SerialChannel
from .volume import MassStorage

if TYPE_CHECKING:
    from .scsi import SimSgDevice

logger = logging.getLogger(__name__)


def parse_tz(text: str) -> _dt.timezone:
    """"+0800" -> timezone(+8h)."""
    if len(text) != 5 or text[0] not in "+-" or not text[1:].isdigit():
        raise ValueError(f"time zone must look like +0800, got {text!r}")
    delta = _dt.timedelta(hours=int(text[1:3]), minutes=int(text[3:5]))
    return _dt.timezone(-delta if text[0] == "-" else delta)


class RecorderSim(SerialChannel, MassStorage):
    """One recorder, served on a pty (:class:`SerialChannel`) and, after SetMSDC, as a volume
    (:class:`MassStorage`); ``sg_device()`` is the same device at the SG_IO seam."""

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

    def sg_device(self, path: str = "/dev/sg-sim", **faults) -> SimSgDevice:
        """A simulated SCSI generic device on this recorder (the SG_IO seam)."""
        from .scsi import SimSgDevice

        return SimSgDevice(self, path, **faults)

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
