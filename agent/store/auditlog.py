"""The station's own audit log, uploaded as signed items (docs/custody.md "The station's audit log
at the centre").

Every technician action and every erase is an entry of the station's hash-chained audit log
(:mod:`agent.common.audit`). :func:`seal_audit_log` seals the entries not yet sealed as one item of
the device chain (``kind`` ``audit``; one file ``audit-FROM-TO.jsonl``, one entry per line with
every column the chain hash covers, plus ``hash``), so it travels the evidence path: the store,
the uplink, the archive, which verifies the item like any other and then the entries' hash chain,
segment after segment (agent/archive/stationaudit.py). The manifest's metadata says what it is
(``kind: station-audit``, ``audit_from``, ``audit_to``); the case number is pending, the archive
files it under ``UNIT/_audit/``.

Entries about the audit items themselves (their sealing, upload, archiving) do not make a new
segment on their own (else every segment would call for the next); they travel with the next one.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from agent.common.timeutil import now_iso

log = logging.getLogger(__name__)

KIND = "audit"
META_KIND = "station-audit"
SEALED_TO = "audit_sealed_to"
COLUMNS = ("seq", "ts", "actor", "action", "item_id", "detail", "prev", "hash")


def audit_item_ids(store) -> set[str]:
    return {r["id"] for r in store.ledger.query("SELECT id FROM items WHERE kind = ?", [KIND])}


def seal_audit_log(store, actor: str = "agent:audit") -> str | None:
    """Seal the audit entries after the last sealed one as an item; returns its id, or None when
    nothing but entries about earlier audit items is new."""
    done = int(store.get_meta(SEALED_TO, "0") or 0)
    rows = store.ledger.query("SELECT * FROM audit WHERE seq > ? ORDER BY seq", [done])
    own = audit_item_ids(store)
    if not any(r["item_id"] not in own for r in rows):
        return None
    first, last = rows[0], rows[-1]
    text = "".join(json.dumps({k: r[k] for k in COLUMNS}, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    name = f"audit-{first['seq']:08d}-{last['seq']:08d}.jsonl"
    cfg = store.cfg.device
    meta = {"case_number": None, "pending": ["case_number"], "kind": META_KIND,
            "capture_start": first["ts"], "capture_end": last["ts"], "place": cfg.location,
            "collector": {"name": "采集站审计日志 / station audit log", "id": cfg.id},
            "proof": f"站点审计日志 第{first['seq']}至{last['seq']}条 / station audit log entries {first['seq']}-{last['seq']}",
            "audit_from": first["seq"], "audit_to": last["seq"], "audit_head": last["hash"]}
    w = store.new_item(meta, {"type": "audit", "from": first["seq"], "to": last["seq"]}, kind=KIND, priority=3,
                       source_key=f"audit:{first['seq']}-{last['seq']}", expected_size=len(text.encode()))
    fd, tmp = tempfile.mkstemp(prefix=".audit-", dir=str(store.data_dir))
    with os.fdopen(fd, "wb") as fh:
        fh.write(text.encode())
        fh.flush()
        os.fsync(fh.fileno())
    try:
        w.add_path(name, Path(tmp), move=True)
        w.seal(actor=actor)
    finally:
        Path(tmp).unlink(missing_ok=True)
    store.set_meta(SEALED_TO, str(last["seq"]))
    log.info("audit log entries %d-%d sealed as %s (%s)", first["seq"], last["seq"], w.id, now_iso())
    return w.id
