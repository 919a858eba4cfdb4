"""One interview-room recording session (同步录音录像): capture, overlay, segments, sealing.

A session starts only with the mandatory fields (案件编号 case number, 采集人 collector and
执法证 certificate number, 证明对象 proof; 被询问人 subject optional) and then records without
interruption until it is stopped: there is no pause and no way to cut or edit.

Threads (sharing one stop event):

* ``room-capture`` ticks at the configured fps. Each tick takes the newest frame of each
  camera (a late camera's last frame is repeated; a camera with no frame for
  ``room.camera_lost_s`` is drawn as "信号中断 SIGNAL LOST" with the time), composes PiP / side
  by side, blends the overlay (rendered once per second) and feeds the segmenter, together
  with the microphone's samples (silence while it is lost). A tick that is more than a frame
  late repeats the previous picture so that the media timeline stays in step with the clock.
* ``room-sealer`` seals each closed segment as its own item at once (priority 1, so it is
  uploaded first): ``Store.new_item(... session={id, index, prev_item_hash, final})``, the
  segment and its timestamp sidecar moved in by rename, the gaps that touch the segment
  (:func:`agent.room.sealing.seal_segment`).

Gaps (camera / microphone / sensor loss, agent interruptions) are recorded with start and end
in the manifest of every segment they touch (agent/room/gaps.py), and raise / clear an alarm
(agent/room/alarms.py).

Crash safety: ``data_dir/room/session.json`` holds the session; every segment is a durable
file before it is sealed (agent/room/state.py). After a kill -9
:func:`agent.room.sealing.recover_unsealed` seals every segment left
on disk (a ``.part`` cut by the crash is sealed as well - MPEG-TS plays up to its last
packet) in order, and the session resumes with the interruption recorded as a gap.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.common.timeutil import iso
from .alarms import DEVICE_ALARMS, Alarms
from .devices import AUDIO_RATE, SensorPoller, open_camera, open_microphone
from .gaps import REASONS, GapLog
from .sealing import seal_segment
from .state import RoomSettings, SessionState, camera_names

log = logging.getLogger(__name__)

SILENCE_ALARM_S = 30        # a microphone that gives only silence this long raises microphone_silent


def _now() -> dt.datetime:
    """Wall time with microseconds: frame times and gap edges compare exactly."""
    return dt.datetime.now().astimezone()


@dataclasses.dataclass
class _Job:
    info: Any                    # SegmentInfo (or a recovered stand-in)
    closed_at: float             # monotonic time the segment closed
    final: bool = False


class RoomSession:
    """A running recording. ``start()`` returns once capture runs; ``stop()`` ends it for good
    (final segment sealed); ``suspend()`` is the agent's clean shutdown (the session resumes on
    the next start, the pause recorded as a gap)."""

    def __init__(self, settings: RoomSettings, store, state: SessionState, state_path: Path,
                 alarms: Alarms | None = None, on_end: Callable[["RoomSession"], None] | None = None,
                 font_path: str | None = None) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.state_path = state_path
        self.alarms = alarms or Alarms()
        self.on_end = on_end
        self.font_path = font_path
        self.dir = state_path.parent / "sessions" / state.id
        self.gaps = GapLog()
        self._stop = threading.Event()
        self._state_lock = threading.Lock()
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closing: list[Any] | None = None
        self._capture: threading.Thread | None = None
        self._sealer: threading.Thread | None = None
        self.cameras: list[Any] = []
        self.mic = None
        self.sensor: SensorPoller | None = None
        self.segmenter = None
        self.end_reason: str | None = None
        self.final_on_stop = True
        self.error: str | None = None
        # stats
        self.frames = 0
        self.repeated = 0           # ticks that repeated the last picture (capture late)
        self.dropped = 0            # frame times skipped when the box stalled (> 5 s, a "capture" gap)
        self.placeholder_frames = 0
        self.fps_measured = 0.0
        self.loop_lag_ms = 0.0
        self.seal_latency: collections.deque[float] = collections.deque(maxlen=1000)
        self.seal_errors = 0
        self.last_sealed: str | None = None
        self._lost: dict[str, bool] = {}
        self._audio_sent = 0
        self._quiet_s = 0
        self.audio_discarded = 0    # samples dropped to re-align audio after a capture stall
        self._started_mono: float | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        from .compose import ComposeConfig, Compositor
        from .overlay import OverlayInfo, OverlayLayout, OverlayRenderer
        from .segmenter import Segmenter

        s = self.settings
        self.dir.mkdir(parents=True, exist_ok=True)
        mode = {"pip": "pip", "side": "side_by_side", "single": "single"}[s.layout]
        self.compositor = Compositor(ComposeConfig(mode=mode, width=s.width, height=s.height,
                                                   inset_corner=s.inset_corner,
                                                   inset_fraction=s.inset_percent / 100))
        self.overlay = OverlayRenderer(OverlayLayout(corner=s.overlay_corner, lines=tuple(s.overlay_lines),
                                                     font_scale=s.overlay_scale / 100, font_path=self.font_path))
        st = self.state
        self.info = OverlayInfo(case_number=st.case_number, room_name=s.name, collector_name=st.collector_name,
                                collector_cert=st.collector_id)
        self.segmenter = Segmenter(self.dir, fps=s.fps, size=(s.width, s.height), segment_seconds=s.segment_seconds,
                                   audio_rate=AUDIO_RATE, on_segment=self._on_segment, name_prefix="seg",
                                   preset=s.preset, crf=s.crf)
        try:
            names = camera_names(len(s.cameras))
            for src, name in zip(s.cameras, names):
                self.cameras.append(open_camera(src, name).start())
            self.mic = open_microphone(s.microphone)
            if self.mic is not None:
                self.mic.start()
            if s.sensor_port:
                self.sensor = SensorPoller(s.sensor_port, s.sensor_slave, s.sensor_baudrate).start()
            # give the devices a moment to open (a camera's first frame, the input device), so
            # that a slow start is not recorded as a loss; a dead one is, from the first frame
            deadline = time.monotonic() + 3.0
            for cam in self.cameras:
                cam.wait_frame(0, timeout=max(0.0, deadline - time.monotonic()))
            while self.mic is not None and not self.mic.status().online and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:
            self._release_devices()
            raise
        self._started_mono = time.monotonic()
        self._sealer = threading.Thread(target=self._seal_loop, name="room-sealer", daemon=True)
        self._sealer.start()
        self._capture = threading.Thread(target=self._capture_loop, name="room-capture", daemon=True)
        self._capture.start()
        log.info("room session %s recording (case %s)", st.id, st.case_number)

    def stop(self, reason: str = "stopped by operator", final: bool = True, timeout: float = 60.0) -> None:
        """End capture, close the last segment, seal everything; returns when sealed."""
        if self.end_reason is None:
            self.end_reason = reason
            self.final_on_stop = final
        self._stop.set()
        if self._capture and self._capture is not threading.current_thread():
            self._capture.join(timeout)
        if self._sealer and self._sealer is not threading.current_thread():
            self._sealer.join(timeout)

    def suspend(self) -> None:
        """The agent is stopping: seal what is recorded, keep the session for the next start."""
        self.stop(reason="agent stopped", final=False)

    @property
    def running(self) -> bool:
        return self._capture is not None and self._capture.is_alive()

    # -- capture ---------------------------------------------------------------------------
    def _camera_frames(self, now_epoch: float, wall: dt.datetime) -> list[np.ndarray | None]:
        out = []
        lost_s = self.settings.camera_lost_s
        for cam in self.cameras:
            frame, ts, _seq = cam.latest()
            lost = frame is None or now_epoch - ts > lost_s
            if lost != self._lost.get(cam.name, False):
                self._lost[cam.name] = lost
                comp = f"camera-{cam.name}"
                if lost:
                    err = cam.status().last_error or "no frame"
                    self.gaps.open(comp, f"{REASONS['camera']}: {cam.name} ({err})", wall)
                    self.alarms.raise_("camera_offline", f"摄像机 {cam.name} 信号中断", f"camera {cam.name} signal lost: {err}",
                                       instance=comp)
                else:
                    self.gaps.close(comp, wall)
                    self.alarms.clear("camera_offline", instance=comp)
            out.append(None if lost else frame)
        return out

    def _compose(self, wall: dt.datetime, now_epoch: float) -> np.ndarray:
        frames = self._camera_frames(now_epoch, wall)
        main = frames[0] if frames else None
        pano = frames[1] if len(frames) > 1 else None
        if any(f is None for f in frames) or not frames:
            self.placeholder_frames += 1
        picture = self.compositor.compose(main, pano, wall)
        if picture is main:            # single-camera passthrough: never draw on the camera's buffer
            picture = picture.copy()
        return self.overlay.apply(picture, self.info, wall)

    def _pump_audio(self) -> None:
        seg = self.segmenter
        due = self.frames * AUDIO_RATE // self.settings.fps
        if self.mic is None:
            n = due - self._audio_sent
            if n > 0:
                seg.write_audio(np.zeros(n, np.int16))
                self._audio_sent += n
            return
        n = self.mic.available()
        ahead = self._audio_sent + n - due
        if ahead > AUDIO_RATE // 2:
            # video lost time (a capture stall, recorded as a gap): drop the audio of that time
            # so that sound and picture stay in sync for the rest of the session
            drop = ahead - AUDIO_RATE // 10
            self.mic.read(drop, timeout=0.05)
            self.audio_discarded += drop
            n -= drop
        if n > 0:
            pcm = self.mic.read(n, timeout=0.05)
            seg.write_audio(pcm if pcm.ndim == 1 else pcm[:, 0].copy())
            self._audio_sent += n

    def _housekeeping(self, wall: dt.datetime) -> None:
        """Once a second: microphone and sensor gaps, overlay readings, disk, state file."""
        if self.mic is not None:
            ms = self.mic.status()
            if ms.online and ms.level_dbfs < self.mic.silence_dbfs:
                self._quiet_s += 1
                if self._quiet_s >= SILENCE_ALARM_S:
                    self.alarms.raise_("microphone_silent", f"麦克风持续无声 {self._quiet_s} 秒",
                                       f"microphone silent for {self._quiet_s} s (level {ms.level_dbfs} dBFS)",
                                       instance="microphone-level")
            else:
                if self._quiet_s >= SILENCE_ALARM_S:
                    self.alarms.clear("microphone_silent", instance="microphone-level")
                self._quiet_s = 0
            if not ms.online and self.gaps.open("microphone", f"{REASONS['microphone']} ({ms.last_error or 'no device'})", wall):
                self.alarms.raise_("microphone_silent", "麦克风中断，以静音录制", f"microphone lost, silence recorded: "
                                   f"{ms.last_error or 'no device'}", instance="microphone")
            elif ms.online and self.gaps.close("microphone", wall):
                self.alarms.clear("microphone_silent", instance="microphone")
        if self.sensor is not None:
            t, h = self.sensor.latest()
            self.info.temperature_c, self.info.humidity_pct = t, h
            failing = t is None and self.sensor.sensor.status().errors > 0   # not before its first answer is due
            if failing and self.gaps.open("sensor", f"{REASONS['sensor']} ({self.sensor.last_error or 'no data'})", wall):
                self.alarms.raise_("sensor_silent", "温湿度传感器无数据", f"sensor not answering: {self.sensor.last_error}",
                                   instance="sensor")
            elif not failing and self.gaps.close("sensor", wall):
                self.alarms.clear("sensor_silent", instance="sensor")
        # the disk: stop cleanly while there is still room to close and seal what is recorded
        st = self.store
        last = self.segmenter.segments[-1].size if self.segmenter.segments else 0
        need = max(2 * last, 8 << 20)
        free = st.free()
        if free - need < st.reserve:
            zh, en = "磁盘空间不足，录制已停止（已录内容已保存）", (
                f"disk full: recording stopped, everything recorded is kept ({free >> 20} MiB free, "
                f"reserve {st.reserve >> 20} MiB)")
            self.error = f"{zh} / {en}"
            self.alarms.raise_("disk_low", zh, en, instance="room")
            self.end_reason = "disk full"
            self._stop.set()
        with self._state_lock:
            self.state.last_media = iso(wall)
            self._save_state()

    def _capture_loop(self) -> None:
        s = self.settings
        period = 1.0 / s.fps
        seg = self.segmenter
        t0 = time.monotonic()
        n = 0
        last_picture: np.ndarray | None = None
        repeated_last = False
        next_house = 0.0
        house_at: float | None = None
        house_frames = 0
        fps_frames = self.settings.fps * s.segment_seconds
        try:
            while not self._stop.is_set():
                due = t0 + n * period
                now = time.monotonic()
                if now < due:
                    if self._stop.wait(due - now):
                        break
                    now = time.monotonic()
                late = now - due
                self.loop_lag_ms = late * 1000
                wall = _now()
                if late > 5.0:       # the machine stalled: restart the schedule, record it
                    self.dropped += int(late * s.fps)
                    since = wall - dt.timedelta(seconds=late)
                    self.gaps.open("capture", REASONS["stall"], since)
                    self.gaps.close("capture", wall)
                    t0, n = now, 0
                    continue
                if self.frames % fps_frames == 0:     # a segment opens: remember when (crash recovery)
                    with self._state_lock:
                        self.state.segment_starts = {str(seg._base_index + self.frames // fps_frames): iso(wall)}
                        self.state.last_media = iso(wall)
                        self._save_state()
                if late > period and last_picture is not None and not repeated_last:
                    picture = last_picture         # catch up, but never two repeats in a row: the
                    self.repeated += 1             # picture must not freeze when the box is slow
                    repeated_last = True
                else:
                    picture = self._compose(wall, time.time())
                    last_picture = picture
                    repeated_last = False
                seg.write_video(picture, wall)
                self.frames += 1
                n += 1
                self._pump_audio()
                if now >= next_house:
                    if house_at is not None:
                        self.fps_measured = round((self.frames - house_frames) / (now - house_at), 1)
                    house_at, house_frames = now, self.frames
                    next_house = now + 1.0
                    self._housekeeping(wall)
        except OSError as exc:
            self.error = f"录制写入失败 / recording write failed: {exc}"
            self.end_reason = "write failed"
            log.exception("room capture failed")
            self.alarms.raise_("room_write_failed", "录制写入失败", f"recording write failed: {exc}")
        except Exception as exc:
            self.error = f"录制异常 / recording failed: {exc}"
            self.end_reason = "capture failed"
            log.exception("room capture failed")
            self.alarms.raise_("room_capture_failed", "录制异常", f"recording failed: {exc}")
        finally:
            self._finish()

    def _release_devices(self) -> None:
        for cam in self.cameras:
            try:
                cam.stop(timeout=3)
            except Exception:
                log.exception("stopping camera failed")
        for dev in (self.mic, self.sensor):
            if dev is not None:
                try:
                    dev.stop()
                except Exception:
                    log.exception("stopping %s failed", dev)

    def _finish(self) -> None:
        self._release_devices()
        self.alarms.reset(DEVICE_ALARMS)     # the devices are no longer in use; the gaps stay recorded
        self._closing = []
        try:
            self.segmenter.close()
        except Exception:
            log.exception("closing the last segment failed; it stays on disk and is sealed on recovery")
        closing, self._closing = self._closing, None
        for i, info in enumerate(closing):
            final = self.final_on_stop and i == len(closing) - 1 and self.end_reason != "write failed"
            self._jobs.put(_Job(info, time.monotonic(), final=final))
        self._jobs.put(None)
        self._sealer.join()
        with self._state_lock:
            if self.final_on_stop:
                self.state.state = "stopped"
                self.state.stopped = iso(_now())
                self.state.stop_reason = self.end_reason
            else:
                self.state.suspended = iso(_now())
            try:
                self._save_state()
            except OSError as exc:     # a full disk: the next start seals what is left
                log.error("cannot save the room session state: %s", exc)
        log.info("room session %s %s (%s): %d segments sealed", self.state.id,
                 "ended" if self.final_on_stop else "suspended", self.end_reason, self.state.segments_sealed)
        if self.on_end:
            try:
                self.on_end(self)
            except Exception:
                log.exception("session end callback failed")

    def _on_segment(self, info) -> None:
        if self._closing is not None:
            self._closing.append(info)
        else:
            self._jobs.put(_Job(info, time.monotonic()))

    # -- sealing ---------------------------------------------------------------------------
    def _seal_loop(self) -> None:
        broken = False
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if broken:          # keep order: after a failure, later segments wait on disk for recovery
                continue
            try:
                seal_segment(self.store, self.state, self.settings, job.info, self.gaps, final=job.final,
                             lock=self._state_lock, save=self._save_state)
                self.seal_latency.append(time.monotonic() - job.closed_at)
                self.last_sealed = iso(_now())
            except Exception as exc:
                broken = True
                self.seal_errors += 1
                self.error = f"分段封存失败（文件保留在磁盘）/ sealing a segment failed, files kept on disk: {exc}"
                log.exception("sealing %s failed", job.info.path)
                self.alarms.raise_("room_seal_failed", "分段封存失败（文件保留在磁盘）",
                                   f"sealing a segment failed, files kept on disk: {exc}")
                if self.end_reason is None:
                    self.end_reason = "seal failed"
                self._stop.set()

    def _save_state(self) -> None:
        self.state.save(self.state_path)

    # -- status ----------------------------------------------------------------------------
    def status(self) -> dict:
        st = self.state
        lat = sorted(self.seal_latency)
        enc = self.segmenter.stats if self.segmenter else None
        cams = []
        for cam in self.cameras:
            cs = cam.status()
            cams.append({"name": cs.name, "source": cs.source, "online": cs.online and not self._lost.get(cs.name),
                         "fps": cs.fps, "frames": cs.frames, "dropped": cs.dropped, "repeated": cs.repeated,
                         "resolution": f"{cs.resolution[0]}x{cs.resolution[1]}" if cs.resolution else None,
                         "resolution_changes": cs.resolution_changes, "reconnects": cs.reconnects,
                         "last_error": cs.last_error})
        audio: dict[str, Any] = {"source": self.settings.microphone}
        if self.mic is not None:  # read-only: the silence counter is kept by _housekeeping, once a second
            ms = self.mic.status()
            audio.update(online=ms.online, device=ms.device, level_dbfs=ms.level_dbfs, silent=ms.silent,
                         filled_samples=ms.filled, last_error=ms.last_error)
        else:
            audio.update(online=False, level_dbfs=-120.0, silent=True)
        sensor = self.sensor.status() if self.sensor is not None else None
        elapsed = int(time.monotonic() - self._started_mono) if self._started_mono is not None else 0
        parts = {f"camera-{c['name']}": {"state": "ok" if c["online"] else "offline", **c} for c in cams}
        parts["microphone"] = {"state": "ok" if audio.get("online") else
                               ("stopped" if self.settings.microphone == "none" else "offline"), **audio}
        if sensor is not None:
            parts["sensor"] = {"state": "ok" if sensor["ok"] else "offline", **sensor}
        return {
            "components": parts,
            "state": "recording" if self.running else ("stopped" if st.state == "stopped" else "ending"),
            "session": st.id, "case_number": st.case_number, "collector": {"name": st.collector_name, "id": st.collector_id},
            "proof": st.proof, "subject": st.subject, "room": st.room, "started": st.started,
            "elapsed_s": elapsed, "segments_sealed": st.segments_sealed, "next_index": st.next_index,
            "fps": self.fps_measured, "frames": self.frames, "repeated_frames": self.repeated,
            "dropped_frames": self.dropped,
            "placeholder_frames": self.placeholder_frames, "loop_lag_ms": round(self.loop_lag_ms, 1),
            "audio_discarded_samples": self.audio_discarded,
            "encoder_ms": {"mean": round(enc.mean_ms, 2), "p95": round(enc.p95_ms, 2), "max": round(enc.max_ms, 2)} if enc else None,
            "cameras": cams, "audio": audio, "sensor": sensor, "gaps_open": self.gaps.active(),
            "interruptions": st.interruptions,
            "seal_latency_ms": {"n": len(lat), "p50": round(_pct(lat, 50) * 1000, 1) if lat else None,
                                "p99": round(_pct(lat, 99) * 1000, 1) if lat else None},
            "alarms": self.alarms.snapshot(), "error": self.error, "end_reason": self.end_reason,
        }


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]
