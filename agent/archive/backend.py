"""Where the archive keeps evidence bytes: the storage interface and its POSIX backend.

Everything the receivers write goes through :class:`EvidenceStorage`, under a *key*:

- ``_tmp/DEVICE/ITEM``: a partial transfer. Its signed manifest, signature and the blocks received
  so far, written at their offsets. The byte ranges held are in the index (PostgreSQL or SQLite),
  not in the process that wrote them, so any receiver on any host can continue the transfer: the
  next chunk, the assembly of a block from pieces, the finish.
- ``UNIT/CASE/ITEM`` (``UNIT/_pending/ITEM`` before the case number is known): a stored item; the
  key is the ``path`` column of the index's ``items`` row.
- ``_quarantine/DEVICE/ITEM-TIME``: a refused item with its ``REASON.txt``.

Inside a key, *names* are the item's files: ``manifest.json``, ``manifest.sig``,
``files/NAME``, ``annotations/NNNN.json|sig``.

:class:`PosixStorage` keeps a key as a directory of the root: a local file system, or a shared
mount (NFSv4, CephFS, GlusterFS) that every receiver host mounts at the same path. It needs what
POSIX promises: ``rename`` atomic within the file system, ``fsync`` that reaches stable storage,
``O_NOFOLLOW``. Nothing is written through a symlink (:mod:`.paths`).

An object store fits the same calls (docs/scaling.md, "Evidence storage"): ``put``/``get`` are
objects, ``write_at`` one object per sealed block (``KEY/files/NAME/OFFSET``: a block is written
once and never changes, so no object is ever rewritten), ``complete`` composes them (S3
multipart copy), ``move`` is copy-then-delete (the index's commit, not the move, makes an item
stored, and a move repeated after a crash finds the copy in place), ``local`` stages the item for
verification, ``names`` lists a prefix, ``keep_only`` deletes every object of a key but the named
ones (retention leaves the tombstone). No such backend is built yet; :func:`open_storage` refuses the URL with that reason.
"""

from __future__ import annotations

import abc
import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from agent.common.errors import EdgeError
from agent.common.fs import atomic_write, drop_cache, free_bytes, fsync_dir
from agent.evidence import manifest as mf
from .paths import Root, ensure_dirs, no_symlink, safe_file

#: key prefixes
TMP, QUARANTINE = "_tmp", "_quarantine"


def partial_key(dev: str, item: str) -> str:
    """The key of a partial transfer (ids checked by the caller)."""
    return f"{TMP}/{dev}/{item}"


