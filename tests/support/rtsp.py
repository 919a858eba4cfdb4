"""A real RTSP camera for tests: GStreamer's RTSP server run by the system Python.

    clip = make_clip(tmp_path / "a.mp4", (320, 240), seconds=30)
    with RtspServer(clip) as srv:                 # free 127.0.0.1 port, waits for "ready"
        cv2.VideoCapture(srv.url, cv2.CAP_FFMPEG)
        srv.kill()                                # the camera drops (SIGKILL, no teardown)
        srv.start(other_clip)                     # same port and path, maybe another clip

``rtsp_unavailable()`` returns a reason string when gi / the RTSP server typelib is missing
(tests then skip), or None.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "tools" / "rtsp_serve.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtsp_unavailable() -> str | None:
    """Why an RTSP server cannot run here, or None when it can."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst','1.0'); "
             "gi.require_version('GstRtspServer','1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in "
             "('filesrc','qtdemux','h264parse','rtph264pay'))")
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True)
    if r.returncode:
        return "GStreamer RTSP server (python3-gi, gir1.2-gst-rtsp-server-1.0) unavailable: " \
            + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


def make_clip(path: Path, size: tuple[int, int] = (320, 240), seconds: float = 10,
              fps: int = 25) -> Path:
    """An H.264 test pattern clip (mp4 or ts by suffix), keyframe every second."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg not installed")
    path = Path(path)
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi",
           "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={fps}", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps),
           "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return path


class RtspServer:
    """One ``tools/rtsp_serve.py`` process serving ``clip`` at ``rtsp://127.0.0.1:PORT/PATH``."""

    def __init__(self, clip: Path, port: int | None = None, path: str = "/cam1") -> None:
        self.clip = Path(clip)
        self.port = port or free_port()
        self.path = path
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, clip: Path | None = None, timeout: float = 10.0) -> RtspServer:
        if clip is not None:
            self.clip = Path(clip)
        deadline = time.monotonic() + timeout
        while True:                        # the old socket may linger a moment after a kill
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVE), str(self.port), self.path, str(self.clip)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert self.proc.stdout is not None
            out = []
            for line in self.proc.stdout:        # until "ready", or EOF when it failed
                if line.strip() == "ready":
                    return self
                out.append(line)
            self.proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"rtsp server did not start: {''.join(out)[-500:]!r}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server (a camera losing power); waits for the process to end."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
