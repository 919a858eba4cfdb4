"""Fail-back (``mqtt.failback_s``): when a :class:`agent.wire.mqtt.Connection` on a fallback broker
moves back to the primary.

On a fallback the primary is probed every ``failback_s`` (a CONNECT of its own through
:func:`agent.wire.client.probe`, and the owner's check of what the primary shows, e.g. an archive
receiver online there); once it passes, the move is due at the owner's safe point, or after
:data:`FAILBACK_SETTLE_S` at most (``failback_s`` when shorter). The connection then leaves
cleanly (agent/wire/mqtt.py)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .client import ConnSettings, probe

log = logging.getLogger(__name__)

#: once the primary passed its probe, the longest wait for the owner's safe point
FAILBACK_SETTLE_S = 30.0


class Failback:
    """The fail-back probe's state for one connection. ``probe()`` gives (subscriptions, a test one
    of their messages must pass) or None: what the primary must show beyond a CONNACK;
    ``safe_point()`` is True at the owner's moment to move."""

    def __init__(self, settings: ConnSettings, *, name: str, stop_event: threading.Event,
                 probe: Callable[[], tuple[tuple[str, ...], Callable[[str, bytes], bool]] | None] | None = None,
                 safe_point: Callable[[], bool] | None = None):
        self.s = settings
        self.name = name
        self.stop_event = stop_event
        self._probe = probe
        self._safe_point = safe_point
        self._probe_at: float | None = None
        self._primary_ok_at: float | None = None
        #: the latest probe: "ok", or why the primary was not taken back
        self.last_probe: str | None = None

    @property
    def primary(self) -> str:
        return "%s:%s" % self.s.brokers[0]

    @property
    def pending(self) -> bool:
        """The primary passed its probe: the move is due at the next safe point."""
        return self._primary_ok_at is not None

    def connected(self) -> None:
        """A connection is up: the first probe in ``failback_s``."""
        self._probe_at = time.monotonic() + self.s.failback_s

    def reset(self) -> None:
        """The connection ended: a pending move is forgotten."""
        self._primary_ok_at = None

    def due(self, on_fallback: bool) -> bool:
        """On a fallback (connected): probe the primary every failback_s; once it passed, True at the
        owner's safe point or after FAILBACK_SETTLE_S (or failback_s, when shorter)."""
        if not on_fallback or not self.s.failback_s or self._probe_at is None:
            return False
        now = time.monotonic()
        if self._primary_ok_at is None:
            if now < self._probe_at:
                return False
            host, port = self.s.brokers[0]
            try:
                need = self._probe() if self._probe else None
            except Exception:
                log.exception("fail-back probe set-up failed")
                need = None
            why = probe(self.s, host, port, timeout=min(self.s.connect_timeout, 5.0), stop=self.stop_event,
                        subscribe=need[0] if need else (), accept=need[1] if need else None)
            self._probe_at = time.monotonic() + self.s.failback_s
            self.last_probe = why or "ok"
            if why:
                log.info("%s: primary %s not taken back: %s", self.name, self.primary, why)
                return False
            log.info("%s: primary %s is back: moving to it at the next safe point", self.name, self.primary)
            self._primary_ok_at = now
        if now - self._primary_ok_at >= min(FAILBACK_SETTLE_S, self.s.failback_s):
            return True
        try:
            return self._safe_point is None or bool(self._safe_point())
        except Exception:
            log.exception("safe_point check failed")
            return True
