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
  segment and its timestamp sidecar moved in by rename, the gaps that touch the segment.

Gaps (camera / microphone / sensor loss, agent interruptions) are recorded with start and end
in the manifest of every segment they touch, and raise / clear an alarm.

Crash safety: ``data_dir/room/session.json`` holds the session; every segment is a durable
file before it is sealed. After a kill -9 :func:`recover_unsealed` seals every segment left
on disk (a ``.part`` cut by the crash is sealed as well - MPEG-TS plays up to its last
packet) in order, and the session resumes with the interruption recorded as a gap.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import os
import queue
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agent.common.errors import EdgeError, MetadataError
from ..evidence import manifest as mf
from agent.common.faults import crashpoint
from agent.common.fs import atomic_write
from agent.common.timeutil import iso

log = logging.getLogger(__name__)

STATE_FILE = "session.json"
SEGMENT_RE = re.compile(r"^seg_(\d{6})\.ts(\.part)?$")
AUDIO_RATE = 48000
#: alarms about the room's devices, cleared when the session ends (failures stay until the next start)
DEVICE_ALARMS = ("camera_offline", "microphone_silent", "sensor_silent")
SILENCE_ALARM_S = 30        # a microphone that gives only silence this long raises microphone_silent

#: what the gap reasons say (bilingual, as an officer and a judge read them)
REASONS = {
    "camera": "信号中断 / camera signal lost",
    "microphone": "音频中断（以静音填充）/ microphone lost, silence recorded",
    "sensor": "温湿度传感器无数据 / temperature-humidity sensor not answering",
    "crash": "录制中断：程序异常终止或断电 / recording interrupted: agent killed or power lost",
    "stopped": "录制中断：程序被停止 / recording interrupted: agent stopped",
    "stall": "采集停顿 / capture stalled",
}


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone()


def _iso(ts: dt.datetime) -> str:
    return iso(ts.replace(microsecond=0))


# ---------------------------------------------------------------------------------- request
@dataclasses.dataclass(frozen=True)
class SessionRequest:
    """The mandatory fields, checked before anything starts."""

    case_number: str
    collector_name: str
    collector_id: str
    proof: str
    subject: str | None = None

    FIELDS = (("case_number", "case", "案件编号 / case number", "--case"),
              ("collector_name", "collector", "采集人 / collector", "--collector"),
              ("collector_id", "collector_id", "执法证编号 / collector certificate id", "--collector-id"),
              ("proof", "proof", "证明对象 / what the recording proves", "--proof"))

    @classmethod
    def from_args(cls, args: dict) -> "SessionRequest":
        """From a command's arguments (``case``, ``collector``, ``collector_id``, ``proof``,
        ``subject``); a missing or malformed field is a :class:`MetadataError` naming it."""
        if not isinstance(args, dict):
            raise MetadataError("参数必须是对象 / arguments must be an object")
        values: dict[str, str] = {}
        missing = []
        for attr, key, label, opt in cls.FIELDS:
            v = args.get(key)
            if v is None or (isinstance(v, str) and not v.strip()):
                missing.append(f"{label} ({opt})")
                continue
            if not isinstance(v, str):
                raise MetadataError(f"{label}: 须为文本 / must be text, got {type(v).__name__}")
            values[attr] = v.strip()
        if missing:
            raise MetadataError("缺少必填项，未开始录制 / not started, mandatory field missing: " + "; ".join(missing))
        subject = args.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise MetadataError("被询问人 / subject: 须为文本 / must be text")
        subject = subject.strip() if subject else None
        # the same rules the manifest enforces, now, before a frame is recorded
        probe = {"case_number": values["case_number"], "collector": {"name": values["collector_name"],
                 "id": values["collector_id"]}, "proof": values["proof"], "place": "-",
                 "capture_start": "2000-01-01T00:00:00+00:00", "capture_end": "2000-01-01T00:00:00+00:00"}
        try:
            mf.validate_metadata(probe)
            if subject:
                mf._text("subject", subject, 64)
        except MetadataError as exc:
            raise MetadataError(f"字段无效，未开始录制 / not started: {exc}") from None
        return cls(subject=subject, **values)


