"""The long-running agent (`edge-agent run`): recovers the store, starts the producers (dock or
room), the uplink and health, and stops them all on SIGTERM.

A component is any object with ``name``, ``start()``, ``stop()`` and ``status() -> dict``.
Components find each other through the :class:`Agent` (``agent.store``, ``agent.uplink``,
``agent.health``, ``agent.commands``); producers never touch MQTT directly.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Protocol

from .config import Config
from .store.store import Store

log = logging.getLogger(__name__)


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> dict: ...


class Agent:
    def __init__(self, cfg: Config, store: Store | None = None):
        self.cfg = cfg
        self.store = store or Store(cfg)
        self.stop_event = threading.Event()
        self.components: list[Component] = []
        #: command name -> handler(args: dict, actor: str) -> dict; MQTT commands and the control socket use it
        self.commands: dict[str, Callable[[dict, str], dict]] = {}
        self.uplink: Any = None
        self.health: Any = None

    def add(self, component: Component) -> Component:
        self.components.append(component)
        return component

    def command(self, name: str):
        def deco(fn):
            self.commands[name] = fn
            return fn
        return deco

    def start(self) -> None:
        actions = self.store.recover()
        if actions:
            log.warning("recovered %d item(s) after an unclean stop", len(actions))
        for c in self.components:
            log.info("starting %s", c.name)
            c.start()

    def stop(self) -> None:
        self.stop_event.set()
        for c in reversed(self.components):
            try:
                c.stop()
            except Exception:
                log.exception("stopping %s failed", c.name)

    def run(self) -> None:
        """Start, notify systemd, wait for SIGTERM/SIGINT, stop."""
        from . import sdnotify

        def _sig(signum, _frame):
            log.info("signal %s: stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        self.start()
        sdnotify.ready()
        interval = sdnotify.watchdog_interval()
        while not self.stop_event.wait(interval / 2 if interval else 1.0):
            if interval:
                sdnotify.watchdog()
        sdnotify.stopping()
        self.stop()

    def status(self) -> dict:
        return {c.name: c.status() for c in self.components}
