"""What an interview-room session is: the officer's request (the mandatory fields, checked
before anything starts), the room's settings (the ``[room]`` section) and the state that
survives a crash (``data_dir/room/session.json``, written atomically)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from pathlib import Path

from agent.common.errors import EdgeError, MetadataError
from agent.common.fs import atomic_write
from agent.common.timeutil import now_iso
from agent.evidence import manifest as mf

STATE_FILE = "session.json"


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


def new_state(req: SessionRequest, settings: RoomSettings, device_id: str) -> SessionState:
    sid = f"{device_id}-room-{time.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(2)}"
    return SessionState(id=sid, case_number=req.case_number, collector_name=req.collector_name,
                        collector_id=req.collector_id, proof=req.proof, subject=req.subject, room=settings.name,
                        cameras=list(settings.cameras), started=now_iso())