# ---------------------------------------------------------------------------------- state
@dataclasses.dataclass
class SessionState:
    """What survives a crash (``data_dir/room/session.json``, written atomically)."""

    id: str
    case_number: str
    collector_name: str
    collector_id: str
    proof: str
    subject: str | None
    room: str
    cameras: list[str]
    started: str
    state: str = "recording"            # recording | stopped
    next_index: int = 0
    prev_item_hash: str | None = None
    last_media: str | None = None       # wall time of the last frame known to be on disk
    segment_starts: dict[str, str] = dataclasses.field(default_factory=dict)  # file index -> first frame time
    interruptions: list[dict] = dataclasses.field(default_factory=list)
    suspended: str | None = None        # "stopped" after a clean agent stop, else None
    stopped: str | None = None
    stop_reason: str | None = None
    segments_sealed: int = 0

    @property
    def request(self) -> SessionRequest:
        return SessionRequest(self.case_number, self.collector_name, self.collector_id, self.proof, self.subject)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(dataclasses.asdict(self), ensure_ascii=False, indent=1).encode(), mode=0o640)

    @classmethod
    def load(cls, path: Path) -> "SessionState | None":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise EdgeError(f"{path}: 会话状态无法读取 / session state unreadable: {exc}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# ---------------------------------------------------------------------------------- gaps
@dataclasses.dataclass
class Gap:
    component: str
    reason: str
    start: dt.datetime
    end: dt.datetime | None = None


class GapLog:
    """Open and closed gaps; each segment gets the part of every gap that touches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, Gap] = {}
        self._closed: list[Gap] = []
        self._carry: list[dict] = []     # attached whole to the next sealed segment (interruptions)

    def open(self, component: str, reason: str, at: dt.datetime) -> bool:
        with self._lock:
            if component in self._open:
                return False
            self._open[component] = Gap(component, reason, at)
            return True

    def close(self, component: str, at: dt.datetime) -> Gap | None:
        with self._lock:
            g = self._open.pop(component, None)
            if g is not None:
                g.end = max(at, g.start)
                self._closed.append(g)
            return g

    def carry(self, start: str, end: str, component: str, reason: str) -> None:
        with self._lock:
            self._carry.append({"start": start, "end": end, "component": component, "reason": reason})

    def active(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def for_segment(self, start: dt.datetime, end: dt.datetime) -> list[dict]:
        """Gaps touching [start, end], clipped to it; interruptions carried in full. Consumes carries."""
        s0, e0 = start.replace(microsecond=0), end.replace(microsecond=0)
        out: list[dict] = []
        with self._lock:
            out.extend(self._carry)
            self._carry = []
            for g in [*self._closed, *self._open.values()]:
                g_end = g.end or end
                if g.start >= end or g_end <= start:     # exact times: no phantom second-long overlaps
                    continue
                ongoing = g.end is None or g.end > end
                out.append({"start": _iso(max(g.start, s0)), "end": _iso(min(g_end, e0)),
                            "component": g.component,
                            "reason": g.reason + (" (持续 / continues)" if ongoing else "")})
            self._closed = [g for g in self._closed if g.end is not None and g.end >= start]
        return out


# ---------------------------------------------------------------------------------- alarms
class Alarms:
    """Raise / clear through ``agent.health.alarms`` (agent/health/alarms.py) when the health
    component runs; always kept locally as well (``room status`` shows them).

    ``code`` is a health alarm code (camera_offline, microphone_silent, sensor_silent,
    disk_low); codes the registry does not know (room_seal_failed, room_capture_failed) stay
    local and appear in the room's status, which health publishes with the component."""

    def __init__(self, agent: Any = None) -> None:
        self.agent = agent
        self.active: dict[str, dict] = {}
        self._lock = threading.Lock()

    def _sink(self):
        health = getattr(self.agent, "health", None) if self.agent is not None else None
        return getattr(health, "alarms", None)

    @staticmethod
    def key(code: str, instance: str | None) -> str:
        return f"{code}.{instance}" if instance else code

    def raise_(self, code: str, zh: str, en: str, instance: str | None = None) -> None:
        key = self.key(code, instance)
        with self._lock:
            if key in self.active:
                return
            self.active[key] = {"code": key, "message": f"{zh} / {en}", "since": _iso(_now())}
        log.warning("alarm %s: %s / %s", key, zh, en)
        sink = self._sink()
        if sink is not None:
            try:
                sink.raise_(code, zh, en, source="room", instance=instance)
            except (KeyError, ValueError):
                log.debug("alarm code %s unknown to the health registry: kept local", code)
            except Exception:
                log.exception("raising alarm %s failed", key)

    def clear(self, code: str, instance: str | None = None) -> None:
        key = self.key(code, instance)
        with self._lock:
            if self.active.pop(key, None) is None:
                return
        log.info("alarm %s cleared", key)
        sink = self._sink()
        if sink is not None:
            try:
                sink.clear(code, source="room", instance=instance)
            except (KeyError, ValueError):
                pass
            except Exception:
                log.exception("clearing alarm %s failed", key)

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.active.values())

    def reset(self, codes: tuple[str, ...] | None = None) -> None:
        """Clear the room's alarms (all, or those of ``codes``), here and in the health registry
        (which keeps them across restarts): at a session start, and for the devices at its end."""
        with self._lock:
            for key in [k for k in self.active if codes is None or k.split(".", 1)[0] in codes]:
                del self.active[key]
        sink = self._sink()
        if sink is None or not hasattr(sink, "active"):
            return
        for a in sink.active():
            if getattr(a, "source", None) == "room" and (codes is None or a.code in codes):
                code, _, inst = a.key.partition(".")
                try:
                    sink.clear(code, source="room", instance=inst or None)
                except Exception:
                    log.exception("clearing alarm %s failed", a.key)


