"""Crash points for fault-injection tests.

``EDGE_AGENT_CRASH_AT=name[,name...]`` makes the process SIGKILL itself when it reaches a named
point, so tests can stop a real process exactly between two durable steps (e.g. after the
manifest is written but before the ledger records it). Unset in production: a no-op.
"""

from __future__ import annotations

import os
import signal

_POINTS = frozenset(filter(None, os.environ.get("EDGE_AGENT_CRASH_AT", "").split(",")))


def crashpoint(name: str) -> None:
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
