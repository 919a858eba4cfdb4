"""Erase: after the copy, wait for the archive (or a second read) and free the recorder's memory,
file by file, only when the erase policy's condition holds for that exact file.
:class:`BayErase` is mixed into :class:`agent.dock.bay.Bay`; :func:`erase_decision` is the rule.

What after-archive rests on (issue 14): not the ledger's state alone but three records that
must agree: the archive's receipt (stored with the item by the uplink, ``Store.mark_archived``),
the manifest sealed for the item, and the bay's own copy record (audit ``copy``, written when the
item is sealed: the hash and size computed while the file was read off the recorder, and the
hash and file entry of the manifest that sealed it)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, NamedTuple, Sequence

from drivers.recorder import FileRecord, RecorderError, RecorderGone, RecorderRefused, RecorderTimeout
from drivers.recorder.protocol import Result

from agent.common.errors import EdgeError
from agent.evidence import manifest as mf
from .state import HAVE_STATES, BayPart

log = logging.getLogger(__name__)

BATTERY_RECHECK_S = 30.0  # the battery is read again this often while a bay waits for the archive


class Decision(NamedTuple):
    """The erase rule's answer for one file: ``erase`` now?, ``why`` (bilingual), and ``final``:
    True when waiting cannot change the answer during this docking (then the bay stops asking)."""

    erase: bool
    why: str
    final: bool = False


def sealed_summary(data: bytes, name: str) -> dict:
    """{manifest_hash, file}: the hash of a sealed manifest's bytes (with its own ``hash_alg``) and
    its entry for the recorder file ``name`` as {hash, size} of the content read from the source
    (the plaintext's when the spool is encrypted), or ``file`` None when it has no such entry."""
    try:
        doc = mf.parse(data)
    except EdgeError:  # not in the one strict form (altered in the spool): no entry to erase on
        return {"manifest_hash": None, "file": None}
    entry = next((f for f in doc.get("files") or [] if isinstance(f, dict) and f.get("name") == name), None)
    return {"manifest_hash": mf.manifest_hash(doc.get("hash_alg", "sha256"), data),
            "file": None if entry is None else {"hash": entry.get("plain_hash", entry.get("hash")),
                                                 "size": entry.get("plain_size", entry.get("size"))}}


def resume_proven(copies: Sequence[dict], resumed_at: int, reread_hash: str | None = None) -> bool:
    """A copy resumed after an unplug is proven identical to the recorder's file when the copy record
    holds a prefix check (the recorder's first bytes read again at the resume, same hash as the
    partial copy) covering the last resume point, or when a whole second read of the recorder's
    file gave the copy's hash. A copy never resumed needs no proof."""
    resumed_at = max([resumed_at, *(int(c.get("resumed_at") or 0) for c in copies)])
    if not resumed_at:
        return True
    if reread_hash is not None and copies and all(c.get("hash") == reread_hash for c in copies):
        return True
    for c in copies:
        pc = c.get("prefix_check")
        if isinstance(pc, dict) and int(pc.get("bytes") or 0) >= resumed_at and pc.get("recorder_hash") \
                and pc.get("recorder_hash") == pc.get("local_hash"):
            return True
    return False


def erase_decision(policy: str, rec: FileRecord, row: dict | None, *, copies: Sequence[dict] = (),
                   sealed: dict | None = None, reread_hash: str | None = None, conflict: bool = False,
                   resumed_at: int = 0, verify_receipt: Callable[[dict], None] | None = None) -> Decision:
    """May this file be erased from the recorder now? — the one place the rule lives.

    after-archive, every condition on this exact file: the store has the item ``archived`` (or
    ``purged`` after it); the archive's receipt, kept with it in the ledger, names a
    ``manifest_hash`` and its signature verifies again, now, against the archive keys this device
    pins (``verify_receipt``, the station's ``ReceiptPort``: none given, nothing is erased; a
    receipt altered in the ledger after the uplink accepted it, or signed by a key revoked since,
    keeps the file); the bay's copy record (audit ``copy``: the hash and size computed while
    the file was copied, and the manifest sealed for it) exists; the sealed manifest's entry for
    the file (as recorded at seal and, while still in the spool, as read back) has that
    same hash and size, which is the recorder's file size; and the receipt's manifest hash is the
    hash of that sealed manifest (the ledger's, the copy record's and, when still in the spool,
    the hash of its bytes). after-local-verify: sealed locally and a second read of the recorder
    gave the same hash. never: never.

    Whatever the policy, a copy resumed after an unplug (``resumed_at``: the last resume point the
    audit's ``ingest`` entries name, or the copy record's) is erased only when :func:`resume_proven`.

    ``copies``: the bay's copy records of the item (audit ``copy`` details); ``sealed``: the
    :func:`sealed_summary` of the sealed manifest still in the spool, None once purged."""
    if rec.protected:
        return Decision(False, "重点/锁定文件不自动删除 / important or locked file: never erased automatically", True)
    if conflict:
        return Decision(False, "序列号冲突，暂不删除 / serial conflict: erase withheld", True)
    if policy == "never":
        return Decision(False, "策略为不删除 / erase policy is never", True)
    if row is None or not row.get("content_hash"):
        return Decision(False, "本地无对应资料 / no sealed item for this file")
    if policy == "after-local-verify":
        if row.get("size") not in (None, rec.size):
            return Decision(False, "大小不符 / sealed size differs from the recorder's file")
        if row["state"] not in HAVE_STATES or row["state"] == "rejected":
            return Decision(False, "尚未封存 / not sealed yet")
        if reread_hash is None:
            return Decision(False, "未复核 / not re-read from the recorder")
        if reread_hash != row["content_hash"]:
            return Decision(False, "复核哈希不符 / second read differs from the sealed copy")
        return Decision(True, "本地复核一致 / sealed and re-read equal", True)
    if policy == "after-archive":
        if row["state"] not in ("archived", "purged") or not row.get("archived_at"):
            return Decision(False, "等待归档确认 / waiting for the archive's acknowledgement")
        if not resume_proven(copies, resumed_at, reread_hash):
            return Decision(False, "续传未经复核 / the copy was resumed after an unplug and is not proven identical "
                                   "to the recorder's file (no prefix check, no matching second read)", True)
        return _archived_and_same(rec, row, copies, sealed, verify_receipt)
    return Decision(False, f"unknown erase policy {policy!r}", True)


def _archived_and_same(rec: FileRecord, row: dict, copies: Sequence[dict], sealed: dict | None,
                       verify_receipt: Callable[[dict], None] | None) -> Decision:
    def refuse(why: str) -> Decision:
        return Decision(False, why, True)

    try:
        receipt = json.loads(row.get("receipt") or "null")
    except ValueError:
        receipt = None
    named = receipt.get("manifest_hash") if isinstance(receipt, dict) else None
    if not isinstance(named, str) or not named:
        return refuse("归档回执未列出清单哈希 / the archive's receipt names no manifest hash")
    if verify_receipt is None:
        return refuse("无法复核归档回执签名 / no archive keys to check the receipt's signature again")
    try:
        verify_receipt(receipt)
    except EdgeError as exc:
        return refuse(f"归档回执签名无效 / the archive's receipt kept in the ledger does not verify against the "
                      f"archive keys pinned now: {exc}")
    if not copies:
        return refuse("无复制记录 / no record of this file's copy from the recorder (hash computed while copying)")
    for c in copies:
        copied = {"hash": c.get("hash"), "size": c.get("size")}
        if c.get("file") != rec.name or copied["size"] != rec.size:
            return refuse(f"复制记录不符 / the copy record is of {c.get('file')!r}, {c.get('size')} bytes; "
                          f"the recorder's file is {rec.name!r}, {rec.size} bytes")
        # the entry as recorded at seal, and as the spool's manifest has it now (while not purged)
        for entry in (c.get("manifest_file"), *((sealed["file"],) if sealed is not None else ())):
            if entry == copied:
                continue
            got = entry or {}
            return refuse(f"复制哈希与封存清单不符 / the hash computed while copying ({str(copied['hash'])[:16]}…, "
                          f"{copied['size']} bytes) differs from the sealed manifest's entry "
                          f"({str(got.get('hash'))[:16]}…, {got.get('size')} bytes)")
        for what, h in (("the ledger", row.get("manifest_hash")), ("the copy record", c.get("manifest_hash")),
                        ("the spool", sealed["manifest_hash"] if sealed is not None else named)):
            if h != named:
                return refuse(f"归档回执的清单哈希不符 / the archive's receipt names manifest {named[:16]}…, the "
                              f"manifest sealed for this file is {str(h)[:16]}… ({what})")
    return Decision(True, "归档回执与复制一致 / the archive's receipt names the manifest sealed for this copy "
                          "(same hash and size as read from the recorder)", True)


class _AlreadyGone(Exception):
    """An ERASE re-sent on a new connection found no such file: the first one (whose answer was lost
    with the old connection) erased it."""


class BayErase(BayPart):
    """Wait for the archive and erase per policy (mixed into ``Bay``, whose state, lock, ``set()``,
    ``_problem()``, ``_reread()`` and ``gone()`` it uses)."""

    _battery_at: float = 0.0

    # --- after copying: upload and erase ---------------------------------------------------
    def _finish(self, plan: list[dict], serial: str) -> None:
        s = self.station
        cfg = s.cfg.dock
        policy = cfg.erase_policy
        candidates = [e for e in plan if e["item"]]
        for e in candidates:
            if e["rec"].protected:
                with self.lock:
                    self.st.kept_protected += 1
        if policy == "after-local-verify":
            for e in candidates:
                if e["reread"] is None and not e["rec"].protected and e["row"]:
                    self.set("verifying", f"复核 {e['rec'].name} / re-reading {e['rec'].name}")
                    try:
                        e["reread"] = self._reread(e["src"])
                    except OSError as exc:
                        self._problem(f"复核失败 / {e['rec'].name}: {exc.strerror}")
            self._erase_ready(candidates, serial, policy)
        elif policy == "after-archive":
            waiting = [e for e in candidates if not e["rec"].protected]
            self.set("uploading", "已保存，可取走 / saved: you may remove the recorder (erased after archiving)")
            while waiting and not self.gone():
                self._refresh_rows(candidates)
                policy = cfg.erase_policy  # a central command may change it while the bay waits
                if policy != "after-archive":
                    self._erase_ready(waiting, serial, policy)
                    waiting = []
                    break
                self._erase_ready(waiting, serial, policy)
                waiting = [e for e in waiting if not e.get("erased") and not e.get("erase_final")]
                with self.lock:
                    self.st.archived = sum(1 for e in candidates if e["row"] and e["row"]["state"] in ("archived", "purged"))
                s.bay_changed(self)
                if not waiting:
                    break
                s.stop_event.wait(1.0)
                if time.monotonic() - self._battery_at >= BATTERY_RECHECK_S:
                    self._recheck_battery()
            if waiting:
                return  # undocked or stopping: erase happens at the next docking
        self._recheck_battery()  # it charged while docked: the alarm may end here
        with self.lock:
            problems = list(self.st.problems)
            archived = sum(1 for e in candidates if e["row"] and e["row"]["state"] in ("archived", "purged"))
            self.st.archived = archived
        if problems:
            self.set("error", reason=f"{len(problems)} 个问题 / {len(problems)} problem(s): {problems[0]}",
                     message="部分文件未处理，请联系管理员 / some files need attention: see problems", rate_bps=0, eta_s=None)
        else:
            s.clear_alarm("recorder_no_answer", self)
            self.set("done", "完成，可取走 / done: you may remove the recorder", rate_bps=0, eta_s=None)

    def _recheck_battery(self) -> None:
        """Read the battery again (``Bay.read_battery``) when the command channel is there."""
        self._battery_at = time.monotonic()
        if self.mass_storage or self.client is None or self.gone() or not os.path.exists(self.st.path):
            return
        try:
            self.read_battery()
        except RecorderError as exc:
            log.info("bay %s: battery not read again: %s", self.name, exc)

    def _refresh_rows(self, entries: list[dict]) -> None:
        store = self.station.store
        for e in entries:
            if e["item"]:
                try:
                    e["row"] = store.item(e["item"])
                except EdgeError:
                    e["row"] = None

    def _erase_ready(self, entries: list[dict], serial: str, policy: str) -> None:
        s = self.station
        conflict = s.serial_conflicted(serial)
        for e in entries:
            if e.get("erased") or e.get("erase_final"):
                continue
            rec: FileRecord = e["rec"]
            copies, sealed = self._evidence(e) if policy == "after-archive" else ((), None)
            if copies and e["reread"] is None and e["src"] is not None \
                    and not resume_proven(copies, e.get("resumed_at", 0)):
                # resumed by a version that did not check the prefix: a whole second read proves it, or not
                self.set("verifying", f"复核 {rec.name} / re-reading {rec.name} (resumed copy)")
                try:
                    e["reread"] = self._reread(e["src"])
                except OSError as exc:
                    self._problem(f"复核失败 / {rec.name}: {exc.strerror}")
                self.set("uploading")
            d = erase_decision(policy, rec, e["row"], copies=copies, sealed=sealed, reread_hash=e["reread"],
                               conflict=conflict, resumed_at=e.get("resumed_at", 0),
                               verify_receipt=s.receipts.verify_receipt if s.receipts is not None else None)
            if d.erase:
                self._erase(e, serial, policy, d.why)
                continue
            if d.final:
                e["erase_final"] = True
                if not (rec.protected or policy == "never" or conflict):  # a check failed: say why, once
                    s.store.audit.append("erase", e["item"], actor="agent:dock", result="withheld", bay=self.name,
                                         serial=serial, file=rec.name, size=rec.size, policy=policy, why=d.why)
                    self._problem(f"未删除 / {rec.name} kept on the recorder: {d.why}")

    def _erase_over_channel(self, name: str) -> None:
        """ERASE on the command channel; when it went away in mass-storage mode (a recorder that
        re-enumerates), wait for it to come back (``Bay.reconnect``) and send it again there. The
        new connection has no duplicate cache of the old one: 12 NOT_FOUND then means the first
        ERASE did its work."""
        client = self.client
        if client is not None and self.msdc_mount is not None and not os.path.exists(self.st.path):
            client = None  # the port is gone: do not wait for an answer on it
        if client is not None:
            try:
                client.erase(name)
                return
            except (RecorderGone, RecorderTimeout):
                if self.msdc_mount is None:
                    raise
            resent = True
        else:
            resent = False
        client = self.reconnect()
        try:
            client.erase(name)
        except RecorderRefused as exc:
            if resent and exc.result == Result.NOT_FOUND:
                raise _AlreadyGone() from None
            raise

    def _evidence(self, e: dict) -> tuple[list[dict], dict | None]:
        """The copy records of the item and the summary of its sealed manifest in the spool (None
        once purged), read once the store has the item archived (the rule needs them only then)."""
        row = e["row"]
        if row is None or row["state"] not in ("archived", "purged"):
            return [], None
        if "copies" not in e:
            store = self.station.store
            e["copies"] = [json.loads(a["detail"]) for a in store.audit.entries(item_id=e["item"], action="copy")]
            e["resumed_at"] = max([0, *(int(json.loads(a["detail"]).get("resumed_at") or 0)
                                        for a in store.audit.entries(item_id=e["item"], action="ingest"))])
            data = store.sealed_manifest(e["item"])
            e["sealed"] = sealed_summary(data, e["rec"].name) if data is not None else None
        return e["copies"], e["sealed"]

    def _erase(self, e: dict, serial: str, policy: str, why: str) -> None:
        s = self.station
        rec: FileRecord = e["rec"]
        detail = dict(bay=self.name, serial=serial, file=rec.name, size=rec.size, hash=e["row"]["content_hash"],
                      policy=policy, why=why)
        try:
            if self.mass_storage or getattr(self, "scsi", False):  # no ERASE function: delete on the volume
                os.unlink(e["src"])
            else:
                self._erase_over_channel(rec.name)
        except _AlreadyGone:
            e["erase_final"] = True
            s.store.audit.append("erase", e["item"], actor="agent:dock", result="already gone", **detail)
            return
        except RecorderRefused as exc:
            e["erase_final"] = True
            s.store.audit.append("erase", e["item"], actor="agent:dock", result="refused", error=str(exc), **detail)
            if exc.result == Result.PROTECTED:
                with self.lock:
                    self.st.kept_protected += 1
            else:
                self._problem(f"删除失败 / erase of {rec.name} refused: {exc}")
            return
        except FileNotFoundError:
            e["erase_final"] = True
            s.store.audit.append("erase", e["item"], actor="agent:dock", result="already gone", **detail)
            return
        e["erased"] = True
        s.store.audit.append("erase", e["item"], actor="agent:dock", result="erased", **detail)
        with self.lock:
            self.st.erased += 1
        log.info("bay %s: erased %s from recorder %s (%s)", self.name, rec.name, serial, why)
