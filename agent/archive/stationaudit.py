"""The stations' audit logs at the centre (docs/custody.md "The station's audit log at the centre").

A station seals its audit log as items of its chain (agent/store/auditlog.py). When the archive
has stored and verified such an item like any other, it reads the entries and checks their hash
chain: each entry's hash is its content's (:func:`agent.common.audit.entry_hash`), the entries of the
item follow one another, and the item joins the entries received before and after it (segments
may arrive in any order). Verified entries are kept per device (``station_audit``); a break raises
the device's ``station_audit`` alarm (agent/archive/chain.py).

``archive audit-log DEVICE`` shows them and matches every erase of a recorder file to the receipt
that allowed it: the station's own ``archive`` entry for the erased item carries the archive's
signed receipt, which must verify with a key of this archive, name the item and the device, name
the manifest the archive holds (or held, before retention), and list the erased file's hash.
"""

from __future__ import annotations

import json
import logging

from agent.common import canon
from agent.common.audit import entry_hash
from agent.common.errors import EdgeError
from ..evidence import keys, manifest as mf, strict

log = logging.getLogger(__name__)

META_KIND = "station-audit"
AUDIT_DIR = "_audit"
COLUMNS = ("seq", "ts", "actor", "action", "item_id", "detail", "prev", "hash")


def is_station_audit(manifest: dict) -> bool:
    meta = manifest.get("metadata")
    return isinstance(meta, dict) and meta.get("kind") == META_KIND


