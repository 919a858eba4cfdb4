"""The unit policy on the station (issue 18, "Policy down to the station"; docs/custody.md).

The policy component subscribes to its unit's retained ``P/unit/U/policy`` through the uplink's
contract (``subscribe``), hands each message to :class:`~agent.policy.keeper.PolicyKeeper`
(signature, unit, version, expiry; kept in the ledger's meta through the store) and applies what
it accepts: on a docking station the roster and recorder assignments go to the dock's registry
(agent/dock/registry.py ``apply_central``), the erase policy to the station (its
``dock.erase_policy`` command) and the equipment thresholds (``rules.equipment``) to the
station's ratio report (``DockStation.apply_policy_thresholds``; the config's dock.min_ratio_pct
and dock.min_rooms count only while no policy has been applied). On every station, first, the
archive trust list (``archive_keys``) revokes and pins receiver keys (agent/policy/archive_keys.py). Alarms go through the port it
is handed (the health component).

A station that was offline gets the newest document when it connects again: the broker keeps it
retained and delivers it on every (re)subscription; the same version again changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from agent.wire import policy as wp
from agent.wire.topics import Topics
from .archive_keys import ArchiveKeysApplier
from .keeper import PolicyKeeper, pinned_ring

log = logging.getLogger(__name__)

#: how often the station checks that the policy in force has not expired
EXPIRY_CHECK_S = 60.0


class PolicyComponent:
    name = "policy"

    def __init__(self, agent, alarms=None, clock: Callable[[], float] = time.time):
        self.agent = agent
        cfg = agent.cfg
        self.topic = Topics(cfg.mqtt.topic_prefix).unit_policy(cfg.device.unit_code)
        self.source = f"{self.topic} @ {cfg.mqtt.host}:{cfg.mqtt.port}"
        appliers = [ArchiveKeysApplier(agent, alarms)]  # every station: whose receipts count
        if cfg.device.kind == "dock":
            appliers += [self._apply_roster, self._apply_erase_policy, self._apply_thresholds]
        self.keeper = PolicyKeeper(agent.store, cfg.device.unit_code, lambda: pinned_ring(cfg.data_dir, cfg.policy.keys),
                                   alarms=alarms, appliers=appliers, clock=clock)
        if cfg.device.kind == "dock":  # before the station's first ratio report: the thresholds in force
            t = thresholds_in_force(agent.store)
            if t is not None:
                self._station_thresholds(t)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- component --------------------------------------------------------------------------
    def start(self) -> None:
        self.keeper.reapply()
        if self.agent.uplink is not None:
            self.agent.uplink.subscribe(self.topic, self.on_message)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def status(self) -> dict:
        rec = self.keeper.current()
        return {"state": "ok", "topic": self.topic, "version": rec["version"] if rec else None,
                "expires": rec["expires"] if rec else None, "applied": self.keeper.applied,
                "refused": self.keeper.refused}

    def on_message(self, topic: str, payload: bytes, _props=None) -> str:
        return self.keeper.offer(bytes(payload), self.source)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.keeper.check_expiry()
            except Exception:
                log.exception("policy expiry check failed")
            self._stop.wait(EXPIRY_CHECK_S)

    # --- appliers (docking station) -----------------------------------------------------------
    def _apply_roster(self, doc: wp.Document, actor: str) -> None:
        from agent.dock.registry import Officer, Registry

        names = {u.code: u.name for u in doc.units}
        reg = Registry(self.agent.cfg.data_dir)
        try:
            n = reg.apply_central([Officer(o.number, o.name, o.unit, names.get(o.unit, "")) for o in doc.officers],
                                  {a.recorder: a.officer for a in doc.assignments}, actor)
        finally:
            reg.close()
        log.info("policy: roster of %d officer(s) and %d assignment(s) applied", n, len(doc.assignments))

    def _apply_thresholds(self, doc: wp.Document, actor: str) -> None:
        t = wp.thresholds(doc)
        self._station_thresholds(t)
        log.info("policy: equipment thresholds %s%% recorders per officers, %s room(s) (%s)", t.min_ratio_pct,
                 t.min_rooms, actor)

    def _station_thresholds(self, t) -> None:
        station = next((c for c in self.agent.components if getattr(c, "name", None) == "dock"), None)
        if station is None:
            log.warning("policy: no docking station running to take the equipment thresholds")
            return
        station.apply_policy_thresholds(t)

    def _apply_erase_policy(self, doc: wp.Document, actor: str) -> None:
        want = doc.rules.erase_policy
        if want is None or want == self.agent.cfg.dock.erase_policy:
            return
        handler = self.agent.commands.get("dock.erase_policy")
        if handler is None:
            log.warning("policy: no docking station running to take erase policy %s", want)
            return
        handler({"policy": want}, actor)


def thresholds_in_force(store):
    """The equipment thresholds of the unit policy in force on this station (agent/common/ratio.py
    ``Thresholds``, source "policy"), or None while no policy has been applied."""
    from .keeper import in_force

    rec = in_force(store)
    if rec is None:
        return None
    try:
        doc, _ = wp.parse(rec["payload"].encode("utf-8"))
    except wp.PolicyError as exc:
        log.error("policy in force unreadable: %s", exc)
        return None
    return wp.thresholds(doc)


def station_thresholds(store, cfg):
    """What a station judges its ratio by: the policy in force, else dock.min_ratio_pct / dock.min_rooms."""
    from agent.common.ratio import Thresholds

    return thresholds_in_force(store) or Thresholds(cfg.dock.min_ratio_pct, cfg.dock.min_rooms, "config")


def make_component(agent, alarms=None) -> PolicyComponent:
    return PolicyComponent(agent, alarms=alarms)
