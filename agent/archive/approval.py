"""Approved retrieval at the archive (issue 18; docs/custody.md, "Approved retrieval and court export").

Copying evidence out is approved and logged (DOMAIN.md, "Retention": 调阅、复制须审批并留痕).
Users are enrolled with an Ed25519 public key and their roles (``requester``, ``approver``):

1. ``request``: a user asks to export a case or one item, with a reason; the request is
   a record (``edge-retrieval/1``) signed with the user's own key.
2. ``approve``: a second user — another name *and* another key — holding the approver role signs
   an approval over the request's exact bytes. Self-approval is refused.
3. the export runs only on an approved request (or, where the unit's signed policy says
   ``export_approval = false``, on the request alone), once; the audit chain records requester,
   approver, reason and exactly what left (item ids, manifest hashes, the bundle's signed index).

Every step is written to the archive's hash-chained audit log.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.common.errors import EdgeError, NotFoundError
from agent.common.fs import atomic_write
from agent.common.timeutil import now_iso
from agent.evidence import keys, manifest as mf, rules, strict

RECORD_FORMAT = "edge-retrieval/1"
ROLES = ("requester", "approver")
PURPOSES = ("export",)  # viewing an item needs its reason only (archive show --reason)


class ApprovalError(EdgeError):
    """An export refused for want of an approval (exit 3, as a role refusal)."""

    exit_code = 3


def users_dir(root: Path) -> Path:
    return Path(root) / "keys" / "users"


class Approvals:
    """The users, requests and approvals of one archive (``store``: an ArchiveStore)."""

    def __init__(self, store):
        self.store = store
        self.db = store.db
        self.root = Path(store.root)

    # --- users ----------------------------------------------------------------------------------
    def add_user(self, name: str, pubkey_pem: bytes, roles: list[str]) -> dict:
        rules.check("annotator", name)
        bad = [r for r in roles if r not in ROLES]
        if not roles or bad:
            raise EdgeError(f"角色无效 / --role: one or more of {', '.join(ROLES)} (got {', '.join(bad) or 'none'})")
        public = keys.parse_public(pubkey_pem, "public key")
        kid = keys.key_id(public)
        for u in self.db.query("SELECT name, key_id FROM retrieval_users"):
            if u["key_id"] == kid and u["name"] != name:
                raise EdgeError(f"密钥已属于用户 {u['name']} / key {kid} is user {u['name']}'s: each user has a key "
                                "of their own (an approval is a second person's)")
        old = self.db.one("SELECT key_id FROM retrieval_users WHERE name = ?", [name])
        if old and old["key_id"] != kid:
            raise EdgeError(f"用户已用另一密钥登记 / user {name} is enrolled with another key ({old['key_id']})")
        path = users_dir(self.root) / f"{name}.pub"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, keys.public_pem(public))
        with self.db.atomic() as db:
            db.execute("DELETE FROM retrieval_users WHERE name = ?", [name])
            db.execute("INSERT INTO retrieval_users(name, key_id, roles, enrolled_at) VALUES (?,?,?,?)",
                       [name, kid, ",".join(sorted(set(roles))), now_iso()])
        self.store.audit.append("enroll_user", None, user=name, key_id=kid, roles=sorted(set(roles)))
        return {"user": name, "key_id": kid, "roles": sorted(set(roles)), "path": str(path)}

    def users(self) -> list[dict]:
        return [{**u, "roles": u["roles"].split(",")} for u in
                self.db.query("SELECT name, key_id, roles, enrolled_at FROM retrieval_users ORDER BY name")]

    def _user(self, name: str, private, role: str | None = None) -> str:
        u = self.db.one("SELECT key_id, roles FROM retrieval_users WHERE name = ?", [name])
        if u is None:
            raise ApprovalError(f"{name}: 不是登记的调阅用户 / not an enrolled user (`edge-agent archive user add {name} "
                                "PUBKEY --role requester`)")
        kid = keys.key_id(private.public_key())
        if kid != u["key_id"]:
            raise ApprovalError(f"密钥不属于用户 {name} / key {kid} is not user {name}'s enrolled key")
        if role and role not in u["roles"].split(","):
            fix = "--role approver" if role == "approver" else "--role requester"
            raise ApprovalError(f"{name} 没有{'审批' if role == 'approver' else '申请'}权限 / {name} does not hold the "
                                f"{role} role (`edge-agent archive user add {name} PUBKEY {fix}`)")
        return kid

    # --- request and approval ------------------------------------------------------------------
    def request(self, *, purpose: str, case: str | None, item: str | None, reason: str, actor: str, private) -> dict:
        if purpose not in PURPOSES:
            raise EdgeError(f"用途无效 / --purpose {purpose!r}: one of {', '.join(PURPOSES)}")
        if bool(case) == bool(item):
            raise EdgeError("请指定案件编号或资料之一 / give one of --case NO and --item ITEM_ID")
        reason = mf.check_reason(reason)
        if not reason:
            raise EdgeError("须说明理由 / a reason is required (--reason \"…\")")
        kid = self._user(actor, private)
        rows = self.scope(case, item)
        units = sorted({r["unit"] for r in rows})
        record = {"format": RECORD_FORMAT, "action": "request", "purpose": purpose, "case_number": case,
                  "item_id": item, "unit": units[0] if len(units) == 1 else None,
                  "items": [r["item"] for r in rows], "reason": reason, "actor": actor, "time": now_iso()}
        data = strict.canonical(record, "retrieval request")
        sig = keys.sign(private, data)
        with self.db.atomic() as db:
            rid = db.execute("INSERT INTO retrieval_requests(purpose, unit, case_number, item, reason, requester, "
                             "requester_key_id, requested_at, record, sig, state) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                             "RETURNING id", [purpose, record["unit"], case, item, reason, actor, kid, record["time"],
                                              data.decode(), sig, "pending"]).fetchone()[0]
        self.store.audit.append("retrieval-requested", item, actor=actor, request=rid, purpose=purpose, case=case,
                                items=record["items"], reason=reason, key_id=kid)
        return {"request": rid, "state": "pending", "purpose": purpose, "case_number": case, "item": item,
                "items": record["items"], "reason": reason, "requester": actor,
                "approval_needed": any(self.approval_needed(u) for u in units)}

    def approve(self, request: int, *, actor: str, private) -> dict:
        kid = self._user(actor, private, role="approver")
        req = self.get(request)
        if req["state"] != "pending":
            raise ApprovalError(f"该申请已处理 / request {request}: already {req['state']}")
        if actor == req["requester"] or kid == req["requester_key_id"]:
            raise ApprovalError(f"不得自我审批 / request {request} was made by {req['requester']}: it cannot be "
                                "approved by the same person or key; a second user with the approver role approves")
        record = {"format": RECORD_FORMAT, "action": "approve", "request": request,
                  "request_hash": hashlib.sha256(req["record"].encode()).hexdigest(), "actor": actor,
                  "time": now_iso()}
        data = strict.canonical(record, "retrieval approval")
        sig = keys.sign(private, data)
        with self.db.atomic() as db:
            n = db.execute("UPDATE retrieval_requests SET state = 'approved', approver = ?, approver_key_id = ?, "
                           "approved_at = ?, approval = ?, approval_sig = ? WHERE id = ? AND state = 'pending'",
                           [actor, kid, record["time"], data.decode(), sig, request]).rowcount
        if n != 1:
            raise ApprovalError(f"申请已被他人改动，请重试 / request {request}: changed meanwhile")
        self.store.audit.append("retrieval-approved", req["item"], actor=actor, request=request,
                                requester=req["requester"], case=req["case_number"], reason=req["reason"], key_id=kid)
        return {"request": request, "state": "approved", "requester": req["requester"], "approver": actor}

    def get(self, request: int) -> dict:
        req = self.db.one("SELECT * FROM retrieval_requests WHERE id = ?", [request])
        if req is None:
            raise NotFoundError(f"没有该调阅申请 / request {request}: no such retrieval request (`edge-agent archive requests`)")
        return req

    def requests(self, state: str | None = None) -> list[dict]:
        sql = ("SELECT id, purpose, unit, case_number, item, reason, requester, requested_at, state, approver, "
               "approved_at, used_at FROM retrieval_requests")
        return self.db.query(sql + (" WHERE state = ?" if state else "") + " ORDER BY id", [state] if state else [])

    def scope(self, case: str | None, item: str | None) -> list[dict]:
        """The stored items a request covers: every item of the case, or the one item."""
        if item:
            return [self.store.find(item)]
        rows = self.db.query("SELECT * FROM items WHERE case_number = ? ORDER BY device, seq", [case])
        if not rows:
            raise NotFoundError(f"存档中没有该案件的资料 / case {case!r}: no item of this case in the archive")
        return rows

    def approval_needed(self, unit: str | None) -> bool:
        """The unit's signed policy (as last published by this archive) says whether an export
        needs a second person; without one it does."""
        if not unit:
            return True
        from .policy import last_published

        try:
            last = last_published(self.root, unit)
        except EdgeError:
            return True
        return True if last is None else bool(last[0].rules.export_approval)

    # --- using a request -------------------------------------------------------------------------
    def claim(self, request: int | None, *, purpose: str, case: str | None = None, item: str | None = None) -> dict:
        """Check that REQUEST allows this export (or view) and mark it used; refused with the reason."""
        if request is None:
            what = f"--case {json.dumps(case, ensure_ascii=False)}" if case else f"--item {item}"
            raise ApprovalError(f"导出须经申请和审批 / an export needs a request with its reason, approved by a second "
                                f"user: `edge-agent archive request {what} --reason TEXT --as NAME --key KEY`, then "
                                "`edge-agent archive approve REQUEST --as APPROVER --key KEY`")
        req = self.get(request)
        if req["purpose"] != purpose:
            raise ApprovalError(f"申请用途不符 / request {request} is for {req['purpose']}, not {purpose}")
        if case is not None and req["case_number"] != case:
            raise ApprovalError(f"申请范围不符 / request {request} covers case {req['case_number'] or req['item']!r}, not {case!r}")
        if item is not None and not (req["item"] == item or item in json.loads(req["record"])["items"]):
            raise ApprovalError(f"申请范围不含该资料 / request {request} does not cover item {item}")
        if req["state"] == "used":
            raise ApprovalError(f"申请已使用 / request {request} was used at {req['used_at']}: ask again")
        if req["state"] == "pending" and self.approval_needed(req["unit"]):
            raise ApprovalError(f"未经审批 / request {request} by {req['requester']} is not approved: a second user with "
                                f"the approver role approves it (`edge-agent archive approve {request} --as NAME --key "
                                "KEY`)")
        with self.db.atomic() as db:
            n = db.execute("UPDATE retrieval_requests SET state = 'used', used_at = ? WHERE id = ? AND state = ?",
                           [now_iso(), request, req["state"]]).rowcount
        if n != 1:
            raise ApprovalError(f"申请已使用 / request {request} was used meanwhile: ask again")
        return req

    def release(self, req: dict) -> None:
        """The export failed after the claim: the request may be used again."""
        with self.db.atomic() as db:
            db.execute("UPDATE retrieval_requests SET state = ?, used_at = NULL WHERE id = ?", [req["state"], req["id"]])

    def record_export(self, req: dict, what: dict) -> None:
        with self.db.atomic() as db:
            db.execute("UPDATE retrieval_requests SET exported = ? WHERE id = ?",
                       [json.dumps(what, ensure_ascii=False, sort_keys=True), req["id"]])


def approved_export(store, request: int | None, *, case: str | None = None, bundle: Path | None = None,
                    item: str | None = None, dest: Path | None = None) -> dict:
    """Run an export on an approved request: the court bundle of CASE at BUNDLE, or ITEM copied
    to DEST. The audit chain gets requester, approver, reason and exactly what left."""
    from .bundle import build

    if (case is None) == (item is None) or (case is not None and bundle is None) or (item is not None and dest is None):
        raise EdgeError("请指定 ITEM_ID DEST 或 --case NO --bundle DEST / give ITEM_ID DEST, or --case NO --bundle DEST")
    ap = Approvals(store)
    req = ap.claim(request, purpose="export", case=case, item=item)
    actor = req["requester"] + (f" (approved by {req['approver']})" if req["approver"] else "")
    try:
        if case is not None:
            out = build(store, req, case, Path(bundle))
            left = [{"item": i["item"], "manifest_hash": i["manifest_hash"]} for i in out["items"]]
            what = {"case": case, "items": left, "bundle": out["bundle"], "zip": out["zip"],
                    "bundle_sha256": out["bundle_sha256"], "zip_sha256": out["zip_sha256"], "files": out["files"]}
        else:
            target = store.export(item, Path(dest), actor=actor)
            row = store.find(item)
            out = {"item_id": item, "path": str(target)}
            what = {"items": [{"item": item, "manifest_hash": row["manifest_hash"]}], "path": str(target)}
    except BaseException:
        ap.release(req)
        raise
    ap.record_export(req, what)
    store.audit.append("retrieval-exported", item, actor=actor, request=req["id"], requester=req["requester"],
                       approver=req["approver"], reason=req["reason"], **what)
    return {**out, "request": req["id"], "requester": req["requester"], "approver": req["approver"],
            "reason": req["reason"]}