class StationAudit:
    """Mixed into :class:`agent.archive.storage.ArchiveStore`."""

    def ingest_station_audit(self, dev: str, item: str, rel: str, manifest: dict) -> list[str]:
        """After the item is stored: verify its entries and keep them; returns the problems found
        (each also raises the ``station_audit`` alarm). Never fails the item's storage."""
        try:
            entries = self._read_segment(rel, manifest)
            problems = self._check_segment(dev, entries, manifest.get("metadata") or {})
        except Exception as exc:  # noqa: BLE001 - whatever the file holds, the item stays stored and it is alarmed
            entries, problems = [], [f"unreadable: {str(exc)[:300]}"]
        now = self.clock()
        with self.db.atomic() as db:
            if problems:
                self._raise(db, dev, "station_audit", f"audit item {item}: " + "; ".join(problems)[:900], now)
            else:
                for e in entries:
                    db.execute("INSERT INTO station_audit(device, seq, ts, actor, action, item_id, detail, prev, hash, "
                               "audit_item) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(device, seq) DO NOTHING",
                               [dev, e["seq"], e["ts"], e["actor"], e["action"], e["item_id"], e["detail"], e["prev"],
                                e["hash"], item])
                self.audit.append("station_audit", item, actor=f"archive:{self.receiver}", device=dev,
                                  entries=len(entries), first=entries[0]["seq"] if entries else None,
                                  last=entries[-1]["seq"] if entries else None)
        if problems:
            log.warning("station audit log of %s: %s", dev, "; ".join(problems))
        return problems

    def _read_segment(self, rel: str, manifest: dict) -> list[dict]:
        files = manifest.get("files") or []
        if len(files) != 1:
            raise EdgeError(f"an audit item holds one file, this one {len(files)}")
        data = self.storage.get(rel, f"{mf.FILES_DIR}/{files[0]['name']}")
        out = []
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            e = strict.loads(line.encode(), f"audit entry line {n}")
            if not isinstance(e, dict) or set(e) != set(COLUMNS):
                raise EdgeError(f"audit entry line {n}: the fields must be {', '.join(COLUMNS)}")
            if not (isinstance(e["seq"], int) and not isinstance(e["seq"], bool) and e["seq"] > 0
                    and all(isinstance(e[k], str) for k in ("ts", "actor", "action", "detail", "hash"))
                    and all(e[k] is None or isinstance(e[k], str) for k in ("item_id", "prev"))):
                raise EdgeError(f"audit entry line {n}: a field of the wrong type")
            out.append(e)
        return out

    def _check_segment(self, dev: str, entries: list[dict], meta: dict) -> list[str]:
        problems = []
        if not entries:
            return ["no entries"]
        for a, b in zip(entries, entries[1:]):
            if b["seq"] != a["seq"] + 1 or b["prev"] != a["hash"]:
                problems.append(f"entry {b['seq']} does not follow entry {a['seq']}")
        for e in entries:
            if entry_hash("sha256", e) != e["hash"]:
                problems.append(f"entry {e['seq']} was altered (its hash is not its content's)")
        first, last = entries[0], entries[-1]
        if (meta.get("audit_from"), meta.get("audit_to"), meta.get("audit_head")) != (first["seq"], last["seq"], last["hash"]):
            problems.append("the sealed metadata names other entries than the file holds")
        if first["seq"] == 1 and first["prev"] is not None:
            problems.append("entry 1 links to an earlier entry")
        before = self.db.one("SELECT hash FROM station_audit WHERE device = ? AND seq = ?", [dev, first["seq"] - 1])
        if before and before["hash"] != first["prev"]:
            problems.append(f"entry {first['seq']} does not follow entry {first['seq'] - 1} received before")
        after = self.db.one("SELECT prev FROM station_audit WHERE device = ? AND seq = ?", [dev, last["seq"] + 1])
        if after and after["prev"] != last["hash"]:
            problems.append(f"entry {last['seq'] + 1} received before does not follow entry {last['seq']}")
        have = {r["seq"]: r["hash"] for r in self.db.query(
            "SELECT seq, hash FROM station_audit WHERE device = ? AND seq BETWEEN ? AND ?", [dev, first["seq"], last["seq"]])}
        for e in entries:
            if e["seq"] in have and have[e["seq"]] != e["hash"]:
                problems.append(f"entry {e['seq']} differs from the one received before")
        return problems

    # --- the view ----------------------------------------------------------------------------
    def _receipt_keys(self) -> dict:
        from . import receivers

        out = {keys.key_id(p): p for p in self.archive_keys()}
        out.update({keys.key_id(p): p for p in receivers.enrolled(self.root).values()})
        return out

    def station_audit_report(self, device: str, actor: str | None = None) -> dict:
        """``archive audit-log DEVICE``: the station's entries received, gaps, and each erase with
        the receipt that allowed it (audited)."""
        dev = self.registry.device(device)
        rows = self.db.query("SELECT seq, ts, actor, action, item_id, detail, prev, hash, audit_item FROM station_audit "
                             "WHERE device = ? ORDER BY seq", [device])
        have = {r["seq"] for r in rows}
        top = max(have, default=0)
        missing = [s for s in range(1, top + 1) if s not in have]
        alarm = self.db.one("SELECT since, detail FROM chain_alarms WHERE device = ? AND code = 'station_audit' "
                            "AND active = 1", [device])
        receipts: dict[str, dict] = {}
        erasures = []
        pubs = self._receipt_keys()
        for r in rows:
            d = json.loads(r["detail"])
            if r["action"] == "archive" and isinstance(d.get("receipt"), dict):
                receipts[r["item_id"]] = dict(d["receipt"], _seq=r["seq"])
            if r["action"] == "erase":
                erasures.append(self._match_erase(device, r, d, receipts.get(r["item_id"]), pubs))
        self.audit.append("retrieve", None, actor=actor, what="station audit log", device=device)
        bad = [e for e in erasures if e["result"] == "erased" and not e["ok"]]
        ok = not alarm and not bad
        return {"device": device, "unit": dev["unit"], "entries": rows, "received": len(rows), "missing": missing,
                "broken": alarm, "erasures": erasures, "erased": sum(1 for e in erasures if e["result"] == "erased"),
                "unmatched": len(bad), "verdict": "ok" if ok else "alarm"}

    def _match_erase(self, device: str, r: dict, d: dict, rc: dict | None, pubs: dict) -> dict:
        out = {"seq": r["seq"], "ts": r["ts"], "item": r["item_id"], "file": d.get("file"), "hash": d.get("hash"),
               "serial": d.get("serial"), "result": d.get("result"), "policy": d.get("policy"), "receipt": None,
               "problems": []}
        if d.get("result") != "erased":
            out["ok"] = True
            return out
        p = out["problems"]
        if rc is None:
            p.append("no receipt in the station's log before this erase")
        else:
            body = {k: v for k, v in rc.items() if k not in ("sig", "_seq")}
            pub = pubs.get(rc.get("key_id"))
            try:
                good = pub is not None and keys.verify_sig(pub, canon.canonical(body), str(rc.get("sig")))
            except Exception:  # noqa: BLE001 - whatever the station logged, the verdict is "not verified"
                good = False
            if not good:
                p.append(f"the receipt (key {rc.get('key_id')}) is not signed by a key of this archive")
            if rc.get("device") != device or rc.get("item") != r["item_id"]:
                p.append("the receipt names another device or item")
            held = self.db.one("SELECT manifest_hash, stored_at FROM items WHERE device = ? AND item = ?",
                               [device, r["item_id"]]) or \
                self.db.one("SELECT manifest_hash, expired_at AS stored_at FROM tombstones WHERE device = ? AND item = ?",
                            [device, r["item_id"]])
            if held is None:
                p.append("the archive does not hold the item")
            elif held["manifest_hash"] != rc.get("manifest_hash"):
                p.append("the receipt names another manifest than the archive holds")
            if d.get("hash") not in {f.get("hash") for f in rc.get("files") or [] if isinstance(f, dict)}:
                p.append("the erased file's hash is not in the receipt")
            out["receipt"] = {"archive": rc.get("archive"), "key_id": rc.get("key_id"), "stored_at": rc.get("stored_at"),
                              "manifest_hash": rc.get("manifest_hash"), "logged_at_seq": rc.get("_seq"),
                              "verified": good}
        out["ok"] = not p
        return out
