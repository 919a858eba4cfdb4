"""Retention classes at the archive (issue 18; docs/custody.md, "Retention by rule"): what class an
item has and until when it is kept, decided from its signed metadata, the unit's signed policy and
the floor noted at arrival. :mod:`agent.archive.retention` applies them (custodians' changes, legal
holds, plan and run).

* ``normal`` — kept at least ``normal_days`` (the unit's signed policy, at least 183 days: six
  months), counted from the end of capture (the recorder's clock corrected by its sealed drift);
* ``important`` — the recorder's file record marked it (``metadata.mark`` 1, 重点文件): kept
  ``important_days`` of the unit's policy, permanently when that is null (the default);
* ``evidence`` — the item is evidence (``evidence_mark`` true, sealed or annotated by the device
  or an enrolled annotator, or its proof object matching the unit policy's
  ``evidence_proof_pattern``): kept permanently.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.timeutil import iso
from agent.evidence import timing
from agent.wire import policy as wp

log = logging.getLogger(__name__)

CLASSES = ("normal", "important", "evidence")
RANK = {c: i for i, c in enumerate(CLASSES)}
LABELS = {"normal": "一般 normal", "important": "重点 important", "evidence": "证据 evidence (permanent)"}


def classify(meta: dict, evidence_proof: str | None = None) -> tuple[str, str]:
    """(class, why) from the item's own signed metadata and the unit policy's retention rule:
    evidence mark, or a proof object (证明对象) matching ``evidence_proof`` → evidence; the
    recorder's mark 1 (重点文件) → important; else normal."""
    if meta.get("evidence_mark") is True:
        return "evidence", "evidence mark"
    proof = meta.get("proof")
    if evidence_proof and isinstance(proof, str):
        try:
            if re.search(evidence_proof, proof):
                return "evidence", "proof object matches the policy (证明对象)"
        except re.error:
            pass
    if meta.get("mark") == 1:
        return "important", "mark 1 (重点文件)"
    return "normal", "sealed"


def sealed_class(meta: dict, evidence_proof: str | None = None) -> str:
    return classify(meta, evidence_proof)[0]


def unit_rules(root: Path, unit: str) -> wp.Retention:
    """The retention rule of the unit's last signed policy (``ROOT/_policy/published/UNIT.json``),
    else the policy's defaults."""
    from .policy import last_published

    try:
        last = last_published(root, unit)
    except (EdgeError, ValueError):
        last = None
    return last[0].rules.retention if last else wp.Retention()


def periods(root: Path, unit: str) -> tuple[int, int | None]:
    """(normal_days, important_days or None = permanent) of the unit."""
    r = unit_rules(root, unit)
    return r.normal_days, r.important_days


FACTS_UPSERT = ("INSERT INTO retention_facts(device, item, capture_end, mark, evidence_mark, proof) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(device, item) DO UPDATE SET capture_end = excluded.capture_end, mark = excluded.mark, "
                "evidence_mark = excluded.evidence_mark, proof = excluded.proof")


def facts(meta: dict) -> dict:
    """What retention needs of an item, from its effective metadata (sealed, with its annotations):
    the end of capture on the station's clock, the recorder's mark 1, the evidence mark, the proof
    object. Kept in the index (``retention_facts``) so the plan reads no manifest."""
    proof = meta.get("proof")
    return {"capture_end": timing.capture_end(meta).isoformat(), "mark": int(meta.get("mark") == 1),
            "evidence_mark": int(meta.get("evidence_mark") is True), "proof": proof if isinstance(proof, str) else None}


def facts_meta(f: dict) -> dict:
    """The metadata :func:`classify` reads, from the index's facts."""
    return {"evidence_mark": bool(f["evidence_mark"]), "mark": 1 if f["mark"] else 0, "proof": f["proof"]}


def note_facts(db, device: str, item: str, meta: dict) -> dict | None:
    try:
        f = facts(meta)
    except Exception:
        log.exception("retention facts of %s/%s not noted (the plan reads its manifest instead)", device, item)
        return None
    db.execute(FACTS_UPSERT, [device, item, f["capture_end"], f["mark"], f["evidence_mark"], f["proof"]])
    return f


def note_class(db, root: Path, device: str, item: str, unit: str, meta: dict, at: str) -> None:
    """When an item arrives (or an annotation does): keep the class it has now as its floor, so a
    later policy (a narrower proof-object rule) never lowers it; only two custodians do. What the
    plan needs of it goes into the index too (:func:`facts`)."""
    note_facts(db, device, item, meta)
    try:
        cls, why = classify(meta, unit_rules(root, unit).evidence_proof_pattern)
    except Exception:  # (SQL below is not guarded: on PostgreSQL a failed statement spoils the transaction)
        log.exception("retention class of %s/%s not noted (it is derived again when needed)", device, item)
        return
    cur = db.execute("SELECT class FROM retention_floor WHERE device = ? AND item = ?", [device, item]).fetchone()
    if cur and RANK.get(cur[0], 0) >= RANK[cls]:
        return
    db.execute("INSERT INTO retention_floor(device, item, class, why, at) VALUES (?,?,?,?,?) "
               "ON CONFLICT(device, item) DO UPDATE SET class = excluded.class, why = excluded.why, "
               "at = excluded.at", [device, item, cls, why, at])


@dataclasses.dataclass
class Status:
    device: str
    item: str
    unit: str
    case_number: str | None
    path: str
    manifest_hash: str
    retention_class: str
    class_source: str
    keep_until: dt.datetime | None  # None: permanent
    holds: list[int]

    def due(self, now: dt.datetime) -> bool:
        return self.keep_until is not None and now >= self.keep_until and not self.holds

    def as_dict(self, now: dt.datetime) -> dict:
        state = ("held" if self.holds else "permanent" if self.keep_until is None
                 else "due" if now >= self.keep_until else "kept")
        return {"device": self.device, "item": self.item, "unit": self.unit, "case_number": self.case_number,
                "class": self.retention_class, "class_source": self.class_source,
                "keep_until": iso(self.keep_until) if self.keep_until else None, "holds": self.holds, "state": state}


def own(meta: dict, rule: wp.Retention, floor) -> tuple[str, str]:
    """The item's own class by the unit's rule, never below its floor (class, why) from arrival."""
    cls, why = classify(meta, rule.evidence_proof_pattern)
    if floor and RANK.get(floor[0], 0) > RANK[cls]:
        cls, why = floor[0], f"{floor[1]}, at arrival"
    return cls, why


def status_of(row, cls: str, source: str, capture_end: dt.datetime, last, holds: list[int],
              rule: wp.Retention) -> Status:
    """The retention of one item: its own class, a custodian's change (``last``: id, class, the own
    class then) while the own class has not risen above it, the unit's period from the end of capture."""
    if last and RANK[cls] <= RANK[last[2]]:
        cls, source = last[1], f"change {last[0]}"
    days = {"normal": rule.normal_days, "important": rule.important_days, "evidence": None}[cls]
    keep = capture_end + dt.timedelta(days=days) if days is not None else None
    return Status(row["device"], row["item"], row["unit"], row["case_number"], row["path"], row["manifest_hash"],
                  cls, source, keep, list(holds))
