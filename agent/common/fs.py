"""Crash-safe file primitives: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
import secrets
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
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file.

    The temporary file is created beside it with O_CREAT|O_EXCL|O_NOFOLLOW through the folder's
    descriptor, then renamed over the name: a symlink planted at the temporary name (or at the
    name itself) is never written through; the rename replaces the link, never its target."""
    path = Path(path)
    dfd = os.open(str(path.parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        atomic_write_at(dfd, path.name, data, mode)
    finally:
        os.close(dfd)


def create_temp_at(dir_fd: int, name: str, mode: int = 0o600) -> tuple[str, int]:
    """A new temporary file ``.NAME.tmp-PID`` in the folder ``dir_fd`` (a random suffix is added
    when that name is taken, by a crash or a planted link): (its name, a descriptor open for
    reading and writing). Created with O_CREAT|O_EXCL|O_NOFOLLOW, so it is always a fresh regular file."""
    base = f".{name}.tmp-{os.getpid()}"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for attempt in range(64):
        tmp = base if attempt == 0 else f"{base}-{secrets.token_hex(6)}"
        try:
            return tmp, os.open(tmp, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}: no free temporary name")


def atomic_write_at(dir_fd: int, name: str, data: bytes, mode: int = 0o644, replace: bool = True) -> None:
    """:func:`atomic_write` into the folder ``dir_fd``. With ``replace=False`` the file must be
    new: anything already at ``name`` (a file, a planted symlink) raises FileExistsError and is
    left as it is (the temporary file is hard-linked to ``name``, which never replaces)."""
    tmp, fd = create_temp_at(dir_fd, name, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            os.unlink(tmp, dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.fsync(dir_fd)


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
