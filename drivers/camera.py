"""Interview-room cameras through OpenCV: UVC/V4L2 devices, RTSP streams, video files.

A :class:`Camera` owns one named thread that opens the source, reads frames and keeps only
the newest one with its capture wall-clock time; the compositor pulls it with
:meth:`Camera.latest`. Opening happens in that thread with OpenCV's open/read timeouts, so an
address that never answers cannot hang the room; a lost stream is reopened with exponential
backoff and jitter (capped at ``backoff_max`` seconds).

Sources:
    ``0`` or ``"/dev/video0"``       a V4L2/UVC device (``cv2.CAP_V4L2``)
    ``"rtsp://host:554/stream"``    a network camera (``cv2.CAP_FFMPEG``, open/read timeouts)
    ``"clip.mp4"``                   a file played at real-time pace (``loop=True`` to repeat)

Resolution changes: OpenCV's FFmpeg backend rescales an in-session size change to the size
the session opened with, so a camera that is reconfigured shows up when it restarts its
stream (IP cameras do) or when the device is reopened. The change is counted in
:attr:`CameraStatus.resolution_changes`, reported as a ``"resolution"`` :class:`CameraEvent`,
and frames keep flowing at the new size.

    cam = Camera("rtsp://10.0.0.7/main", name="main", on_event=print).start()
    frame, ts, seq = cam.latest()      # (None, 0.0, 0) until the first frame
    cam.status().online
    cam.stop()
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass(frozen=True)
class CameraStatus:
    """A snapshot of a camera's health, for the room status and health publishing."""

    name: str
    source: str
    online: bool
    fps: float                       # frames received during the last second
    frames: int                      # frames received since start
    dropped: int                     # frames replaced before anyone called latest()
    repeated: int                    # latest() calls that returned the same frame again
    resolution: tuple[int, int] | None   # (width, height) of the newest frame
    resolution_changes: int
    reconnects: int                  # successful opens after the first one
    last_error: str | None


