"""Ingest of local files: one pass that copies, hashes and fsyncs, then seals one item."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

from agent.common.errors import DuplicateError, EdgeError
from agent.common.timeutil import from_epoch, iso
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


def ingest(store: Store, paths: list[Path], metadata: dict, *, progress: Callable[[int], None] | None = None,
           actor: str | None = None) -> dict:
    """Copy ``paths`` into one new item and seal it. Returns the manifest."""
    if not paths:
        raise EdgeError("no files given")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise EdgeError("two files have the same name; ingest them as separate items")
    stats = [_check_source(p) for p in paths]
    meta = dict(metadata)
    if not meta.get("capture_start"):
        meta["capture_start"] = iso(from_epoch(min(s.st_mtime for s in stats)))
    meta.setdefault("capture_end", iso(from_epoch(max(s.st_mtime for s in stats))))
    if meta["capture_end"] < meta["capture_start"]:
        meta["capture_end"] = meta["capture_start"]
    total = sum(s.st_size for s in stats)
    source = {"type": "file", "paths": [str(p.resolve()) for p in paths]}
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
                raise DuplicateError(f"{paths[0]}: already ingested for case {meta['case_number']} as item {dup}", dup)
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
