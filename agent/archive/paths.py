"""Every path the archive derives from a message, and the locks it takes.

Names that come from the wire (device and item ids, case numbers, file names) each become one
directory level at most: checked here (no separator, NUL, control character, lone surrogate,
leading '.' or '_') before anything is joined, and the joined path is checked to lie inside the
root with every symlink resolved.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path

from agent.common.errors import EdgeError
from agent.evidence import rules
from agent.wire import protocol as P

_CTRL = re.compile(r"[\x00-\x1f\x7f]")
#: item locks are striped over this many lock files (a fixed set: junk cannot grow it)
LOCK_STRIPES = 1024


def utf8(value: str, what: str) -> str:
    """``value`` if it encodes as UTF-8 (a lone surrogate does not: it can be neither a file name
    nor part of an answer)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise P.ProtocolError(f"{what} {ascii(value)} is not valid UTF-8 (lone surrogate)") from None
    return value


def safe_case(case: object) -> str:
    """A case number usable as one directory level, by the rule the edge applies at ingest
    (:func:`agent.evidence.rules.case_number_problem`: no path, NUL, control or invisible
    character, lone surrogate, leading '.' or '_')."""
    problem = rules.case_number_problem(case)
    if problem:
        raise P.ProtocolError(rules.message("case_number", case, problem))
    return case


def safe_file(name: object) -> str:
    """An evidence file name usable as one directory entry (the manifest's ``files[].name``)."""
    if not P.safe_name(name):
        raise P.ProtocolError(f"file name {ascii(name)} is not usable (paths, NUL, '..', leading '.')")
    utf8(name, "file name")  # type: ignore[arg-type]
    if _CTRL.search(name):  # type: ignore[arg-type]
        raise P.ProtocolError(f"file name {ascii(name)} contains a control character")
    return name  # type: ignore[return-value]


class Root:
    """The archive root: confinement of derived paths."""

    def __init__(self, root: Path):
        self.path = root
        self._s = str(root)

    def inside(self, path: Path) -> Path:
        """``path`` if it lies inside the root (every symlink resolved), else an error."""
        real = os.path.realpath(path)
        if real != self._s and not real.startswith(self._s + os.sep):
            # ids are checked before they are joined: only a symlink planted in the root gets here;
            # a fault of the archive, not of the message (the item waits, nothing is refused for good)
            raise UnsafePath(f"路径不安全，拒绝写入 / path {path} escapes the archive root (a symlink?)")
        return path

    def lock_path(self, locks: Path, dev: str, item: str) -> Path:
        n = int.from_bytes(hashlib.sha256(f"{dev}/{item}".encode()).digest()[:4], "big") % LOCK_STRIPES
        return locks / f"{n:04d}.lock"


@contextlib.contextmanager
def flock(path: Path):
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class UnsafePath(EdgeError):
    """A path the archive would write through is a symlink or not a directory (planted?)."""


def ensure_dirs(root: Path, parts: list[str]) -> Path:
    """``root/parts[0]/parts[1]/...`` created as needed, one level at a time through directory
    file descriptors opened with O_NOFOLLOW: a symlink (or a file) at any level is refused, never
    followed, whatever it points at. Returns the path."""
    fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            if part in ("", ".", "..") or "/" in part:
                raise UnsafePath(f"{part!r}: not one directory level")
            try:
                os.mkdir(part, 0o750, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                where = root.joinpath(*parts[:i + 1])
                raise UnsafePath(f"路径不安全，拒绝写入 / refusing to write through {where}: it is a symlink or not a "
                                 f"directory ({exc.strerror})") from None
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return root.joinpath(*parts)


def no_symlink(path: Path) -> Path:
    """``path`` if it is not a symlink (it may not exist)."""
    if path.is_symlink():
        raise UnsafePath(f"路径不安全，拒绝写入 / refusing to write through {path}: it is a symlink")
    return path


def export_tree(src: Path, dest: Path, name: str, extra: dict[str, bytes]) -> Path:
    """Copy the directory ``src`` to ``dest/name`` and write ``extra`` (file name -> bytes) beside it.

    ``dest`` must be a new or empty directory that is not a symlink. Every file is created with
    O_CREAT|O_EXCL|O_NOFOLLOW through directory descriptors and fsynced; the copy is assembled
    under a temporary name and renamed into place at the end. Source files are opened with
    O_NOFOLLOW too (a symlink inside the archive is refused, never copied through)."""
    bad = ("导出目标必须是新建或空的目录（不能是符号链接）/ the export destination must be a new or empty "
           f"directory, not a symlink: {dest}")
    try:
        os.mkdir(dest, 0o750)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EdgeError(f"{bad} ({exc.strerror})") from None
    try:
        dfd = os.open(str(dest), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise EdgeError(f"{bad} ({exc.strerror})") from None
    try:
        if os.listdir(dfd):
            raise EdgeError(f"{bad} (it is not empty)")
        part = f".{name}.partial"
        os.mkdir(part, 0o750, dir_fd=dfd)
        pfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
        try:
            _copy_dir(src, pfd)
        finally:
            os.close(pfd)
        for fname, data in extra.items():
            _write_new(dfd, fname, data)
        os.rename(part, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return dest / name


def _copy_dir(src: Path, dfd: int) -> None:
    sfd = os.open(str(src), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for entry in sorted(os.listdir(sfd)):
            st = os.stat(entry, dir_fd=sfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(entry, 0o750, dir_fd=dfd)
                sub = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    _copy_dir(src / entry, sub)
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                ifd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sfd)
                try:
                    ofd = os.open(entry, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=dfd)
                    try:
                        while True:
                            n = os.sendfile(ofd, ifd, None, 8 << 20)
                            if n == 0:
                                break
                        os.fsync(ofd)
                    finally:
                        os.close(ofd)
                finally:
                    os.close(ifd)
            else:
                raise UnsafePath(f"{src / entry}: not a regular file or directory (a symlink?): not exported")
        os.fsync(dfd)
    finally:
        os.close(sfd)


def _write_new(dfd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