# ---------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class RoomSettings:
    """The ``[room]`` section, parsed."""

    name: str
    cameras: list[str]
    layout: str
    inset_corner: str
    inset_percent: int
    width: int
    height: int
    fps: int
    segment_seconds: int
    preset: str
    crf: int
    microphone: str
    sensor_port: str
    sensor_slave: int
    sensor_baudrate: int
    overlay_corner: str
    overlay_lines: list[str]
    overlay_scale: int
    camera_lost_s: int
    place: str

    @classmethod
    def from_config(cls, cfg) -> "RoomSettings":
        r = cfg.room
        w, h = (int(x) for x in r.size.split("x"))
        loc = cfg.device.location
        place = r.name if loc.startswith("未设置地点") else f"{loc} {r.name}"
        return cls(name=r.name, cameras=list(r.cameras), layout=r.layout, inset_corner=r.inset_corner,
                   inset_percent=r.inset_percent, width=w, height=h, fps=r.fps,
                   segment_seconds=r.segment_seconds, preset=r.preset, crf=r.crf, microphone=r.microphone,
                   sensor_port=r.sensor_port, sensor_slave=r.sensor_slave, sensor_baudrate=r.sensor_baudrate,
                   overlay_corner=r.overlay_corner, overlay_lines=list(r.overlay_lines),
                   overlay_scale=r.overlay_scale, camera_lost_s=r.camera_lost_s, place=place)


def camera_names(n: int) -> list[str]:
    return ["main", "panorama"][:n]


def open_camera(source: str, name: str):
    from drivers.camera import Camera

    if source.startswith("file:"):
        return Camera(source[5:], name=name, loop=True)
    src: str | int = int(source) if source.isdigit() else source
    return Camera(src, name=name)


def open_microphone(spec: str):
    from drivers import microphone as m

    if spec == "none":
        return None
    if spec == "tone":
        return m.ToneMicrophone(rate=AUDIO_RATE, name="tone")
    return m.Microphone(device=None if spec == "default" else spec, rate=AUDIO_RATE, name="microphone")


# ---------------------------------------------------------------------------------- sensor
class SensorPoller:
    """Temperature / humidity for the overlay and the status, from :class:`drivers.sensor.Sensor`
    (Modbus RTU, its own polling thread; garbage and silence are counted, never raised)."""

    def __init__(self, port: str, slave: int, baudrate: int) -> None:
        from drivers.sensor import Sensor

        self.port = port
        self.sensor = Sensor(port, slave=slave, baudrate=baudrate, interval=1.0)

    def start(self) -> "SensorPoller":
        self.sensor.start()
        return self

    def stop(self) -> None:
        self.sensor.stop()

    def latest(self) -> tuple[float | None, float | None]:
        r = self.sensor.reading()
        if r is None:
            return None, None
        return r.temp_c_x10 / 10, r.humidity_x10 / 10

    def status(self) -> dict:
        st = self.sensor.status()
        t, h = self.latest()
        return {"port": self.port, "ok": st.online, "temperature_c": t, "humidity_pct": h, "polls": st.polls,
                "errors": st.errors, "garbage": st.garbage_errors, "timeouts": st.timeouts,
                "last_error": st.last_error}

    @property
    def last_error(self) -> str | None:
        return self.sensor.status().last_error


