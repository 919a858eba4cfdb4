"""The recorder's mass-storage volume after SetMSDC: its files placed in the mount directory,
the disconnect fault's FIFO (a reader gets N bytes, then the recorder is unplugged), and the volume
removed when the recorder goes."""

from __future__ import annotations

import errno
import logging
import os
import select
import shutil
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


class MassStorage:
    """The volume of a :class:`tools.recorder_sim.RecorderSim` (a mix-in: the device's state is the
    simulator's own)."""

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
