"""Retention by rule at the archive (issue 18; docs/custody.md, "Retention by rule").

Every archived item has a **retention class** (normal, important, evidence), decided by
:mod:`agent.archive.retention_class` from its signed metadata and the unit's signed policy.

The class is read from the sealed item (its mark, its evidence mark); at the centre a custodian
raises it by a signed record (``edge-retention/1``, the custodian's key enrolled under
``ROOT/keys/custodians/NAME.pub``); lowering it is a request by one custodian that takes effect
only when a second custodian approves it with their own key. A **legal hold** on an item or on a
case overrides every class: nothing held is deleted.

:meth:`Retention.run` deletes only items that are archived (a row in ``items``), past their
retention, and not held — each checked again inside the transaction that records the deletion, so
a hold placed or a class raised while a run is under way is honoured. It leaves a tombstone signed
by the archive's key (:mod:`agent.evidence.tombstone`) in the item's directory, so the device
chain still verifies with an "expired" link, and writes the deletion to the archive's audit chain.
Every read and removal of evidence goes through the archive's evidence storage
(:class:`agent.archive.backend.EvidenceStorage`, by the item's key), so an object-store backend
serves retention unchanged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

from agent.common.errors import EdgeError, NotFoundError
from agent.common.fs import atomic_write
from agent.common.timeutil import iso
from agent.evidence import keys, manifest as mf, rules, strict, timing, tombstone as tb
from agent.wire import policy as wp

from .retention_class import CLASSES, FACTS_UPSERT, LABELS, RANK, Status, facts, facts_meta, own, status_of, unit_rules

log = logging.getLogger(__name__)

RECORD_FORMAT = "edge-retention/1"
RECORD_FIELDS = ("format", "action", "item_id", "device", "manifest_hash", "class", "from_class", "actor", "time",
                 "reason", "request")


def _now() -> dt.datetime:
    return dt.datetime.now().astimezone().replace(microsecond=0)


class Retention:
    """Retention classes, holds, plan and run over an :class:`agent.archive.storage.ArchiveStore`.

    ``clock`` returns the current time (aware); tests move it instead of sleeping. ``on_item``
    (tests) is called with each candidate just before it is checked again and deleted."""

    def __init__(self, store, *, clock: Callable[[], dt.datetime] = _now,
                 on_item: Callable[[dict], None] | None = None):
        self.store = store
        self.db = store.db
        self.root = store.root
        self.clock = clock
        self.on_item = on_item

    # --- classes ----------------------------------------------------------------------------
    def _manifest(self, row: dict) -> tuple[dict, list]:
        """The stored item's manifest and annotations, read through the evidence storage."""
        key, storage = row["path"], self.store.storage
        m = json.loads(storage.get(key, mf.MANIFEST))
        return m, mf.parse_annotations((f"{key}/{n}", storage.get(key, n))
                                       for n in storage.names(key, mf.ANNOTATIONS_DIR) if n.endswith(".json"))

    def own_class(self, row: dict, db=None) -> tuple[str, str, dict]:
        """(class, why, effective metadata): the item's own class — from its signed metadata and the
        unit's rule, never below the floor noted when it arrived."""
        m, anns = self._manifest(row)
        meta = mf.effective_metadata(m, anns)
        sql, args = "SELECT class, why FROM retention_floor WHERE device = ? AND item = ?", [row["device"], row["item"]]
        floor = db.execute(sql, args).fetchone() if db is not None else (
            (lambda r: (r["class"], r["why"]) if r else None)(self.db.one(sql, args)))
        return (*own(meta, unit_rules(self.root, row["unit"]), floor), meta)

    def status(self, row: dict, db=None) -> Status:
        """The item's retention, decided from its signed manifest (what a deletion rests on)."""
        cls, source, meta = self.own_class(row, db)
        q = db.execute if db is not None else None
        sql = ("SELECT id, class, sealed_class FROM retention_changes WHERE device = ? AND item = ? "
               "AND state = 'applied' ORDER BY id DESC LIMIT 1")
        args = [row["device"], row["item"]]
        last = (q(sql, args).fetchone() if q else
                (lambda r: (r["id"], r["class"], r["sealed_class"]) if r else None)(self.db.one(sql, args)))
        hsql = ("SELECT id FROM holds WHERE released_at IS NULL AND ((device = ? AND item = ?) OR "
                "(item IS NULL AND case_number = ? AND (unit IS NULL OR unit = ?))) ORDER BY id")
        hargs = [row["device"], row["item"], row["case_number"], row["unit"]]
        holds = ([r[0] for r in q(hsql, hargs).fetchall()] if q else [r["id"] for r in self.db.query(hsql, hargs)])
        return status_of(row, cls, source, timing.capture_end(meta), last, holds, unit_rules(self.root, row["unit"]))

    def _row(self, item: str) -> dict:
        rules.check("item_id", item)
        row = self.db.one("SELECT * FROM items WHERE item = ?", [item])
        if row is None:
            gone = self.db.one("SELECT expired_at FROM tombstones WHERE item = ?", [item])
            if gone:
                raise NotFoundError(f"{item}: 已按保存期限删除 / deleted by its retention rule at {gone['expired_at']}")
            raise NotFoundError(f"{item}: 存档中没有此资料 / no such item in the archive")
        return row

    def show(self, item: str) -> dict:
        now = self.clock()
        st = self.status(self._row(item))
        changes = self.db.query("SELECT id, action, class, from_class, actor, time, reason, state, approver, "
                                "approved_at FROM retention_changes WHERE item = ? ORDER BY id", [item])
        return {**st.as_dict(now), "changes": changes}

    # --- custodians and signed changes ------------------------------------------------------
    def custodian_dir(self) -> Path:
        return self.root / "keys" / "custodians"

    def enroll_custodian(self, name: str, pubkey_pem: bytes, actor: str | None = None) -> dict:
        rules.check("annotator", name)
        public = keys.parse_public(pubkey_pem, "public key")
        kid = keys.key_id(public)
        for p in self.custodian_dir().glob("*.pub") if self.custodian_dir().is_dir() else []:
            if p.stem != name and keys.key_id(keys.load_public(p)) == kid:
                raise EdgeError(f"保管人密钥已属于 {p.stem} / key {kid} is custodian {p.stem}'s: "
                                "each custodian has a key of their own (two people approve a lowering)")
        path = self.custodian_dir() / f"{name}.pub"
        if path.exists() and keys.key_id(keys.load_public(path)) != kid:
            raise EdgeError(f"保管人已用另一密钥登记 / custodian {name} is enrolled with another key")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, keys.public_pem(public))
        self.store.audit.append("enroll_custodian", None, actor=actor, custodian=name, key_id=kid)
        return {"custodian": name, "key_id": kid, "path": str(path)}

    def _custodian(self, name: str, private) -> str:
        rules.check("annotator", name)
        path = self.custodian_dir() / f"{name}.pub"
        if not path.is_file():
            raise EdgeError(f"{name}: 不是登记的保管人 / not an enrolled custodian (`edge-agent archive retention "
                            f"custodian {name} PUBKEY`)")
        kid = keys.key_id(private.public_key())
        if keys.key_id(keys.load_public(path)) != kid:
            raise EdgeError(f"密钥不属于保管人 {name} / key {kid} is not custodian {name}'s enrolled key")
        return kid

    def _sign(self, private, record: dict) -> tuple[bytes, str]:
        data = strict.canonical(record, "retention record")
        sig = keys.sign(private, data)
        return data, sig

    def raise_class(self, item: str, to: str, *, actor: str, private, reason: str) -> dict:
        """A custodian raises the item's class (signed, applied at once, audited)."""
        return self._change("raise", item, to, actor=actor, private=private, reason=reason)

    def request_lower(self, item: str, to: str, *, actor: str, private, reason: str) -> dict:
        """A custodian asks to lower the class; nothing changes until another custodian approves."""
        return self._change("lower", item, to, actor=actor, private=private, reason=reason)

    def _change(self, action: str, item: str, to: str, *, actor: str, private, reason: str) -> dict:
        if to not in CLASSES:
            raise EdgeError(f"类别无效 / --class {to!r}: one of {', '.join(CLASSES)}")
        reason = mf.check_reason(reason)
        if not reason:
            raise EdgeError("须说明理由 / a reason is required (--reason \"…\")")
        kid = self._custodian(actor, private)
        row = self._row(item)
        with self.db.atomic() as db:
            self.db.serialize("retention")
            st = self.status(row, db)
            cur = st.retention_class
            if action == "raise" and RANK[to] <= RANK[cur]:
                raise EdgeError(f"{item}: 类别已是 {LABELS[cur]} / class is {cur}: raising goes to a higher class "
                                f"(lowering needs a second person: `archive retention lower`)")
            if action == "lower" and RANK[to] >= RANK[cur]:
                raise EdgeError(f"{item}: 类别已是 {LABELS[cur]} / class is {cur}: lowering goes to a lower class")
            sealed = self.own_class(row, db)[0]
            record = {"format": RECORD_FORMAT, "action": action, "item_id": item, "device": row["device"],
                      "manifest_hash": row["manifest_hash"], "class": to, "from_class": cur, "actor": actor,
                      "time": iso(self.clock()), "reason": reason, "request": None}
            data, sig = self._sign(private, record)
            state = "applied" if action == "raise" else "pending"
            rid = db.execute("INSERT INTO retention_changes(device, item, action, class, from_class, sealed_class, "
                             "actor, key_id, time, reason, record, sig, state) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                             "RETURNING id", [row["device"], item, action, to, cur, sealed, actor, kid,
                                              record["time"], reason, data.decode(), sig, state]).fetchone()[0]
            self.store.audit.append(f"retention-{action}" + ("" if action == "raise" else "-requested"), item,
                                    actor=actor, device=row["device"], change=rid, to=to, previous=cur, reason=reason,
                                    key_id=kid)
        return {"change": rid, "item": item, "class": to, "from_class": cur, "state": state}

    def approve(self, change: int, *, actor: str, private) -> dict:
        """A second custodian (another name, another key) approves a lowering; it is applied."""
        kid = self._custodian(actor, private)
        with self.db.atomic() as db:
            self.db.serialize("retention")
            req = db.execute("SELECT device, item, class, from_class, actor, key_id, record, state FROM "
                             "retention_changes WHERE id = ? AND action = 'lower'", [change]).fetchone()
            if req is None:
                raise NotFoundError(f"没有该降级申请 / change {change}: no such lowering request (`archive retention show ITEM`)")
            device, item, to, frm, requester, rkid, rec, state = req
            if state != "pending":
                raise EdgeError(f"该申请已处理 / change {change}: already {state}")
            if actor == requester or kid == rkid:
                raise EdgeError(f"须另一人批准 / change {change} was requested by {requester}: a second custodian, "
                                "with their own key, approves a lowering")
            row = db.execute("SELECT * FROM items WHERE device = ? AND item = ?", [device, item]).fetchone()
            if row is None:
                raise NotFoundError(f"{item}: 存档中已没有此资料 / no longer in the archive")
            cols = [c[0] for c in db.execute("SELECT * FROM items WHERE 0 = 1").description]
            st = self.status(dict(zip(cols, row)), db)
            if st.retention_class != frm:
                raise EdgeError(f"类别已改变，请重新申请 / change {change}: the class is now {st.retention_class}, not {frm} as requested: "
                                "ask again")
            record = {"format": RECORD_FORMAT, "action": "approve", "item_id": item, "device": device,
                      "manifest_hash": st.manifest_hash, "class": to, "from_class": frm, "actor": actor,
                      "time": iso(self.clock()), "reason": "", "request": hashlib.sha256(rec.encode()).hexdigest()}
            data, sig = self._sign(private, record)
            db.execute("UPDATE retention_changes SET state = 'applied', approver = ?, approver_key_id = ?, "
                       "approved_at = ?, approval = ?, approval_sig = ? WHERE id = ?",
                       [actor, kid, record["time"], data.decode(), sig, change])
            self.store.audit.append("retention-lower-approved", item, actor=actor, device=device, change=change,
                                    to=to, previous=frm, requester=requester, key_id=kid)
        return {"change": change, "item": item, "class": to, "from_class": frm, "state": "applied",
                "requester": requester, "approver": actor}

    # --- holds ------------------------------------------------------------------------------
    def place_hold(self, *, reason: str, actor: str, item: str | None = None, case: str | None = None,
                   unit: str | None = None) -> dict:
        if bool(item) == bool(case):
            raise EdgeError("请指定资料或案件编号之一 / give --item ITEM_ID or --case CASE_NUMBER (one of them)")
        reason = mf.check_reason(reason)
        if not reason:
            raise EdgeError("须说明理由 / a reason is required (--reason \"…\")")
        if unit:
            rules.check_unit_code(unit)
        with self.db.atomic() as db:
            self.db.serialize("retention")  # a run deciding on this item waits, or finished before
            device = None
            if item:
                rules.check("item_id", item)
                r = db.execute("SELECT device, unit, case_number FROM items WHERE item = ?", [item]).fetchone()
                if r is None:
                    gone = db.execute("SELECT expired_at FROM tombstones WHERE item = ?", [item]).fetchone()
                    raise NotFoundError(f"{item}: " + (f"已按保存期限删除 / deleted by its retention rule at {gone[0]}"
                                                       if gone else "存档中没有此资料 / no such item in the archive"))
                device, unit = r[0], r[1]
            else:
                case = mf.check_case_number(case)
            hid = db.execute("INSERT INTO holds(device, item, unit, case_number, reason, placed_by, placed_at) "
                             "VALUES (?,?,?,?,?,?,?) RETURNING id",
                             [device, item, unit, case, reason, actor, iso(self.clock())]).fetchone()[0]
            self.store.audit.append("hold-placed", item, actor=actor, hold=hid, case=case, unit=unit, reason=reason)
        return {"hold": hid, "item": item, "case_number": case, "unit": unit, "reason": reason, "placed_by": actor}

    def release_hold(self, hold: int, *, reason: str, actor: str) -> dict:
        reason = mf.check_reason(reason)
        if not reason:
            raise EdgeError("须说明理由 / a reason is required (--reason \"…\")")
        with self.db.atomic() as db:
            self.db.serialize("retention")
            r = db.execute("SELECT item, case_number, released_at FROM holds WHERE id = ?", [hold]).fetchone()
            if r is None:
                raise NotFoundError(f"没有该保全 / hold {hold}: no such hold (`archive hold list`)")
            if r[2] is not None:
                raise EdgeError(f"保全已解除 / hold {hold}: released already at {r[2]}")
            db.execute("UPDATE holds SET released_by = ?, released_at = ?, release_reason = ? WHERE id = ?",
                       [actor, iso(self.clock()), reason, hold])
            self.store.audit.append("hold-released", r[0], actor=actor, hold=hold, case=r[1], reason=reason)
        return {"hold": hold, "released_by": actor, "reason": reason}

    def holds(self, all_: bool = False) -> list[dict]:
        return self.db.query("SELECT * FROM holds" + ("" if all_ else " WHERE released_at IS NULL") + " ORDER BY id")

    # --- plan and run -----------------------------------------------------------------------
    def plan(self, *, unit: str | None = None, until: dt.datetime | None = None) -> dict:
        """Every archived item that is not permanent, with its class and the time its retention
        ends; ``until``: only those ending by then (held ones listed with their holds).

        Decided from the index alone — the facts noted at arrival (``retention_facts``), the floor,
        the custodians' changes, the holds — with one query each, so a plan over 100,000 items takes
        seconds; an item stored before the facts were kept is read from its manifest once and its
        facts noted (the backfill). :meth:`run` decides each deletion again from the manifest."""
        now = self.clock()
        sql = ("SELECT i.device, i.item, i.unit, i.case_number, i.path, i.manifest_hash, f.capture_end, f.mark, "
               "f.evidence_mark, f.proof, r.class AS floor_class, r.why AS floor_why FROM items i "
               "LEFT JOIN retention_facts f ON f.device = i.device AND f.item = i.item "
               "LEFT JOIN retention_floor r ON r.device = i.device AND r.item = i.item")
        args: list = []
        if unit:
            sql, args = sql + " WHERE i.unit = ?", [rules.check_unit_code(unit)]
        last: dict[tuple[str, str], tuple] = {}
        for r in self.db.query("SELECT id, device, item, class, sealed_class FROM retention_changes "
                               "WHERE state = 'applied' ORDER BY id"):
            last[(r["device"], r["item"])] = (r["id"], r["class"], r["sealed_class"])
        item_holds: dict[tuple[str, str], list[int]] = {}
        case_holds: dict[str, list[tuple[int, str | None]]] = {}
        for h in self.db.query("SELECT id, device, item, unit, case_number FROM holds WHERE released_at IS NULL "
                               "ORDER BY id"):
            if h["item"] is not None:
                item_holds.setdefault((h["device"], h["item"]), []).append(h["id"])
            elif h["case_number"] is not None:
                case_holds.setdefault(h["case_number"], []).append((h["id"], h["unit"]))
        unit_rule: dict[str, wp.Retention] = {}
        out, permanent, unreadable, noted = [], 0, [], []
        for row in self.db.query(sql + " ORDER BY i.unit, i.device, i.seq", args):
            key = (row["device"], row["item"])
            try:
                rule = unit_rule.get(row["unit"]) or unit_rule.setdefault(row["unit"],
                                                                          unit_rules(self.root, row["unit"]))
                if row["capture_end"] is None:  # stored before the facts were kept: read once, noted
                    m, anns = self._manifest(row)
                    f = facts(mf.effective_metadata(m, anns))
                    noted.append([*key, f["capture_end"], f["mark"], f["evidence_mark"], f["proof"]])
                else:
                    f = row
                floor = (row["floor_class"], row["floor_why"]) if row["floor_class"] else None
                cls, why = own(facts_meta(f), rule, floor)
                holds = sorted(item_holds.get(key, []) + [i for i, u in case_holds.get(row["case_number"], [])
                                                          if u is None or u == row["unit"]])
                st = status_of(row, cls, why, dt.datetime.fromisoformat(f["capture_end"]), last.get(key), holds, rule)
            except (OSError, ValueError, KeyError, EdgeError) as exc:
                unreadable.append({"device": row["device"], "item": row["item"], "why": str(exc)[:200]})
                continue
            if st.keep_until is None:
                permanent += 1
                continue
            if until is not None and st.keep_until > until:
                continue
            out.append(st.as_dict(now))
        if noted:
            self.backfill(noted)
        out.sort(key=lambda d: (d["keep_until"], d["device"], d["item"]))
        return {"now": iso(now), "until": iso(until) if until else None, "items": out, "permanent": permanent,
                "due": sum(d["state"] == "due" for d in out), "held": sum(d["state"] == "held" for d in out),
                "unreadable": unreadable}

    def backfill(self, rows: list[list]) -> None:
        """Note the facts of items stored before they were kept (migration 0011_retention_facts)."""
        for i in range(0, len(rows), 1000):
            with self.db.atomic() as db:
                for r in rows[i:i + 1000]:
                    db.execute(FACTS_UPSERT, r)
        log.info("retention facts noted for %d items stored before they were kept", len(rows))

    def run(self, *, actor: str, unit: str | None = None) -> dict:
        """Delete the items whose retention has ended and that no hold keeps; each is checked
        again, and recorded, in one transaction before its files are removed."""
        self._finish_interrupted()
        deleted, kept = [], []
        for cand in self.plan(unit=unit)["items"]:
            if cand["state"] == "held":  # past its retention, kept by a legal hold
                kept.append({"device": cand["device"], "item": cand["item"], "deleted": False,
                             "why": f"held ({', '.join(map(str, cand['holds']))})"})
                continue
            if cand["state"] != "due":
                continue
            if self.on_item:
                self.on_item(cand)
            done = self._expire(cand, actor)
            (deleted if done["deleted"] else kept).append(done)
        return {"now": iso(self.clock()), "deleted": deleted, "kept": kept}

    def _expire(self, cand: dict, actor: str) -> dict:
        dev, item = cand["device"], cand["item"]
        with self.store._item_lock(dev, item), self.db.atomic() as db:
            self.db.serialize("retention")
            now = self.clock()
            cur = db.execute("SELECT * FROM items WHERE device = ? AND item = ?", [dev, item])
            r = cur.fetchone()
            if r is None:
                return {"device": dev, "item": item, "deleted": False, "why": "no longer archived"}
            row = dict(zip([c[0] for c in cur.description], r))
            st = self.status(row, db)
            if not st.due(now):
                why = (f"held ({', '.join(map(str, st.holds))})" if st.holds else
                       f"class now {st.retention_class}, kept until {iso(st.keep_until) if st.keep_until else 'ever'}")
                return {"device": dev, "item": item, "deleted": False, "why": why}
            m, anns = self._manifest(row)
            key = self.store.signing_key
            kid = keys.key_id(key.public_key())
            t = tb.build(manifest=m, manifest_hash=row["manifest_hash"], annotations=len(anns),
                         case_number=row["case_number"], retention_class=st.retention_class,
                         keep_until=iso(st.keep_until), expired_at=iso(now), by=actor, key_id=kid)
            data = tb.encode(t)
            db.execute("INSERT INTO tombstones(device, item, seq, unit, case_number, path, manifest_hash, item_hash, "
                       "class, keep_until, expired_at, expired_by, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       [dev, item, row["seq"], row["unit"], row["case_number"], row["path"], row["manifest_hash"],
                        row["item_hash"], st.retention_class, t["keep_until"], t["expired_at"], actor, data.decode()])
            db.execute("DELETE FROM items WHERE device = ? AND item = ?", [dev, item])
            db.execute("DELETE FROM retention_facts WHERE device = ? AND item = ?", [dev, item])
            self.store.audit.append("expire", item, actor=actor, device=dev, seq=row["seq"], path=row["path"],
                                    manifest_hash=row["manifest_hash"], retention_class=st.retention_class,
                                    keep_until=t["keep_until"], bytes=row["size"])
        self._bury(row["path"], t)
        log.info("expired %s/%s (%s, kept until %s)", dev, item, st.retention_class, t["keep_until"])
        return {"device": dev, "item": item, "deleted": True, "class": st.retention_class,
                "keep_until": t["keep_until"], "path": row["path"]}

    def _bury(self, key: str, t: dict) -> None:
        """Through the evidence storage, under the item's key: the tombstone in, then everything else
        out (a crash in between is finished by the next run)."""
        self._pin_archive_key()
        files = tb.signed(t, self.store.signing_key)
        for name, data in files.items():
            self.store.storage.put(key, name, data)
        self.store.storage.keep_only(key, list(files))

    def _pin_archive_key(self) -> None:
        """``ROOT/keys/archive/KEYID.pub``: what ``verify --chain ROOT/UNIT --keys ROOT/keys`` checks
        tombstones with (kept after a key rotation)."""
        public = self.store.signing_key.public_key()
        p = self.root / "keys" / "archive" / f"{keys.key_id(public)}.pub"
        if not p.is_file():
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(p, keys.public_pem(public), mode=0o644)

    def _finish_interrupted(self) -> None:
        """Tombstones recorded whose directory still holds the item (a run stopped mid-way)."""
        for r in self.db.query("SELECT path, record FROM tombstones"):
            if self.store.storage.has(r["path"], mf.MANIFEST):
                self._bury(r["path"], json.loads(r["record"]))

    def tombstones(self) -> list[dict]:
        return self.db.query("SELECT device, item, seq, unit, case_number, class, keep_until, expired_at, expired_by "
                             "FROM tombstones ORDER BY expired_at, device, seq")



def actor_default() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"
