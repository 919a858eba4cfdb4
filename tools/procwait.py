"""Wait until a child process handles a signal, so that sending it does not kill the child.

Mosquitto opens its listening sockets before it installs its SIGHUP handler: a SIGHUP sent in the
short window after the port answers terminates the broker (the default action) instead of making it
reread its password file and ACL. Whoever reloads a broker it has just started waits here first.
"""

from __future__ import annotations

import signal
import time


def handles(pid: int, sig: int = signal.SIGHUP) -> bool:
    """True when process ``pid`` has a handler installed for ``sig`` (Linux: SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    except (OSError, ValueError):
        return False
    return False


def wait_handles(pid: int, sig: int = signal.SIGHUP, timeout: float = 10.0) -> bool:
    """Wait (up to ``timeout`` s) until ``pid`` handles ``sig``; False if it never did."""
    deadline = time.monotonic() + timeout
    while not handles(pid, sig):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True
