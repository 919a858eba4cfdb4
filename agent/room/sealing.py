"""Sealing: each closed segment becomes the session's next item in the store (a hash chain
through ``session.prev_item_hash``), and after a crash :func:`recover_unsealed` seals every
segment left on disk, in order, and records the interruption as a gap."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from agent.common.faults import crashpoint
from agent.common import timeutil
from agent.common.timeutil import iso
from .gaps import REASONS, GapLog
from .state import STATE_FILE, RoomSettings, SessionState, camera_names

if TYPE_CHECKING:
    from .segmenter import SegmentInfo

log = logging.getLogger(__name__)

SEGMENT_RE = re.compile(r"^seg_(\d{6})\.ts(\.part)?$")


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
        "capture_start": iso(start),
        "capture_end": iso(max(end, start)),
        "place": settings.place,
        "collector": {"name": state.collector_name, "id": state.collector_id},
        "proof": state.proof,
        "room": state.room,
        "subject": state.subject,
        "cameras": [{"name": n, "source": s} for n, s in zip(camera_names(len(state.cameras)), state.cameras)],
        "recording": "interview_room",
    }


def seal_segment(store, state: SessionState, settings: RoomSettings, info: SegmentInfo | RecoveredSegment,
                 gaps: GapLog, *, final: bool = False,
                 lock: threading.Lock | None = None, save: Callable[[], None] | None = None,
                 extra_gaps: list[dict] | None = None) -> dict:
    """Seal one closed segment as the session's next item; updates and saves ``state``."""
    lock = lock or threading.Lock()
    with lock:
        index, prev = state.next_index, state.prev_item_hash
    source_key = f"room:{state.id}:{index}"
    truncated = isinstance(info, RecoveredSegment) and info.truncated
    name = f"seg_{index:06d}.ts"
    writer = store.resume_item(source_key)
    if writer is None:
        source = {"type": "interview_room", "session": state.id, "segment": index,
                  "frames": info.frames, "audio_samples": info.audio_samples,
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
    m = writer.seal(capture_end=iso(max(info.end_wall, info.start_wall)), actor="agent:room",
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
    rows = store.session_segments(state.id, f"room:{state.id}:")
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
    now = now or timeutil.now()
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
        state.interruptions.append({"start": iso(min(start, now)), "end": iso(now), "reason": kind,
                                    "segments_recovered": len(sealed)})
        gaps.carry(iso(min(start, now)), iso(now), "agent", REASONS[kind])
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
