"""Crash points for fault-injection tests.

``EDGE_AGENT_CRASH_AT=name[,name...]`` makes the process SIGKILL itself when it reaches a named
point, so tests can stop a real process exactly between two durable steps (e.g. after the
manifest is written but before the ledger records it). ``EDGE_AGENT_FAULT_AT=name`` makes
:func:`faultpoint` raise instead (a thread that dies of an unforeseen error). Unset in
production: no-ops.
"""

from __future__ import annotations

import os
import signal

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