class EvidenceStorage(abc.ABC):
    """The evidence bytes of one archive, shared by every receiver of it."""

    # small whole objects: manifest, signature, annotations, reasons
    @abc.abstractmethod
    def put(self, key: str, name: str, data: bytes) -> None:
        """Write ``name`` under ``key`` atomically and durably (all or nothing, survives power loss)."""

    @abc.abstractmethod
    def get(self, key: str, name: str) -> bytes:
        """The bytes of ``name`` under ``key`` (OSError when absent)."""

    @abc.abstractmethod
    def has(self, key: str, name: str = mf.MANIFEST) -> bool:
        """Does ``name`` exist under ``key``?"""

    @abc.abstractmethod
    def delete(self, key: str, names: list[str]) -> None:
        """Remove these names under ``key`` (durably)."""

    @abc.abstractmethod
    def names(self, key: str, folder: str) -> list[str]:
        """The names directly in ``folder`` under ``key`` (``annotations`` → ``annotations/0001.json``, …),
        sorted; empty when there are none."""

    @abc.abstractmethod
    def keep_only(self, key: str, names: list[str]) -> None:
        """Remove everything under ``key`` except these names, durably: what a retention deletion
        leaves of a stored item (its tombstone)."""

    # partial transfers
    @abc.abstractmethod
    def create(self, key: str) -> None:
        """Make ``key`` ready to receive (its files area included); idempotent."""

    @abc.abstractmethod
    def write_at(self, key: str, file: str, offset: int, data) -> bool:
        """Write ``data`` into evidence file ``file`` at ``offset``; False when the key is gone
        (finished, refused or abandoned meanwhile, perhaps by another receiver)."""

    @abc.abstractmethod
    def read_at(self, key: str, file: str, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes of ``file`` at ``offset``; None when the key is gone."""

    @abc.abstractmethod
    def complete(self, key: str, files: dict[str, int]) -> None:
        """Every evidence file at its declared size and, with everything else under ``key``,
        durable: called before the item is verified and placed."""

    @contextlib.contextmanager
    def local(self, key: str) -> Iterator[Path]:
        """A local directory holding what is under ``key``, for reading and verification."""
        raise NotImplementedError
        yield  # pragma: no cover

    # placing and removing
    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Is anything stored under ``key``?"""

    @abc.abstractmethod
    def move(self, src: str, dest: str) -> None:
        """Place everything under ``src`` at ``dest`` (which must not exist), durably."""

    @abc.abstractmethod
    def remove(self, key: str) -> None:
        """Remove everything under ``key`` (a partial transfer, never a stored item)."""

    @abc.abstractmethod
    def touched(self, key: str) -> float:
        """When something under ``key`` last changed (epoch seconds, 0 when absent)."""

    @abc.abstractmethod
    def partials(self) -> Iterator[tuple[str, str]]:
        """(device, item) of every partial transfer present."""

    @abc.abstractmethod
    def find(self, prefix: str, item: str) -> str | None:
        """The key ``PREFIX/*/ITEM`` holding a manifest (an item moved into place whose index row
        was never committed), or None."""

    @abc.abstractmethod
    def quarantine(self, key: str, dev: str, name: str, reason: str) -> str:
        """Move a partial transfer to ``_quarantine/DEV/NAME`` with its ``REASON.txt``; the new key."""

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Room left for new transfers."""

    def prune(self, dev: str) -> None:
        """Tidy what is left of a device's partial transfers (nothing to do for most backends)."""


class PosixStorage(EvidenceStorage):
    """Keys are directories under ``root`` (a local file system or a shared mount)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._root = Root(self.root)
        self._files: dict[str, str] = {}  # key -> its files/ directory, checked once (chunks come by the thousand)

    def path(self, key: str, *names: str) -> Path:
        """The path of ``key`` (and ``names`` inside it), confined to the root."""
        return self._root.inside(self.root.joinpath(key, *names))

    def put(self, key: str, name: str, data: bytes) -> None:
        p = self.path(key, name)
        if name.startswith(mf.ANNOTATIONS_DIR + "/"):
            p.parent.mkdir(exist_ok=True)
        atomic_write(p, data)

    def get(self, key: str, name: str) -> bytes:
        return self.path(key, name).read_bytes()

    def has(self, key: str, name: str = mf.MANIFEST) -> bool:
        return self.path(key, name).is_file()

    def delete(self, key: str, names: list[str]) -> None:
        dirs = set()
        for n in names:
            p = self.path(key, n)
            p.unlink(missing_ok=True)
            dirs.add(p.parent)
        for d in dirs:
            fsync_dir(d)

    def names(self, key: str, folder: str) -> list[str]:
        try:
            with os.scandir(self.path(key, folder)) as it:
                return sorted(f"{folder}/{e.name}" for e in it if e.is_file(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def keep_only(self, key: str, names: list[str]) -> None:
        d = self.path(key)
        for e in os.scandir(d):
            if e.name in names:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        self._files.pop(key, None)
        fsync_dir(d)

    def create(self, key: str) -> None:
        ensure_dirs(self.root, [*key.split("/"), mf.FILES_DIR])  # no level may be a symlink

    def _files_dir(self, key: str) -> str:
        d = self._files.get(key)
        if d is None:  # resolved once per transfer: the file name itself is one checked level
            d = str(self.path(key, mf.FILES_DIR))
            if len(self._files) > 1000:
                self._files.clear()
            self._files[key] = d
        return d

    def _open(self, key: str, file: str) -> int | None:
        try:
            return os.open(os.path.join(self._files_dir(key), safe_file(file)),
                           os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
        except FileNotFoundError:
            self._files.pop(key, None)
            return None
        except OSError as exc:
            raise EdgeError(f"cannot open {file} of {key}: {exc}") from None

    def write_at(self, key: str, file: str, offset: int, data) -> bool:
        fd = self._open(key, file)
        if fd is None:
            return False
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            os.close(fd)
        return True

    def read_at(self, key: str, file: str, offset: int, size: int) -> bytes | None:
        fd = self._open(key, file)
        if fd is None:
            return None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def complete(self, key: str, files: dict[str, int]) -> None:
        fdir = self.path(key, mf.FILES_DIR)
        for name, size in files.items():
            fd = os.open(self._root.inside(fdir / safe_file(name)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            try:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(fdir)
        fsync_dir(self.path(key))

    @contextlib.contextmanager
    def local(self, key: str) -> Iterator[Path]:
        d = self.path(key)
        try:
            yield d
        finally:  # what verification read need not stay in the page cache
            try:
                for e in os.scandir(d / mf.FILES_DIR):
                    if e.is_file(follow_symlinks=False):
                        fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW)
                        drop_cache(fd)
                        os.close(fd)
            except OSError:
                pass

    def exists(self, key: str) -> bool:
        ensure_dirs(self.root, key.split("/")[:-1])  # every level checked (and made), none a symlink
        return no_symlink(self.path(key)).exists()

    def move(self, src: str, dest: str) -> None:
        parts = dest.split("/")
        ensure_dirs(self.root, parts[:-1])  # every level checked, none a symlink
        s, d = self.path(src), no_symlink(self.path(dest))
        os.rename(s, d)
        self._files.pop(src, None)
        fsync_dir(d.parent)
        fsync_dir(s.parent)

    def remove(self, key: str) -> None:
        self._files.pop(key, None)
        shutil.rmtree(self.path(key), ignore_errors=True)

    def touched(self, key: str) -> float:
        """The newest mtime of the key's directory, its entries and its files/ directory."""
        d = self.root / key
        newest = 0.0
        for p in (d, d / mf.FILES_DIR):
            try:
                newest = max(newest, os.stat(p).st_mtime)
                with os.scandir(p) as it:
                    for e in it:
                        try:
                            newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
                        except OSError:
                            pass
            except OSError:
                pass
        return newest

    def partials(self) -> Iterator[tuple[str, str]]:
        for ddir in _subdirs(self.root / TMP):
            if ddir.name == "locks":
                continue
            for tdir in _subdirs(ddir):
                yield ddir.name, tdir.name

    def prune(self, dev: str) -> None:
        """Drop a device's empty partial-transfer level."""
        try:
            (self.root / TMP / dev).rmdir()
        except OSError:
            pass

    def find(self, prefix: str, item: str) -> str | None:
        for cand in sorted((self.root / prefix).glob(f"*/{item}")):
            if (cand / mf.MANIFEST).is_file():
                self._root.inside(cand)
                return str(cand.relative_to(self.root))
        return None

    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def quarantine(self, key: str, dev: str, name: str, reason: str) -> str:
        ensure_dirs(self.root, [QUARANTINE, dev])
        q = f"{QUARANTINE}/{dev}/{name}"
        os.rename(self.path(key), no_symlink(self.path(q)))
        self._files.pop(key, None)
        atomic_write(self.path(q, "REASON.txt"), (reason + "\n").encode())
        return q


def _subdirs(d: Path) -> list[Path]:
    try:
        return [p for p in d.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def open_storage(where: str | os.PathLike) -> EvidenceStorage:
    """The storage of an archive: a directory (local or a shared mount). An object-store URL is
    refused with the reason (the interface has room for one; none is built)."""
    text = str(where)
    if "://" in text and not text.startswith("file://"):
        raise EdgeError(f"存储后端不支持 / storage {text!r}: only a POSIX directory (a local path or a shared mount "
                        "such as NFSv4 or CephFS) is built; an object store (s3://) fits the interface in "
                        "agent/archive/backend.py but no backend exists yet")
    return PosixStorage(Path(text.removeprefix("file://")).resolve())
