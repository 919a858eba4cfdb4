"""The equipment rule (配备率), one function for everyone who counts it.

The docking station's registry (agent/dock/registry.py, the ``ratio`` report it publishes), the
monitor's unit view (agent/monitor/state.py) and ``edge-agent report ratio``
(agent/monitor/reports.py) all decide with these functions, so the same recorders and officers
give the same number and the same verdict everywhere.

A recorder counts toward its unit only when it is

* **enrolled**: in the station's registry and in service (a technician may take one out of
  service in the registry);
* **assigned**: to an officer, by the station (``dock assign``, the unit policy) or by the officer
  number it reports being on the roster;
* **healthy**: its admin password check passed at its last docking and no other recorder claims
  its serial.

Every recorder left out carries a reason (:data:`REASONS`) so the report says why it is out.

The thresholds (at least ``min_ratio_pct`` recorders per 100 officers, 20 = one per five; at
least ``min_rooms`` interview rooms per unit) are a rule of the unit's signed policy
(``rules.equipment``, agent/wire/policy.py; docs/custody.md). A station judges by the policy it
has in force; only while none has been applied by its configuration (``dock.min_ratio_pct``,
``dock.min_rooms``). Each station's ratio report carries the thresholds and their source, and
the monitor judges a unit by the newest policy its stations report (else the strictest
configured values); the defaults below apply only when no station of a unit has said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

#: used when no station of the unit reported its thresholds
DEFAULT_MIN_RATIO_PCT = 20
DEFAULT_MIN_ROOMS = 1

#: why a recorder does not count: code -> (中文, English)
REASONS: dict[str, tuple[str, str]] = {
    "not_in_service": ("已停用", "taken out of service"),
    "unassigned": ("未分配给名册中的警员", "not assigned to an officer on the roster"),
    "auth_failed": ("上次接入时管理员密码校验失败", "failed its admin password check at its last docking"),
    "conflict": ("编号冲突（两台记录仪报同一编号）", "serial claimed by two recorders"),
}


#: where thresholds came from: the unit's signed policy, the station's config, the defaults
SOURCES = ("policy", "config", "default")


@dataclass(frozen=True)
class Thresholds:
    min_ratio_pct: int = DEFAULT_MIN_RATIO_PCT
    min_rooms: int = DEFAULT_MIN_ROOMS
    source: str = "default"
    policy_version: int | None = None
    policy_key_id: str | None = None

    def describe(self) -> dict:
        """The source as reports print it: {"source", "policy_version", "policy_key_id"}."""
        return {"source": self.source, "policy_version": self.policy_version, "policy_key_id": self.policy_key_id}

    def label(self) -> str:
        """One line for a person, in Chinese and English."""
        if self.source == "policy":
            return f"单位策略 unit policy v{self.policy_version} (key {self.policy_key_id})"
        if self.source == "config":
            return "工作站配置 station config (dock.min_ratio_pct, dock.min_rooms; 尚未应用单位策略 no unit policy applied)"
        return "默认值 defaults (1:5, 1 room)"


def exclusion(*, in_service: bool, assigned: bool, auth_ok: bool | None, conflict: bool) -> str | None:
    """Why a recorder does not count (a :data:`REASONS` code), or None when it counts. The first
    reason that applies is given, in the order enrolled, healthy, assigned."""
    if not in_service:
        return "not_in_service"
    if conflict:
        return "conflict"
    if auth_ok is False:
        return "auth_failed"
    if not assigned:
        return "unassigned"
    return None


def reason_text(code: str) -> str:
    zh, en = REASONS[code]
    return f"{zh} / {en}"


def ratio_pct(recorders: int, officers: int | None) -> int | None:
    """Recorders per 100 officers, rounded down; None without officers."""
    return recorders * 100 // officers if officers else None


def meets_ratio(recorders: int, officers: int | None, min_ratio_pct: int) -> bool | None:
    """True when ``recorders`` per 100 ``officers`` reach ``min_ratio_pct`` (exact, no rounding);
    None when the officers are unknown; a unit without officers needs no recorder."""
    if officers is None:
        return None
    return officers == 0 or recorders * 100 >= min_ratio_pct * officers


def compliance(recorders: int, officers: int | None, rooms: int, t: Thresholds) -> dict:
    """The verdict of one unit, as the monitor page, its API and the reports show it."""
    ok = meets_ratio(recorders, officers, t.min_ratio_pct)
    rooms_ok = rooms >= t.min_rooms
    return {"recorders": recorders, "officers": officers,
            "ratio": round(recorders / officers, 3) if officers else None,
            "ratio_pct": ratio_pct(recorders, officers),
            "min_ratio": round(t.min_ratio_pct / 100, 3), "min_ratio_pct": t.min_ratio_pct,
            "ratio_ok": ok, "rooms": rooms, "min_rooms": t.min_rooms, "rooms_ok": rooms_ok,
            "compliant": bool(ok) and rooms_ok, "thresholds": t.describe()}


def thresholds_of(reports: list[Mapping]) -> Thresholds:
    """The thresholds a unit's stations reported: those of the newest unit policy any of them has
    in force (``threshold_source`` "policy", ``policy_version``); else the strictest configured
    ones when they differ; else the defaults."""
    pol = [r for r in reports if r.get("threshold_source") == "policy" and r.get("policy_version") is not None
           and r.get("min_ratio_pct") and r.get("min_rooms") is not None]
    if pol:
        r = max(pol, key=lambda r: r["policy_version"])
        return Thresholds(r["min_ratio_pct"], r["min_rooms"], "policy", r["policy_version"], r.get("policy_key_id"))
    pcts = [r["min_ratio_pct"] for r in reports if r.get("min_ratio_pct")]
    rooms = [r["min_rooms"] for r in reports if r.get("min_rooms") is not None]
    if not pcts and not rooms:
        return Thresholds()
    return Thresholds(max(pcts) if pcts else DEFAULT_MIN_RATIO_PCT, max(rooms) if rooms else DEFAULT_MIN_ROOMS,
                      "config")
