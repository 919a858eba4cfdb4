"""Ingest of local files: one pass that copies, hashes and fsyncs, then seals one item."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from agent.common.errors import DuplicateError, EdgeError
from agent.common.timeutil import from_epoch, iso
from ..evidence import hashing, manifest as mf
from .store import SourceError, Store


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
    if not meta.get("capture_start"):
        meta["capture_start"] = iso(from_epoch(min(s.st_mtime for s in stats)))
    meta.setdefault("capture_end", iso(from_epoch(max(s.st_mtime for s in stats))))
    if meta["capture_end"] < meta["capture_start"]:
        meta["capture_end"] = meta["capture_start"]
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