# ---------------------------------------------------------------------------------- session
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
            self.state.last_media = _iso(wall)
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
                        self.state.segment_starts = {str(seg._base_index + self.frames // fps_frames): _iso(wall)}
                        self.state.last_media = _iso(wall)
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
                self.state.stopped = _iso(_now())
                self.state.stop_reason = self.end_reason
            else:
                self.state.suspended = _iso(_now())
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
                self.last_sealed = _iso(_now())
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
        elapsed = int(time.monotonic() - self._started_mono) if hasattr(self, "_started_mono") else 0
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


# ---------------------------------------------------------------------------------- seal
@dataclasses.dataclass
class RecoveredSegment:
    """A segment found on disk after a crash (stand-in for SegmentInfo)."""

    path: Path
    timestamps_path: Path | None
    start_wall: dt.datetime
    end_wall: dt.datetime
    frames: int | None = None           # unknown for a segment cut by a crash
    audio_samples: int | None = None
    truncated: bool = False


def _metadata(state: SessionState, settings: RoomSettings, start: dt.datetime, end: dt.datetime) -> dict:
    return {
        "case_number": state.case_number,
        "capture_start": _iso(start),
        "capture_end": _iso(max(end, start)),
        "place": settings.place,
        "collector": {"name": state.collector_name, "id": state.collector_id},
        "proof": state.proof,
        "room": state.room,
        "subject": state.subject,
        "cameras": [{"name": n, "source": s} for n, s in zip(camera_names(len(state.cameras)), state.cameras)],
        "recording": "interview_room",
    }


def seal_segment(store, state: SessionState, settings: RoomSettings, info, gaps: GapLog, *, final: bool = False,
                 lock: threading.Lock | None = None, save: Callable[[], None] | None = None,
                 extra_gaps: list[dict] | None = None) -> dict:
    """Seal one closed segment as the session's next item; updates and saves ``state``."""
    lock = lock or threading.Lock()
    with lock:
        index, prev = state.next_index, state.prev_item_hash
    source_key = f"room:{state.id}:{index}"
    truncated = bool(getattr(info, "truncated", False))
    name = f"seg_{index:06d}.ts"
    writer = store.resume_item(source_key)
    if writer is None:
        source = {"type": "interview_room", "session": state.id, "segment": index,
                  "frames": getattr(info, "frames", None), "audio_samples": getattr(info, "audio_samples", None),
                  "container": "mpegts", "video": "h264", "audio": "aac",
                  "size": f"{settings.width}x{settings.height}", "fps": settings.fps,
                  "truncated": truncated, "file": Path(info.path).name,
                  "timestamps": f"{name}.times.jsonl" if info.timestamps_path else None}
        writer = store.new_item(_metadata(state, settings, info.start_wall, info.end_wall), source, kind="room",
                                priority=1, source_key=source_key,
                                session={"id": state.id, "index": index, "prev_item_hash": prev, "final": final},
                                enforce_reserve=False)
        crashpoint("room.after_new_item")
    # else: resumed after a crash in the middle of sealing; what was moved in already is rehashed
    for member, path in ((name, info.path), (f"{name}.times.jsonl", info.timestamps_path)):
        if path is None:
            continue
        target = writer.files_dir / member
        if Path(path).exists():
            writer.add_path(member, Path(path), move=True)
        elif target.exists():
            writer.add_path(member, target, move=True)
        crashpoint("room.after_move")
    for g in (extra_gaps or []) + gaps.for_segment(info.start_wall, info.end_wall):
        writer.add_gap(g["start"], g["end"], g["component"], g["reason"])
    m = writer.seal(capture_end=_iso(max(info.end_wall, info.start_wall)), actor="agent:room",
                    session={"id": state.id, "index": index, "prev_item_hash": prev, "final": final})
    crashpoint("room.after_seal")
    with lock:
        state.next_index = index + 1
        state.prev_item_hash = m["item_hash"]
        state.segments_sealed += 1
        if save:
            save()
        else:
            state.save(store.data_dir / "room" / STATE_FILE)
    log.info("room segment %d of %s sealed as %s (%d gaps)", index, state.id, m["item_id"], len(m["gaps"]))
    return m


def _chain_position(store, state: SessionState) -> tuple[int, str | None]:
    """(next index, previous item hash) from the ledger - the truth after a crash between seal
    and the state file (and still right after the archive purged local copies)."""
    rows = store.ledger.query(
        "SELECT source_key, item_hash FROM items WHERE session_id = ? AND source_key LIKE ? "
        "AND state NOT IN ('receiving', 'discarded')", [state.id, f"room:{state.id}:%"])
    best, h = -1, None
    for r in rows:
        try:
            idx = int(r["source_key"].rsplit(":", 1)[1])
        except ValueError:
            continue
        if idx > best:
            best, h = idx, r["item_hash"]
    return best + 1, h


def recover_unsealed(store, state: SessionState, settings: RoomSettings, state_path: Path, gaps: GapLog,
                     now: dt.datetime | None = None) -> list[dict]:
    """Seal every segment a crash left on disk, in order; returns their manifests.

    The last one may be a ``.part`` cut mid-write: it is sealed as it is (it plays up to its
    last complete packet), marked ``truncated``. When the session was recording, the
    interruption (from the last media on disk to ``now``) is carried as a gap into the next
    segment recorded and listed in the state's ``interruptions``.
    """
    now = now or _now()
    state.next_index, state.prev_item_hash = _chain_position(store, state)
    seg_dir = state_path.parent / "sessions" / state.id
    found: dict[int, Path] = {}
    if seg_dir.is_dir():
        for p in seg_dir.iterdir():
            m = SEGMENT_RE.match(p.name)
            if m:
                idx = int(m.group(1))
                if idx not in found or not p.name.endswith(".part"):
                    found[idx] = p
    sealed: list[dict] = []
    last_end = dt.datetime.fromisoformat(state.last_media) if state.last_media else None
    save = lambda: state.save(state_path)  # noqa: E731
    # a crash while sealing leaves a receiving item that may hold the oldest segment already
    pending = store.resume_item(f"room:{state.id}:{state.next_index}")
    if pending is not None:
        src = pending.state.get("source", {})
        fname = src.get("file") or ""
        media = seg_dir / fname if fname else None
        inside = any(pending.files_dir.iterdir())
        if not inside and not (media and media.exists()):
            pending.discard("interrupted before the segment was moved in; its file is sealed separately")
        else:
            meta = pending.state["metadata"]
            info = RecoveredSegment(path=media or seg_dir / "-", timestamps_path=Path(f"{media}.times.jsonl") if media else None,
                                    start_wall=dt.datetime.fromisoformat(meta["capture_start"]),
                                    end_wall=dt.datetime.fromisoformat(meta["capture_end"]),
                                    truncated=bool(src.get("truncated")))
            sealed.append(seal_segment(store, state, settings, info, gaps, save=save))
            m = SEGMENT_RE.match(fname)
            if m:
                found.pop(int(m.group(1)), None)
            last_end = max(last_end or info.end_wall, info.end_wall)
    for idx in sorted(found):
        p = found[idx]
        truncated = p.name.endswith(".part")
        if truncated:
            final_path = p.with_name(p.name[:-len(".part")])
            os.replace(p, final_path)
            p = final_path
        times = p.with_name(p.name + ".times.jsonl")
        if not times.exists() and times.with_name(times.name + ".part").exists():
            os.replace(times.with_name(times.name + ".part"), times)
        start, end = _segment_times(p, times, state, idx)
        info = RecoveredSegment(path=p, timestamps_path=times if times.exists() else None,
                                start_wall=start, end_wall=end, truncated=truncated)
        sealed.append(seal_segment(store, state, settings, info, gaps, save=save))
        last_end = max(last_end or end, end)
    if state.state == "recording":
        start = last_end or dt.datetime.fromisoformat(state.started)
        kind = "stopped" if state.suspended else "crash"
        state.interruptions.append({"start": _iso(min(start, now)), "end": _iso(now), "reason": kind,
                                    "segments_recovered": len(sealed)})
        gaps.carry(_iso(min(start, now)), _iso(now), "agent", REASONS[kind])
        state.suspended = None
    state.save(state_path)
    return sealed


def _segment_times(path: Path, times: Path, state: SessionState, idx: int) -> tuple[dt.datetime, dt.datetime]:
    """Start and end wall time of a recovered segment: its sidecar, else the state file's
    record of when it started and the file's last modification."""
    start = end = None
    if times.exists():
        lines = []
        for x in times.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                lines.append(json.loads(x))
            except ValueError:      # the line the crash cut in half
                break
        if lines:
            start = dt.datetime.fromisoformat(lines[0]["wall"])
            end = dt.datetime.fromisoformat(lines[-1]["wall"]) + dt.timedelta(seconds=1)
    if start is None and str(idx) in state.segment_starts:
        start = dt.datetime.fromisoformat(state.segment_starts[str(idx)])
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime).astimezone()
    if start is None:
        start = mtime
    if end is None or end > mtime + dt.timedelta(seconds=2):
        end = mtime
    return start, max(start, end)


def new_state(req: SessionRequest, settings: RoomSettings, device_id: str) -> SessionState:
    sid = f"{device_id}-room-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
    return SessionState(id=sid, case_number=req.case_number, collector_name=req.collector_name,
                        collector_id=req.collector_id, proof=req.proof, subject=req.subject, room=settings.name,
                        cameras=list(settings.cameras), started=_iso(_now()))
