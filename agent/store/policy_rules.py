"""The rules of the unit policy in force, as the station enforces them (docs/custody.md).

The policy keeper (agent/policy/keeper.py) verifies and applies a signed unit policy and keeps it
in the ledger's meta (``policy.in_force``). This module reads the applied document's rules for the
parts of the station that enforce them, which may not import the policy or wire packages:

* the allowed case-number pattern (``case_number_pattern``): :func:`check_case_number`, called at
  ingest, at an interview room's start and when a case number is annotated;
* the upload deadline (``upload_deadline_h``): :func:`overdue`, the station's unarchived items
  whose capture ended (recorder clock corrected by the sealed drift) more than the deadline ago,
  per officer and recorder (the health component's ``upload_overdue`` alarms);
* the quotas (``quotas.max_unarchived_items`` / ``max_unarchived_gb``): :func:`quota_exceeded`
  (the ``quota_exceeded`` alarm).

Without a policy in force nothing here applies (the station's own settings do).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any

from agent.common.errors import MetadataError
from agent.evidence import manifest as mf, timing

#: the ledger meta key the policy keeper writes (agent/policy/keeper.py uses this name)
META_IN_FORCE = "policy.in_force"
#: states of a sealed item that has not reached the archive
_WAITING = ("sealed", "uploading", "rejected")


def rules_in_force(store) -> dict[str, Any] | None:
    """The rules of the applied policy, with its ``version``; None without one."""
    raw = store.get_meta(META_IN_FORCE)
    if not raw:
        return None
    try:
        doc = json.loads(json.loads(raw)["payload"])
        return {**doc["rules"], "version": doc["version"]}
    except (ValueError, KeyError, TypeError):
        return None


def check_case_number(store, case_number: str | None) -> None:
    """Refuse a case number the unit policy's pattern does not allow (MetadataError, bilingual)."""
    if not case_number:
        return
    rules = rules_in_force(store)
    pattern = (rules or {}).get("case_number_pattern")
    if not pattern:
        return
    try:
        ok = re.search(pattern, case_number) is not None
    except re.error:  # the centre checked it before signing; a station never guesses
        ok = False
    if not ok:
        raise MetadataError(f"案件编号不符合本单位策略规定的格式 / case number {case_number!r} does not match the unit "
                            f"policy's case-number pattern {pattern} (policy version {rules['version']}); "
                            "check the number, or ask the centre to change the pattern")


def _info(store, row: dict, cache: dict) -> dict | None:
    hit = cache.get(row["id"])
    if hit is not None:
        return hit
    try:
        m = json.loads((store.item_dir(row["id"]) / mf.MANIFEST).read_bytes())
        meta = mf.effective_metadata(m, mf.read_annotations(store.item_dir(row["id"])))
        rec = meta.get("recorder") if isinstance(meta.get("recorder"), dict) else {}
        info = {"item": row["id"], "officer": (meta.get("collector") or {}).get("id") or "-",
                "officer_name": (meta.get("collector") or {}).get("name"),
                "recorder": rec.get("serial") or store.cfg.device.id, "capture_end": timing.capture_end(meta)}
    except (OSError, ValueError, KeyError, TypeError, MetadataError):
        return None
    cache[row["id"]] = info
    return info


def overdue(store, deadline_h: int, now: _dt.datetime | None = None) -> dict[tuple[str, str], list[dict]]:
    """(officer, recorder) -> the unarchived items past the deadline, each with ``over_s``."""
    now = now or _dt.datetime.now().astimezone()
    cache = store.__dict__.setdefault("_deadline_cache", {})
    limit = _dt.timedelta(hours=deadline_h)
    out: dict[tuple[str, str], list[dict]] = {}
    waiting = set()
    for state in _WAITING:
        for row in store.items(state=state):
            waiting.add(row["id"])
            info = _info(store, row, cache)
            if info is None:
                continue
            over = now - (info["capture_end"] + limit)
            if over > _dt.timedelta(0):
                out.setdefault((info["officer"], info["recorder"]), []).append(
                    {**info, "over_s": int(over.total_seconds())})
    for gone in set(cache) - waiting:  # archived (or purged) since: forget
        del cache[gone]
    return out


def quota_exceeded(rules: dict, items: int, bytes_: int) -> str | None:
    """Which quota the unarchived backlog exceeds, in words; None when within."""
    q = rules.get("quotas") or {}
    if q.get("max_unarchived_items") and items > q["max_unarchived_items"]:
        return f"items:{items}>{q['max_unarchived_items']}"
    if q.get("max_unarchived_gb") and bytes_ > q["max_unarchived_gb"] * 10**9:
        return f"gb:{bytes_ / 10**9:.1f}>{q['max_unarchived_gb']}"
    return None
