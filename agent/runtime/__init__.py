"""The long-running agent (`edge-agent run`): recovers the store, starts the producers (dock or
room), the uplink and health, and stops them all on SIGTERM.

A component is any object with ``name``, ``start()``, ``stop()`` and ``status() -> dict``.
Components find each other through the :class:`Agent` (``agent.store``, ``agent.uplink``,
``agent.health``, ``agent.commands``); producers never touch MQTT directly: the dock is handed its
ports (agent/common/ports.py) by :func:`build_agent`.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Protocol

from ..config import Config
from ..store.store import Store

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

    def run(self, events: Callable[[str, dict], None] | None = None, every: float = 10.0) -> None:
        """Start, notify systemd, wait for SIGTERM/SIGINT, stop. ``events(name, fields)`` (the CLI's
        --json) hears "started", a "status" every ``every`` seconds and "stopped"."""
        import time

        from agent.common import sdnotify

        def _sig(signum, _frame):
            log.info("signal %s: stopping", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _sig)
        signal.signal(signal.SIGINT, _sig)
        self.start()
        sdnotify.ready()
        if events:
            events("started", {"device": self.cfg.device.id, "kind": self.cfg.device.kind,
                               "components": [c.name for c in self.components]})
        interval = sdnotify.watchdog_interval()
        next_status = time.monotonic() + every
        while not self.stop_event.wait(min(interval / 2 if interval else 1.0, every)):
            if interval:
                sdnotify.watchdog()
            if events and time.monotonic() >= next_status:
                next_status = time.monotonic() + every
                events("status", {"device": self.cfg.device.id, "store": self.store.status(),
                                  "components": self.status()})
        sdnotify.stopping()
        self.stop()
        if events:
            events("stopped", {"device": self.cfg.device.id})

    def status(self) -> dict:
        return {c.name: c.status() for c in self.components}

    # --- central commands ---------------------------------------------------------------------
    @property
    def gate(self):
        if getattr(self, "_gate", None) is None:
            from agent.wire.commands import CommandGate, operator_keys_dir

            self._register_builtin_commands()
            self._gate = CommandGate(self.store, self.cfg.device.id, operator_keys_dir(self.cfg),
                                     self.cfg.commands.max_age_s, self.commands)
        return self._gate

    def _register_builtin_commands(self) -> None:
        from .. import config as config_mod
        from agent.common.errors import EdgeError

        def status(_args: dict, _actor: str) -> dict:
            return {"store": self.store.status(), "components": self.status()}

        def config_set(args: dict, actor: str) -> dict:
            key, value = args.get("key"), args.get("value")
            if not isinstance(key, str) or not isinstance(value, (str, int, bool, list)):
                raise EdgeError("config.set needs args {key: SECTION.KEY, value}")
            if key.startswith(("commands.", "storage.data_dir")):
                raise EdgeError(f"{key} cannot be changed remotely")
            if self.cfg.path is None:
                raise EdgeError("the agent runs without a config file")
            new = config_mod.set_value(self.cfg.path, key, value)  # text as on the command line, or a typed value
            self.store.audit.append("config", None, actor=actor, key=key, new=new)
            return {"key": key, "value": new, "applies": "at the next restart of the agent"}

        def erase_policy(args: dict, actor: str) -> dict:
            return config_set({"key": "dock.erase_policy", "value": args.get("policy")}, actor)

        def clock_sync(_args: dict, _actor: str) -> dict:
            import shutil
            import subprocess

            for cmd in (["chronyc", "makestep"], ["timedatectl", "set-ntp", "true"]):
                if shutil.which(cmd[0]):
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
                    return {"ran": " ".join(cmd), "rc": p.returncode, "output": (p.stdout + p.stderr)[-500:]}
            raise EdgeError("no time synchronisation tool (chronyc or timedatectl) on this device")

        self.commands.setdefault("status", status)
        self.commands.setdefault("config.set", config_set)
        self.commands.setdefault("dock.erase_policy", erase_policy)
        self.commands.setdefault("clock.sync", clock_sync)

    def dispatch_command(self, payload: bytes, properties=None) -> dict:
        """Called by the uplink for each message on P/dev/D/cmd: verify, run, audit, answer."""
        response = self.gate.handle(payload)
        if self.uplink is not None:
            topic = getattr(properties, "ResponseTopic", None) or self.uplink.topics.cmd_resp(self.cfg.device.id)
            corr = getattr(properties, "CorrelationData", None)
            try:
                self.uplink.publish(topic, response, qos=1, retain=False,
                                    **({"correlation_data": corr} if corr else {}))
            except TypeError:  # an uplink without correlation support
                self.uplink.publish(topic, response, qos=1, retain=False)
        return response


def build_agent(cfg: Config) -> Agent:
    """The Agent of ``edge-agent run``, in start order: the uplink (unless ``uplink.enabled`` is
    off), health, the producer of the configured kind (``agent.dock`` or ``agent.room``), the
    unit policy (``agent.policy``, with the uplink) and the local control socket.

    The producers are handed their ports (agent/common/ports.py): the health component is the
    dock's ``AlarmPort`` and ``ReportPort`` and the room's ``AlarmPort`` (and its ``tick`` the
    room's ``refresh``), so neither producer reaches MQTT itself; the pinned archive keys
    (``agent.uplink.trust.ReceiptCheck``) are the dock's ``ReceiptPort``."""
    from agent import health, uplink
    from agent.common import control

    agent = Agent(cfg)
    up = uplink.make_component(agent)
    if up is not None:
        agent.add(up)
    h = agent.add(health.make_component(agent))
    if cfg.device.kind == "dock":
        from agent import dock

        from agent.uplink.trust import ReceiptCheck

        agent.add(dock.make_component(agent, alarms=h, report=h, receipts=ReceiptCheck(cfg)))
    else:
        from agent import room

        agent.add(room.make_component(agent, alarms=h, refresh=h.tick))
    if up is not None:  # the unit's signed policy comes over the uplink; after the producer, whose
        from agent import policy  # erase-policy command it uses

        agent.add(policy.make_component(agent, alarms=h))
    agent.add(control.make_component(agent))
    return agent
