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
from pathlib import Path

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
            raise P.ProtocolError(f"path {path} escapes the archive root")
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
