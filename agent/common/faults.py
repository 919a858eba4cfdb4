"""Crash points for fault-injection tests.

``EDGE_AGENT_CRASH_AT=name[,name...]`` makes the process SIGKILL itself when it reaches a named
point, so tests can stop a real process exactly between two durable steps (e.g. after the
manifest is written but before the ledger records it). ``EDGE_AGENT_FAULT_AT=name`` makes
:func:`faultpoint` raise instead (a thread that dies of an unforeseen error).
``EDGE_AGENT_PAUSE_AT=name`` makes :func:`pausepoint` hold the process there until the test lets
it go (another process acts meanwhile: e.g. takes its MQTT session). Unset in production: no-ops.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

_POINTS = frozenset(filter(None, os.environ.get("EDGE_AGENT_CRASH_AT", "").split(",")))


def crashpoint(name: str) -> None:
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)


_FAULTS = frozenset(filter(None, os.environ.get("EDGE_AGENT_FAULT_AT", "").split(",")))


class InjectedFault(RuntimeError):
    """Raised at a named point by ``EDGE_AGENT_FAULT_AT=name[,name...]`` (tests: a thread that dies)."""


def faultpoint(name: str) -> None:
    if name in _FAULTS:
        raise InjectedFault(f"fault injected at {name} (EDGE_AGENT_FAULT_AT)")


_PAUSES = frozenset(filter(None, os.environ.get("EDGE_AGENT_PAUSE_AT", "").split(",")))
#: the longest a pause point holds (a test that died does not leave the process hanging for ever)
PAUSE_MAX_S = 120.0
_paused: set[str] = set()


def pause_files(name: str, directory: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(``NAME.paused``, ``NAME.resume``) in ``directory`` (default ``EDGE_AGENT_PAUSE_DIR``, else the
    temporary directory): the first is written when the process reaches the point, the test writes
    the second to let it go on."""
    d = Path(directory or os.environ.get("EDGE_AGENT_PAUSE_DIR") or tempfile.gettempdir())
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return d / f"{stem}.paused", d / f"{stem}.resume"


def pausepoint(name: str) -> None:
    """At a point named in ``EDGE_AGENT_PAUSE_AT``: write ``NAME.paused`` (our pid), then wait until
    ``NAME.resume`` exists (at most :data:`PAUSE_MAX_S`). Only the first time the process gets there."""
    if name not in _PAUSES or name in _paused:
        return
    _paused.add(name)
    paused, resume = pause_files(name)
    paused.write_text(str(os.getpid()), encoding="utf-8")
    deadline = time.monotonic() + PAUSE_MAX_S
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
