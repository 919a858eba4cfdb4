"""Recorders seen only as USB mass storage: list media files from a mounted directory."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import stat
import subprocess
from pathlib import Path

from .errors import RecorderError, UnsafeName
from .naming import safe_name
from .zfy import CHINA_TZ, FileRecord, FileType, Mark

logger = logging.getLogger(__name__)

EXTENSIONS = {
    FileType.VIDEO: {".mp4", ".mov", ".avi", ".mkv", ".ts", ".3gp", ".h264", ".264", ".h265", ".265", ".asf"},
    FileType.AUDIO: {".wav", ".mp3", ".aac", ".amr", ".m4a", ".ogg", ".opus", ".g726"},
    FileType.IMAGE: {".jpg", ".jpeg", ".png", ".bmp", ".heic"},
    FileType.TEXT: {".txt", ".log", ".xml", ".json", ".csv"},
}

# 20261127_085600 / 20261127085600 / 2026-11-27_08-56-00 (not inside a longer run of digits)
_NAME_TIME = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})[_\-T ]?(\d{2})-?(\d{2})-?(\d{2})(?!\d)")
# recorder convention for 重点文件: IMP_ prefix or _IMP suffix on the stem
_IMPORTANT = re.compile(r"(^IMP[_-])|([_-]IMP$)", re.IGNORECASE)


def guess_type(name: str) -> FileType:
    ext = os.path.splitext(name)[1].lower()
    for ftype, exts in EXTENSIONS.items():
        if ext in exts:
            return ftype
    return FileType.OTHER


def time_from_name(name: str, tz: _dt.tzinfo = CHINA_TZ) -> _dt.datetime | None:
    """Capture time from a name like ``1234567_20261127085600_0001.MP4`` (device local time)."""
    for m in _NAME_TIME.finditer(name):
        try:
            return _dt.datetime(*(int(g) for g in m.groups()), tzinfo=tz)
        except ValueError:
            continue
    return None


def guess_mark(name: str) -> Mark:
    stem = os.path.splitext(name)[0]
    return Mark.IMPORTANT if _IMPORTANT.search(stem) else Mark.NORMAL


def probe_duration(path: str | os.PathLike) -> int:
    """Duration in whole seconds (rounded) by ffprobe; 0 when it has none or ffprobe fails."""
    try:
        out = subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json", os.fspath(path)],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        value = json.loads(out).get("format", {}).get("duration")
        return int(round(float(value))) if value not in (None, "N/A") else 0
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        logger.debug("ffprobe failed on %s: %s", path, exc)
        return 0


def scan_mass_storage(
    mount_path: str | os.PathLike,
    *,
    recursive: bool = True,
    probe: bool = False,
    include_hidden: bool = False,
    tz: _dt.tzinfo = CHINA_TZ,
) -> list[FileRecord]:
    """List the files of a mounted recorder, sorted by capture time then name.

    Type comes from the extension, capture time from the name (``YYYYMMDD_HHMMSS``
    or ``YYYYMMDDHHMMSS``, device local time ``tz``) or else from mtime, mark from an
    ``IMP_``/``_IMP`` name convention, locked from a read-only mode. Only regular
    files are listed (symlinks are never followed); names that are unsafe are
    skipped with a warning. ``probe`` asks ffprobe for the duration of audio/video.
    """
    root = Path(mount_path)
    if not root.is_dir():
        raise RecorderError(f"记录仪存储目录不存在 / recorder mount path is not a directory: {root}")
    records: list[FileRecord] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if not recursive:
            dirnames[:] = []
        elif not include_hidden:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not include_hidden and name.startswith("."):
                continue
            try:
                safe_name(name)
            except UnsafeName as exc:
                logger.warning("skipping %s: %s", os.path.join(dirpath, name), exc)
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                logger.warning("skipping %s: %s", path, exc)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            ftype = guess_type(name)
            capture = time_from_name(name, tz) or _dt.datetime.fromtimestamp(int(st.st_mtime), tz)
            duration = probe_duration(path) if probe and ftype in (FileType.VIDEO, FileType.AUDIO) else 0
            records.append(
                FileRecord(
                    name=name,
                    size=st.st_size,
                    capture_time=capture,
                    duration=duration,
                    type=ftype,
                    mark=guess_mark(name),
                    locked=not (st.st_mode & stat.S_IWUSR),
                    path=path,
                )
            )
    records.sort(key=lambda r: (r.capture_time, r.name))
    return records
