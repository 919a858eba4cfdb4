"""Local copies leaving the device or the spool: shown, exported (both audited) and purged after
the retention once archived. Mixed into :class:`~agent.store.store.Store`."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import time
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.timeutil import now_iso
from ..evidence import manifest as mf


class Retrieval:
    """show_item(), export(), purge_expired(); mixed into Store."""

    def show_item(self, item_id: str, actor: str | None = None) -> dict:
        """One item as an officer or auditor sees it (audited as a ``view``): ``ledger`` (its row)
        and, while the sealed copy is held here, ``manifest`` (without the segment list),
        ``segments`` (their count), ``annotations`` and ``effective_metadata`` (the sealed
        metadata with the annotations applied)."""
        row = self.item(item_id)
        out: dict = {"ledger": row}
        d = Path(row["path"])
        if (d / mf.MANIFEST).is_file():
            m = json.loads((d / mf.MANIFEST).read_bytes())
            anns = mf.read_annotations(d)
            out["manifest"] = {k: v for k, v in m.items() if k != "segments"}
            out["segments"] = len(m["segments"])
            out["annotations"] = [a.record for a in anns]
            out["effective_metadata"] = mf.effective_metadata(m, anns)
        self.audit.append("view", item_id, actor=actor)
        return out

    def export(self, item_id: str, dest: Path, actor: str | None = None) -> Path:
        """Copy a sealed item (manifest, signature, files, annotations) to ``dest/ITEM_ID``;
        audited. Refused when the item is not sealed here or the target exists already."""
        src = self.item_dir(item_id)
        if not (src / mf.MANIFEST).is_file():
            raise EdgeError(f"{item_id}: not sealed or no longer held locally")
        target = Path(dest) / item_id
        if target.exists():
            raise EdgeError(f"{target}: already exists")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, target)
        self.audit.append("export", item_id, actor=actor, dest=str(target))
        return target

    def purge_expired(self, at: float | None = None) -> list[str]:
        """Remove local copies of archived items older than the retention; never unarchived ones."""
        at = at or time.time()
        keep = self.cfg.storage.retention_days * 86400
        purged = []
        for row in self.items(state="archived"):
            archived = _dt.datetime.fromisoformat(row["archived_at"]).timestamp()
            if at - archived >= keep:
                shutil.rmtree(row["path"], ignore_errors=True)
                self.set_state(row["id"], "purged", "purge", actor="agent:retention", purged_at=now_iso())
                purged.append(row["id"])
        return purged

