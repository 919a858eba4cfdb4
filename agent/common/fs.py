"""Crash-safe file primitives: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path | str, flags: int = 0) -> None:
    """fsync a file (or, with ``os.O_DIRECTORY``, a directory) by its path."""
    fd = os.open(str(path), os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    fsync_file(path, os.O_DIRECTORY)


def atomic_write(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def rename_durable(src: Path | str, dst: Path | str) -> None:
    """Rename and make both directory entries durable."""
    src, dst = Path(src), Path(dst)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """Tell the kernel these bytes of a file will not be read again soon (posix_fadvise DONTNEED):
    their clean pages are freed at once and dirty ones start writing back. Evidence is written or
    read once in a stream; kept in the page cache it only pushes out what is used, and on a virtual
    machine every new page the cache takes costs far more than a reused one. Never fails."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError, ValueError):
        pass


def free_bytes(path: Path | str) -> int:
    st = os.statvfs(str(path))
    return st.f_bavail * st.f_frsize


def read_csv_text(path: Path, max_bytes: int = 50 * 2**20) -> str:
    """A CSV file as text, as Excel writes it in China: UTF-8 (with or without BOM) or GB18030
    (which contains GBK). EdgeError (bilingual, naming the file) when it is missing, a directory,
    unreadable, larger than ``max_bytes`` or binary (NUL bytes)."""
    from .errors import EdgeError

    try:
        if path.stat().st_size > max_bytes:
            raise EdgeError(f"{path}: 文件过大 / larger than {max_bytes >> 20} MiB; not a CSV text file")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise EdgeError(f"{path}: 文件不存在 / no such file") from None
    except IsADirectoryError:
        raise EdgeError(f"{path}: 是目录 / is a directory; give the CSV file") from None
    except OSError as exc:
        raise EdgeError(f"{path}: 无法读取 / cannot read: {exc.strerror}") from None
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = raw.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise EdgeError(f"{path}: 编码无法识别 / neither UTF-8 nor GB18030 (GBK) text")
    if "\x00" in text:
        raise EdgeError(f"{path}: 二进制数据 / binary data (NUL bytes); expected CSV text")
    return text
