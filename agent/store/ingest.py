"""Ingest of local files: one pass that copies, hashes and fsyncs, then seals one item."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import datetime as _dt

from agent.common.errors import DuplicateError, EdgeError, MetadataError
from agent.common.timeutil import from_epoch, iso, parse_iso
from ..evidence import hashing, manifest as mf
from .store import SourceError, Store
from .policy_rules import check_case_number


def _check_source(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise EdgeError(f"{path}: no such file") from None
    except OSError as exc:
        raise EdgeError(f"{path}: cannot read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise EdgeError(f"{path}: is a directory; ingest takes files")
    if not stat.S_ISREG(st.st_mode):
        raise EdgeError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise EdgeError(f"{path}: cannot read: permission denied")
    return st


#: what ``content`` may say a file is: audio/video (checked), or anything (declared by the technician)
CONTENTS = ("media", "other")
MIB = 1 << 20


def probe_media(path: Path) -> str | None:
    """None when PyAV (FFmpeg) finds an audio or video stream in ``path``; else why not."""
    import av

    try:
        with av.open(str(path)) as container:
            kinds = {s.type for s in container.streams}
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return str(getattr(exc, "strerror", None) or exc).split(":")[0]
    if not kinds & {"video", "audio"}:
        return f"no audio or video stream (streams: {', '.join(sorted(kinds)) or 'none'})"
    return None


def media_duration(path: Path) -> float | None:
    """Seconds of audio/video in ``path`` as FFmpeg (PyAV) reads the container; 0 for a still
    image; None when the file is not media or says no duration."""
    import av

    try:
        with av.open(str(path)) as container:
            if container.format.name.split(",")[0] in ("image2", "png_pipe", "jpeg_pipe"):
                return 0.0
            if container.duration is not None and container.duration > 0:
                return container.duration / av.time_base
            spans = [float(s.duration * s.time_base) for s in container.streams
                     if s.type in ("video", "audio") and s.duration and s.time_base]
            return max(spans) if spans else None
    except (av.error.FFmpegError, OSError, ValueError):
        return None


CAPTURE_START = "采集开始时间 capture start"
CAPTURE_END = "采集结束时间 capture end"


def capture_times(paths: list[Path], stats: list[os.stat_result], metadata: dict) -> tuple[str, str, int | None]:
    """(capture_start, capture_end, duration_ms) of an ingest (signed records hold no floats).

    Each file ends at its modification time (a recorder closes a file when capture ends) and,
    when it is media, starts its FFmpeg duration earlier; the item spans its files. A start
    given without an end keeps that span (a 90 s clip given --captured-at 09:00 ends 09:01:30),
    an end given without a start likewise. Given times are parsed as times with zones, so
    10:00+08:00 and 02:00Z are the same instant; an end before the start is refused, naming
    both values."""
    durations = [media_duration(p) if st.st_size else None for p, st in zip(paths, stats)]
    ends = [from_epoch(st.st_mtime) for st in stats]
    starts = [end - _dt.timedelta(seconds=d or 0) for end, d in zip(ends, durations)]
    first, last = min(starts), max(ends)
    span = last - first
    duration = sum(d for d in durations if d) if any(d is not None for d in durations) else None
    given_start, given_end = metadata.get("capture_start"), metadata.get("capture_end")
    start = parse_iso(given_start, CAPTURE_START) if given_start else None
    end = parse_iso(given_end, CAPTURE_END) if given_end else None
    if start is None and end is None:
        start, end = first, last
    elif end is None:
        end = start + span
    elif start is None:
        start = end - span
    if end < start:
        e = given_end or iso(end)
        b = given_start or iso(start)
        raise MetadataError(f"采集结束时间 {e} 早于采集开始时间 {b} / capture end {e} is before capture start {b}; "
                            "nothing copied (check --captured-at and --captured-until)")
    start_text = given_start if given_start else iso(start.astimezone(end.tzinfo) if given_end else start)
    end_text = given_end if given_end else iso(end.astimezone(start.tzinfo) if given_start else end)
    return start_text, end_text, (round(duration * 1000) if duration is not None else None)


def _check_content(path: Path, st: os.stat_result, content: str) -> None:
    if content not in CONTENTS:
        raise EdgeError(f"content {content!r}: one of {', '.join(CONTENTS)}")
    if content == "other":
        return
    if st.st_size == 0:
        raise EdgeError(f"{path}: 空文件，不是音视频 / empty file (0 bytes), not a recording; "
                        "to seal it anyway give --kind other")
    why = probe_media(path)
    if why:
        raise EdgeError(f"{path}: 不是可识别的音视频文件 / not an audio or video file ({why}); "
                        "to seal it as another kind of file give --kind other")


def _ends_hash(alg: str, path: Path, size: int) -> str:
    """Hash of the first and the last MiB of a file (the whole file when it is under 2 MiB)."""
    h = hashing.new(alg)
    with open(path, "rb") as f:
        h.update(f.read(MIB))
        if size > MIB:
            f.seek(max(MIB, size - MIB))
            h.update(f.read(MIB))
    return h.hexdigest()


def _whole_hash(alg: str, path: Path) -> str:
    h = hashing.new(alg)
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def find_duplicate(store: Store, path: Path, size: int, case_number: str) -> str | None:
    """Before anything is copied: an item of this case holding the same content as ``path``, if
    any. Candidates have one stored file of the same size; the first and last MiB are compared
    first, then the whole file's hash confirms (an encrypted item is found after the copy instead,
    by ``Store.duplicate_of``)."""
    quick = None
    for row in store.items(case=case_number):
        if row["state"] in ("receiving", "discarded", "purged") or row["size"] != size or not row["content_hash"]:
            continue
        files = Path(row["path"]) / mf.FILES_DIR
        stored = list(files.iterdir()) if files.is_dir() else []
        if len(stored) != 1 or stored[0].stat().st_size != size:
            continue
        quick = quick or _ends_hash(store.alg, path, size)
        if _ends_hash(store.alg, stored[0], size) == quick and _whole_hash(store.alg, path) == row["content_hash"]:
            return row["id"]
    return None


def ingest(store: Store, paths: list[Path], metadata: dict, *, progress: Callable[[int], None] | None = None,
           actor: str | None = None, content: str = "other") -> dict:
    """Copy ``paths`` into one new item and seal it. Returns the manifest.

    ``content="media"`` (what the ``ingest`` command asks by default) refuses an empty file or one
    in which PyAV finds no audio or video stream; ``"other"`` takes any file. A single file
    already sealed for the same case is refused before it is copied (:func:`find_duplicate`)."""
    if not paths:
        raise EdgeError("no files given")
    check_case_number(store, metadata.get("case_number"))  # the unit policy's pattern, before anything is copied
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise EdgeError("two files have the same name; ingest them as separate items")
    stats = [_check_source(p) for p in paths]
    for p, st in zip(paths, stats):
        _check_content(p, st, content)
    if len(paths) == 1 and metadata.get("case_number"):
        dup = find_duplicate(store, paths[0], stats[0].st_size, metadata["case_number"])
        if dup:
            raise DuplicateError(f"{paths[0]}: 已导入 / already ingested for case {metadata['case_number']} "
                                 f"as item {dup}; nothing copied", dup)
    meta = dict(metadata)
    meta["capture_start"], meta["capture_end"], duration = capture_times(paths, stats, metadata)
    if duration is not None:
        meta["duration_ms"] = duration
    total = sum(s.st_size for s in stats)
    source = {"type": "file", "paths": [str(p.resolve()) for p in paths], "content": content}
    writer = store.new_item(meta, source, kind="file", expected_size=total)
    store.audit.append("ingest", writer.id, actor=actor, files=[str(p) for p in paths], bytes=total)
    try:
        for p, before in zip(paths, stats):
            try:
                f = open(p, "rb")
            except OSError as exc:
                raise EdgeError(f"{p}: cannot read: {exc.strerror}") from None
            with f:
                try:
                    writer.add_stream(p.name, f, expected_size=before.st_size, progress=progress)
                    changed = False
                except SourceError:
                    changed = True
                after = os.fstat(f.fileno())
            if changed or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise EdgeError(f"{p}: the file changed while it was read (size or modification time); "
                                "ingest it again once it is complete")
        if len(paths) == 1 and meta.get("case_number"):
            dup = store.duplicate_of(writer.content_hash(), meta["case_number"], writer.id)
            if dup:
                raise DuplicateError(f"{paths[0]}: 已导入 / already ingested for case {meta['case_number']} "
                                     f"as item {dup}", dup)
        return writer.seal(actor=actor)
    except SourceError as exc:
        writer.discard(str(exc))
        raise EdgeError(str(exc)) from None
    except BaseException as exc:
        try:
            writer.discard(f"ingest failed: {exc}")
        except Exception:
            pass
        raise
