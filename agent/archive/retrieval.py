"""Chain checkpoints (what a device announces it holds) and retrieval: list, show, export. Every
retrieval is written to the archive's audit log (调阅监督)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.common.errors import NotFoundError
from agent.common.fs import atomic_write
from agent.common.timeutil import now_iso
from ..evidence import manifest as mf
from ..evidence.verify import verify_item
from agent.wire import checkpoint as cpmod
from .paths import export_tree
from .registry import check_id

log = logging.getLogger(__name__)

#: the latest signed chain checkpoint of each device, as received: ROOT/_checkpoints/DEVICE.json
CHECKPOINTS = "_checkpoints"


class Retrieval:
    """Mixed into :class:`agent.archive.storage.ArchiveStore`."""

    # --- chain checkpoints ------------------------------------------------------------------
    def on_checkpoint(self, dev: str, payload: bytes) -> cpmod.Checkpoint | None:
        if not payload:
            return None
        try:
            cp = cpmod.parse(payload, self.registry.public(dev), device=dev)
        except (cpmod.CheckpointError, NotFoundError, RecursionError) as exc:
            why = "JSON nested too deeply" if isinstance(exc, RecursionError) else exc
            self.notes.log(log, "checkpoint", "ignoring chain checkpoint of %s: %s", dev, why)
            return None
        self.record_checkpoint(cp, payload)  # every one is kept (agent/archive/chain.py)
        with self.db.atomic() as db:
            old = db.execute("SELECT count, annotations FROM checkpoints WHERE device = ?", [dev]).fetchone()
            if old and (old[0], old[1] or 0) > (cp.count, cp.annotations or 0):
                log.warning("checkpoint of %s went back from %d items, %s annotations to %d, %s: kept the higher",
                            dev, old[0], old[1], cp.count, cp.annotations)
                return cp
            db.execute("INSERT INTO checkpoints(device, count, head, time, sig, received_at, annotations) "
                       "VALUES (?,?,?,?,?,?,?) ON CONFLICT(device) DO UPDATE SET count=excluded.count, "
                       "head=excluded.head, time=excluded.time, sig=excluded.sig, received_at=excluded.received_at, "
                       "annotations=excluded.annotations",
                       [dev, cp.count, cp.head, cp.time, cp.sig, now_iso(), cp.annotations])
            # the signed payload itself, for an offline `verify --chain --checkpoints ROOT/_checkpoints`
            atomic_write(self.inside(self.root / CHECKPOINTS / f"{check_id('device', dev)}.json"), payload)
        return cp

    def missing(self, device: str | None = None) -> list[dict]:
        """Per device: chain positions the signed checkpoint announces that the archive lacks."""
        out = []
        cps = self.db.query("SELECT * FROM checkpoints" + (" WHERE device = ?" if device else "") + " ORDER BY device",
                            [device] if device else [])
        for cp in cps:
            have = {r["seq"]: r for r in self.db.query("SELECT seq, manifest_hash, annotations FROM items "
                                                       "WHERE device = ?", [cp["device"]])}
            # an item deleted by its retention rule is accounted for by its tombstone (agent/archive/retention.py)
            for r in self.db.query("SELECT seq, manifest_hash, record FROM tombstones WHERE device = ?", [cp["device"]]):
                have.setdefault(r["seq"], {"seq": r["seq"], "manifest_hash": r["manifest_hash"],
                                           "annotations": json.loads(r["record"])["annotations"]})
            miss = [s for s in range(1, cp["count"] + 1) if s not in have]
            head_ok = None
            if cp["count"] in have:
                head_ok = have[cp["count"]]["manifest_hash"] == cp["head"]
            out.append({"device": cp["device"], "announced": cp["count"], "held": len(have), "missing": miss,
                        "head": cp["head"], "head_matches": head_ok, "checkpoint_time": cp["time"],
                        "annotations_announced": cp["annotations"],
                        "annotations_held": sum(r["annotations"] for r in have.values())})
        return out

    # --- retrieval (every call is audited: 调阅监督) ------------------------------------------
    def list_items(self, *, device: str | None = None, unit: str | None = None, case: str | None = None,
                   actor: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM items WHERE 1=1", []
        for col, val in (("device", device), ("unit", unit), ("case_number", case)):
            if val:
                sql += f" AND {col} = ?"
                params.append(val)
        rows = self.db.query(sql + " ORDER BY device, seq", params)
        self.audit.append("retrieve", None, actor=actor, what="list", device=device, unit=unit, case=case, count=len(rows))
        return rows

    def find(self, item: str) -> dict:
        row = self.db.one("SELECT * FROM items WHERE item = ?", [item])
        if not row:
            raise NotFoundError(f"{item}: no such item in the archive")
        return row

    def show_item(self, item: str, actor: str | None = None, reason: str | None = None) -> dict:
        row = self.find(item)
        with self.storage.local(row["path"]) as d:
            m = json.loads((d / mf.MANIFEST).read_bytes())
            anns = mf.read_annotations(d)
        self.audit.append("view", item, actor=actor, device=row["device"], path=row["path"], reason=reason)
        return {"archive": row, "manifest": {k: v for k, v in m.items() if k != "segments"},
                "segments": len(m.get("segments", [])), "annotations": [a.record for a in anns],
                "effective_metadata": mf.effective_metadata(m, anns), "path": str(d)}

    def show_device(self, device: str, actor: str | None = None) -> dict:
        dev = self.registry.device(device)
        items = self.db.query("SELECT item, seq, case_number, size, stored_at FROM items WHERE device = ? ORDER BY seq",
                              [device])
        miss = self.missing(device)
        self.audit.append("retrieve", None, actor=actor, what="device", device=device)
        return {"device": {k: dev[k] for k in ("id", "unit", "key_id", "enrolled_at")}, "items": items,
                "checkpoint": miss[0] if miss else None,
                "quarantine": self.db.query("SELECT item, reason, at, path FROM quarantine WHERE device = ? ORDER BY id",
                                            [device])}

    def export(self, item: str, dest: Path, actor: str | None = None) -> Path:
        """Verify the stored item, copy it to ``DEST/ITEM`` with the device's public key beside
        it (``DEST/DEVICE.pub``), verify the copy; audited. ``DEST`` must be a new or empty
        directory; nothing is written through a symlink (:func:`agent.archive.paths.export_tree`)."""
        row = self.find(item)
        ring = self.registry.ring(row["device"])
        key = (self.root / "keys" / f"{row['device']}.pub").read_bytes()
        with self.storage.local(row["path"]) as src:
            verify_item(src, ring, expected_device=row["device"])
            target = export_tree(src, Path(dest), item, {f"{row['device']}.pub": key})
        verify_item(target, ring, expected_device=row["device"])
        self.audit.append("export", item, actor=actor, device=row["device"], dest=str(target))
        return target

    def quarantined(self) -> list[dict]:
        return self.db.query("SELECT * FROM quarantine ORDER BY id")