@dataclass(frozen=True)
class CameraEvent:
    """Something a consumer may react to: ``online``, ``offline`` or ``resolution``."""

    camera: str
    kind: str
    ts: float
    detail: str = ""
    old_resolution: tuple[int, int] | None = None
    new_resolution: tuple[int, int] | None = None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt)."""
    d = min(cap, base * (2 ** min(attempt, 16)))
    return random.uniform(d / 2, d)


class Camera:
    """One camera source read by its own thread; always holds the newest frame.

    ``latest()`` never blocks on the device. When the camera goes offline the last frame is
    kept with its old timestamp: compare ``ts`` with the clock or check ``status().online``.
    ``on_event`` is called from the camera thread; it must be quick and must not raise.
    """

    def __init__(self, source: str | int, *, name: str = "camera", loop: bool = False,
                 open_timeout: float = 5.0, read_timeout: float = 5.0,
                 backoff_base: float = 0.5, backoff_max: float = 5.0,
                 size: tuple[int, int] | None = None, fps: float | None = None,
                 on_event: Callable[[CameraEvent], None] | None = None) -> None:
        self.source = source
        self.name = name
        self.loop = loop
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.size = size                  # requested capture size (V4L2 only)
        self.fps = fps                    # requested fps (V4L2) / pace override (files)
        self.on_event = on_event
        self.kind = self._kind(source)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._frame: np.ndarray | None = None
        self._ts = 0.0
        self._seq = 0
        self._last_returned = 0              # seq handed out by the last latest() call
        self._frame_times: deque[float] = deque(maxlen=512)
        self._online = False
        self._dropped = 0
        self._repeated = 0
        self._resolution: tuple[int, int] | None = None
        self._resolution_changes = 0
        self._opens = 0
        self._last_error: str | None = None

    @staticmethod
    def _kind(source: str | int) -> str:
        if isinstance(source, int) or str(source).startswith("/dev/video"):
            return "device"
        if str(source).lower().startswith(NETWORK_SCHEMES):
            return "network"
        return "file"

    # -- public API ---------------------------------------------------------------------
    def start(self) -> Camera:
        """Start the capture thread (returns at once; opening happens in the thread)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop and join the thread (bounded by the open/read timeouts)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None
                              else self.open_timeout + self.read_timeout + 2.0)
            if self._thread.is_alive():
                log.warning("camera %s: thread did not stop in time", self.name)
            self._thread = None

    def __enter__(self) -> Camera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def latest(self) -> tuple[np.ndarray | None, float, int]:
        """The newest frame (BGR), its capture wall-clock time and its sequence number."""
        with self._lock:
            if self._seq and self._seq == self._last_returned:
                self._repeated += 1
            self._last_returned = self._seq
            return self._frame, self._ts, self._seq

    def wait_frame(self, after_seq: int = 0, timeout: float = 5.0
                   ) -> tuple[np.ndarray | None, float, int]:
        """Wait until a frame newer than ``after_seq`` exists, then return ``latest()``."""
        deadline = time.monotonic() + timeout
        while self._seq <= after_seq and time.monotonic() < deadline:
            if self._stop.wait(0.005):
                break
        return self.latest()

    def status(self) -> CameraStatus:
        """A consistent snapshot of counters and state."""
        now = time.time()
        with self._lock:
            fps = float(sum(1 for t in self._frame_times if now - t <= 1.0))
            return CameraStatus(
                name=self.name, source=str(self.source), online=self._online, fps=fps,
                frames=self._seq, dropped=self._dropped, repeated=self._repeated,
                resolution=self._resolution, resolution_changes=self._resolution_changes,
                reconnects=max(0, self._opens - 1), last_error=self._last_error)

    # -- thread -------------------------------------------------------------------------
    def _emit(self, kind: str, detail: str = "", old: tuple[int, int] | None = None,
              new: tuple[int, int] | None = None) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(CameraEvent(self.name, kind, time.time(), detail, old, new))
        except Exception:
            log.exception("camera %s: event callback failed", self.name)

    def _set_offline(self, error: str) -> None:
        with self._lock:
            was_online, self._online, self._last_error = self._online, False, error
        if was_online:
            log.warning("camera %s offline: %s", self.name, error)
            self._emit("offline", error)

    def _open(self) -> cv2.VideoCapture | None:
        src = self.source
        if self.kind == "device":
            cap = cv2.VideoCapture(src if isinstance(src, int) else str(src), cv2.CAP_V4L2)
            if cap.isOpened():
                if self.size:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
                if self.fps:
                    cap.set(cv2.CAP_PROP_FPS, self.fps)
        elif self.kind == "network":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout * 1000)]
            cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG, params)
        else:
            if not Path(str(src)).is_file():
                self._set_offline(f"no such file: {src}")
                return None
            cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            self._set_offline(f"cannot open {src}")
            return None
        return cap

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                self._stop.wait(backoff_delay(attempt, self.backoff_base, self.backoff_max))
                attempt += 1
                continue
            with self._lock:
                self._opens += 1
                self._online, self._last_error = True, None
            log.info("camera %s online (%s)", self.name, self.source)
            self._emit("online")
            try:
                error, got_frames = self._read_loop(cap)
            except Exception as exc:     # a driver must never take the room down
                log.exception("camera %s: read loop failed", self.name)
                error, got_frames = f"capture error: {exc}", False
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if error == "end of file":
                self._set_offline(error)
                break
            self._set_offline(error)
            attempt = 0 if got_frames else attempt + 1
            self._stop.wait(backoff_delay(attempt, self.backoff_base, self.backoff_max))
        with self._lock:
            self._online = False

    def _read_loop(self, cap: cv2.VideoCapture) -> tuple[str, bool]:
        """Read until failure or stop; returns (reason, whether any frame arrived)."""
        paced = self.kind == "file"
        interval = 0.0
        if paced:
            fps = self.fps or cap.get(cv2.CAP_PROP_FPS)
            interval = 1.0 / fps if fps and 0 < fps < 1000 else 1.0 / 25
        t0 = time.monotonic()
        n = total = since_rewind = 0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if (not ok or frame is None) and paced and self.loop and since_rewind:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)      # loop: rewind, keep the pace
                since_rewind = 0
                ok, frame = cap.read()
            if not ok or frame is None:
                return ("end of file" if paced else "stream lost or read timeout"), total > 0
            if paced:
                due = t0 + n * interval
                delay = due - time.monotonic()
                if delay > 0:
                    if self._stop.wait(delay):
                        break
                elif delay < -1.0:           # fell far behind: restart the schedule
                    t0, n = time.monotonic(), 0
            n += 1
            total += 1
            since_rewind += 1
            self._publish(frame)
        return "stopped", total > 0

    def _publish(self, frame: np.ndarray) -> None:
        ts = time.time()
        res = (int(frame.shape[1]), int(frame.shape[0]))
        old = None
        with self._lock:
            if self._seq and self._last_returned != self._seq:
                self._dropped += 1
            if self._resolution is not None and res != self._resolution:
                old = self._resolution
                self._resolution_changes += 1
            self._resolution = res
            self._frame, self._ts = frame, ts
            self._seq += 1
            self._frame_times.append(ts)
        if old is not None:
            log.warning("camera %s resolution changed %sx%s -> %sx%s", self.name, *old, *res)
            self._emit("resolution", f"{old[0]}x{old[1]} -> {res[0]}x{res[1]}", old, res)
