"""Camera driver against real sources: a paced file, a GStreamer RTSP server, dead addresses."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from drivers.camera import Camera, CameraEvent
from tests.support.rtsp import RtspServer, make_clip, rtsp_unavailable


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {"small": make_clip(d / "small.mp4", (320, 240), seconds=30),
            "large": make_clip(d / "large.mp4", (640, 360), seconds=30),
            "short": make_clip(d / "short.mp4", (320, 240), seconds=1)}


def test_file_plays_at_real_time_pace(clips):
    cam = Camera(str(clips["small"]), name="file").start()
    try:
        assert wait_for(lambda: cam.status().frames > 0, 5)
        f0 = cam.status().frames
        t0 = time.monotonic()
        time.sleep(2.0)
        frames = cam.status().frames - f0
        rate = frames / (time.monotonic() - t0)
        st = cam.status()
        assert 22 <= rate <= 28, rate                     # 25 fps clip, paced, not decoded flat out
        assert 20 <= st.fps <= 30, st
        assert st.online and st.resolution == (320, 240) and st.last_error is None
        frame, ts, seq = cam.latest()
        assert frame.shape == (240, 320, 3)
        assert abs(time.time() - ts) < 0.5 and seq >= st.frames
        _, _, seq2 = cam.wait_frame(seq, timeout=1)
        assert seq2 > seq
        cam.latest()
        assert cam.status().repeated >= 1 and cam.status().dropped > 0
    finally:
        cam.stop()
    assert cam._thread is None


def test_file_end_and_loop(clips):
    once = Camera(str(clips["short"]), name="once").start()
    looped = Camera(str(clips["short"]), name="loop", loop=True).start()
    try:
        assert wait_for(lambda: once.status().last_error == "end of file", 5)
        assert not once.status().online and 20 <= once.status().frames <= 26
        assert wait_for(lambda: looped.status().frames > 40, 5)     # past the 25-frame clip
        assert looped.status().online and looped.status().reconnects == 0
    finally:
        once.stop()
        looped.stop()


def test_unanswering_and_refusing_urls_do_not_block(tmp_path):
    silent = socket.socket()                     # accepts TCP, never says a word
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))                # bound, not listening: connection refused
    urls = [f"rtsp://127.0.0.1:{silent.getsockname()[1]}/x",
            f"rtsp://127.0.0.1:{closed.getsockname()[1]}/x", str(tmp_path / "missing.mp4")]
    cams = []
    try:
        t0 = time.monotonic()
        cams = [Camera(u, name=f"dead{i}", open_timeout=1.5, backoff_base=0.2,
                       backoff_max=0.5).start() for i, u in enumerate(urls)]
        assert [c.latest() for c in cams] == [(None, 0.0, 0)] * 3
        assert time.monotonic() - t0 < 1.0      # well under open_timeout: start() does not wait for the open
        assert wait_for(lambda: all(c.status().last_error for c in cams), 5)
        for c in cams:
            st = c.status()
            assert not st.online and st.frames == 0 and st.fps == 0, st
        t1 = time.monotonic()
        for c in cams:
            c.stop()
        assert time.monotonic() - t1 < 5
    finally:
        for c in cams:
            c.stop()
        silent.close()
        closed.close()


def test_rtsp_drop_reconnect_and_resolution_change(clips):
    if reason := rtsp_unavailable():
        pytest.skip(reason)
    events: list[CameraEvent] = []
    lock = threading.Lock()

    def on_event(ev: CameraEvent) -> None:
        with lock:
            events.append(ev)

    srv = RtspServer(clips["small"]).start()
    cam = Camera(srv.url, name="rtsp", open_timeout=3, read_timeout=3,
                 backoff_base=0.2, backoff_max=1.0, on_event=on_event).start()
    try:
        assert wait_for(lambda: cam.status().frames > 10, 10), cam.status()
        time.sleep(1.2)
        st = cam.status()
        assert st.online and st.resolution == (320, 240) and 18 <= st.fps <= 32, st

        srv.kill()                                               # camera drops
        assert wait_for(lambda: not cam.status().online, 10), cam.status()
        frames_off = cam.status().frames
        assert cam.status().last_error
        # it tried to reopen the dead stream (and failed), and got no frame meanwhile
        assert wait_for(lambda: (cam.status().last_error or "").startswith("cannot open"), 10), cam.status()
        assert cam.status().frames == frames_off and not cam.status().online

        srv.start(clips["large"])                                # back, reconfigured to 640x360
        assert wait_for(lambda: cam.status().online and cam.status().frames > frames_off + 5,
                        10), cam.status()
        st = cam.status()
        assert st.reconnects == 1 and st.resolution == (640, 360)
        assert st.resolution_changes == 1
        frame, ts, _ = cam.latest()
        assert frame.shape == (360, 640, 3) and time.time() - ts < 1
        with lock:
            kinds = [e.kind for e in events]
            res = [e for e in events if e.kind == "resolution"]
        assert kinds[:2] == ["online", "offline"] and "online" in kinds[2:], kinds
        assert len(res) == 1 and res[0].old_resolution == (320, 240) \
            and res[0].new_resolution == (640, 360)
    finally:
        cam.stop()
        srv.kill()
