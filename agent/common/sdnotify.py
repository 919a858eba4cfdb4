"""Minimal sd_notify(3) for Type=notify units with WatchdogSec (no dependency).

    from agent import sdnotify
    sdnotify.ready("listening")               # after start-up is complete
    wd = sdnotify.Watchdog(healthy=agent.is_healthy).start()   # no-op without WATCHDOG_USEC
    ...
    sdnotify.stopping(); wd.stop()

Outside systemd ($NOTIFY_SOCKET unset) every call is a cheap no-op returning False.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr[0] == "@":  # abstract namespace
        return "\0" + addr[1:]
    if addr[0] == "/":
        return addr
    return None  # vsock:... and other forms are not supported


def notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1\\nSTATUS=ok") to the service manager. True if sent."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(state.encode("utf-8"))
        return True
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", addr, exc)
        return False


def _with_status(state: str, status: str | None) -> str:
    if status:
        state += "\nSTATUS=" + status.replace("\n", " ")
    return state


def ready(status: str | None = None) -> bool:
    return notify(_with_status("READY=1", status))


def status(text: str) -> bool:
    return notify(_with_status("", text).lstrip("\n"))


def watchdog() -> bool:
    return notify("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    return notify(_with_status("STOPPING=1", status))


def reloading(status: str | None = None) -> bool:
    return notify(_with_status("RELOADING=1", status))


def watchdog_trigger() -> bool:
    """Tell systemd the service is hung now (it will act as if the watchdog expired)."""
    return notify("WATCHDOG=trigger")


def watchdog_interval() -> float | None:
    """The watchdog timeout in seconds from $WATCHDOG_USEC, or None if not enabled for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 every ``interval / 2`` seconds while ``healthy()`` returns True.

    When ``healthy()`` returns False (or raises) the ping is withheld, so systemd restarts
    the service after WatchdogSec; pings resume if health comes back first.
    ``interval`` defaults to :func:`watchdog_interval`; without one, ``start()`` does nothing.
    """

    def __init__(
        self,
        healthy: Callable[[], bool] | None = None,
        interval: float | None = None,
        send: Callable[[], bool] = watchdog,
    ) -> None:
        self.healthy = healthy or (lambda: True)
        self.interval = interval if interval is not None else watchdog_interval()
        self._send = send
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.withheld = 0

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.interval > 0

    def start(self) -> "Watchdog":
        if not self.enabled or self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()
        return self

    def _check(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:  # a broken health check is unhealthy, not a crash of the pinger
            log.exception("watchdog health check raised")
            return False

    def _run(self) -> None:
        assert self.interval is not None
        period = self.interval / 2
        while not self._stop.is_set():
            if self._check():
                if self._send():
                    self.pings += 1
            else:
                self.withheld += 1
                log.warning("health check failed: withholding watchdog ping", extra={"withheld": self.withheld})
            self._stop.wait(period)

    def stop(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
