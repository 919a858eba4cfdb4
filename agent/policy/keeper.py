"""The policy in force on this station, and the checks before another one replaces it.

:class:`PolicyKeeper` takes each payload of ``P/unit/U/policy`` (agent/wire/policy.py) and applies
it only when the signature verifies with a pinned policy key, the unit is this station's, the
version is above the one in force and it has not expired. The applied document is kept in the
ledger's meta (through the store: ``policy.in_force``; ``policy.version`` for the health report),
so a restart keeps it; it is handed to the appliers (the dock's roster and erase policy). A
refused one is audited, kept as ``policy.last_refused`` and raises alarm ``policy_refused`` (or,
genuinely signed by newer software with rules this one does not know, ``policy_upgrade_needed``); a
policy in force past its expiry raises ``policy_expired`` (someone may be holding newer ones back).

Time comes from ``clock`` (tests move it; nothing here sleeps).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from agent.common.errors import EdgeError
from agent.common.timeutil import now_iso
from agent.evidence import keys
from agent.wire import policy as wp
from agent.wire.receipts import ArchiveTrust
from agent.store import policy_rules

log = logging.getLogger(__name__)

META_IN_FORCE = policy_rules.META_IN_FORCE  # "policy.in_force", read by the station's enforcement too
META_VERSION = "policy.version"
META_REFUSED = "policy.last_refused"

Applier = Callable[[wp.Document, str], None]


def keys_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "keys" / "policy"


def pinned_ring(data_dir: str | Path, extra: list[str] = ()) -> keys.KeyRing:
    """The policy keys pinned on this station: DATA_DIR/keys/policy/*.pub and ``policy.keys``
    (files or directories of *.pub); a named file that is missing or no key is an EdgeError."""
    try:
        return ArchiveTrust.load([keys_dir(data_dir), *extra]).ring
    except EdgeError as exc:
        raise EdgeError(f"policy.keys: {exc}") from None


def pin_key(data_dir: str | Path, path: Path) -> tuple[str, Path]:
    """Copy a policy public key into DATA_DIR/keys/policy/ (named by key id)."""
    return keys.pin_public(path, keys_dir(data_dir), "policy")


def in_force(store) -> dict | None:
    """What ``edge-agent policy show`` prints: the record of the document in force, or None."""
    raw = store.get_meta(META_IN_FORCE)
    if not raw:
        return None
    rec = json.loads(raw)
    rec["document"] = json.loads(rec["payload"])
    return rec


def last_refused(store) -> dict | None:
    raw = store.get_meta(META_REFUSED)
    return json.loads(raw) if raw else None


class PolicyKeeper:
    def __init__(self, store, unit: str, ring: Callable[[], keys.KeyRing], *, alarms=None, appliers: list[Applier] | None = None,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.unit = unit
        self.ring = ring              # read at every message: a key pinned later counts at once
        self.alarms = alarms          # an AlarmPort (agent/common/ports.py) or None
        self.appliers = appliers or []
        self.clock = clock
        self.lock = threading.Lock()
        self.applied = 0
        self.refused = 0
        self.handled = 0              # messages considered, whatever the outcome
        self._handled_cv = threading.Condition()
        self.outcomes: list[str] = []  # the last outcomes, newest last (status, tests)

    # --- what is in force -------------------------------------------------------------------
    def current(self) -> dict | None:
        return in_force(self.store)

    def _in_force_key(self) -> tuple[int, str] | None:
        rec = self.current()
        return (rec["version"], rec["sha256"]) if rec else None

    # --- one message --------------------------------------------------------------------------
    def offer(self, payload: bytes, source: str) -> str:
        """Consider one payload received from ``source`` (topic and broker). Returns "applied",
        "same" (the version in force again) or "refused"."""
        try:
            outcome = self._offer(payload, source)
        finally:
            with self._handled_cv:
                self.handled += 1
                self._handled_cv.notify_all()
        self.outcomes = (self.outcomes + [outcome])[-20:]
        return outcome

    def wait_handled(self, n: int, timeout: float) -> bool:
        """Block until ``n`` messages have been considered in all (or ``timeout`` passes)."""
        with self._handled_cv:
            return self._handled_cv.wait_for(lambda: self.handled >= n, timeout)

    def _offer(self, payload: bytes, source: str) -> str:
        with self.lock:
            if not payload:
                log.warning("policy: empty message on %s ignored", source)
                return "same"
            try:
                ring = self.ring()
            except EdgeError as exc:  # a pinned key file named in the config is unreadable
                self._refuse(wp.PolicyError("unknown_key", f"策略公钥无法读取 / pinned policy keys unreadable: {exc}"),
                             payload, source)
                return "refused"
            try:
                doc = wp.verify(payload, ring, unit=self.unit, now=self.clock(),
                                in_force=self._in_force_key())
            except wp.PolicyError as exc:
                self._refuse(exc, payload, source)
                return "refused"
            if doc is None:
                return "same"
            rec = {"version": doc.version, "unit": doc.unit, "key_id": doc.key_id, "issued": doc.issued,
                   "expires": doc.expires, "sha256": wp.digest(payload), "applied_at": now_iso(), "source": source,
                   "payload": payload.decode("utf-8")}
            old = self.current()
            self.store.set_meta(META_IN_FORCE, json.dumps(rec, ensure_ascii=False, sort_keys=True))
            self.store.set_meta(META_VERSION, str(doc.version))
            self.store.audit.append("policy-applied", None, actor=f"policy-key:{doc.key_id}", unit=doc.unit,
                                    version=doc.version, previous=old["version"] if old else None,
                                    sha256=rec["sha256"], source=source, expires=doc.expires)
            self.applied += 1
            log.info("policy: version %s of unit %s applied (key %s, from %s)", doc.version, doc.unit, doc.key_id,
                     source)
            self._alarm_clear("policy_refused")
            self._alarm_clear("policy_upgrade_needed")
            self._alarm_clear("policy_expired")
            self._apply(doc)
            return "applied"

    def _refuse(self, exc: wp.PolicyError, payload: bytes, source: str) -> None:
        self.refused += 1
        detail = {"at": now_iso(), "reason": exc.reason, "message": str(exc), "source": source,
                  "sha256": wp.digest(payload), "bytes": len(payload)}
        self.store.set_meta(META_REFUSED, json.dumps(detail, ensure_ascii=False, sort_keys=True))
        self.store.audit.append("policy-refused", None, actor="policy", reason=exc.reason, message=str(exc),
                                source=source, sha256=detail["sha256"])
        log.warning("policy refused (%s) from %s: %s", exc.reason, source, exc)
        zh, _, en = str(exc).partition(" / ")
        if exc.reason == "upgrade_needed":  # genuine, but from newer software: not an attack, not to be ignored
            self._alarm_raise("policy_upgrade_needed", zh[:240], (en or zh)[:400])
            return
        self._alarm_raise("policy_refused", f"已拒绝下发的策略：{zh}"[:240], f"policy refused: {en or zh}"[:400])

    # --- applying -------------------------------------------------------------------------------
    def _apply(self, doc: wp.Document) -> None:
        actor = f"policy v{doc.version} ({doc.key_id})"
        for fn in self.appliers:
            try:
                fn(doc, actor)
            except Exception:
                log.exception("policy: applying version %s failed in %s", doc.version, getattr(fn, "__name__", fn))

    def reapply(self) -> None:
        """At start: hand the document in force to the appliers again (a crash may have come
        between keeping it and applying it; applying is idempotent)."""
        rec = self.current()
        if rec is None:
            return
        try:
            doc, _ = wp.parse(rec["payload"].encode("utf-8"))
        except wp.PolicyError as exc:
            log.error("policy in force unreadable: %s", exc)
            return
        self._apply(doc)

    def check_expiry(self) -> bool:
        """Raise ``policy_expired`` while the policy in force is past its expiry; True if so."""
        rec = self.current()
        if rec is None:
            return False
        doc = wp.parse(rec["payload"].encode("utf-8"))[0]
        if doc.expires_ts() <= self.clock():
            self._alarm_raise("policy_expired", f"执行中的策略（版本 {doc.version}）已于 {doc.expires} 过期，未收到新版本",
                              f"the policy in force (version {doc.version}) expired at {doc.expires}; "
                              "no newer version has arrived")
            return True
        self._alarm_clear("policy_expired")
        return False

    # --- alarms through the port ----------------------------------------------------------------
    def _alarm_raise(self, code: str, zh: str, en: str) -> None:
        if self.alarms is not None:
            try:
                self.alarms.raise_alarm(code, zh, en, source="policy")
            except Exception:
                log.exception("raising %s failed", code)

    def _alarm_clear(self, code: str) -> None:
        if self.alarms is not None:
            try:
                self.alarms.clear_alarm(code, source="policy")
            except Exception:
                log.exception("clearing %s failed", code)
