"""Erase: after the copy, wait for the archive (or a second read) and free the recorder's memory,
file by file, only when the erase policy's condition holds for that exact file.
:class:`BayErase` is mixed into :class:`agent.dock.bay.Bay`; :func:`erase_decision` is the rule."""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import TYPE_CHECKING

from drivers.recorder import FileRecord, RecorderClient, RecorderRefused
from drivers.recorder.protocol import Result

from agent.common.errors import EdgeError
from .state import HAVE_STATES, BayState

if TYPE_CHECKING:  # pragma: no cover
    from .station import DockStation

log = logging.getLogger(__name__)


def erase_decision(policy: str, rec: FileRecord, row: dict | None, *, reread_hash: str | None = None,
                   conflict: bool = False) -> tuple[bool, str]:
    """May this file be erased from the recorder now? (erase?, why) — the one place the rule lives.

    after-archive: the archive acknowledged the item and its content hash equals the hash read
    from the recorder (and the receipt's hash, when it names one). after-local-verify: sealed
    locally and a second read of the recorder gave the same hash. never: never."""
    if rec.protected:
        return False, "重点/锁定文件不自动删除 / important or locked file: never erased automatically"
    if conflict:
        return False, "序列号冲突，暂不删除 / serial conflict: erase withheld"
    if policy == "never":
        return False, "策略为不删除 / erase policy is never"
    if row is None or not row.get("content_hash"):
        return False, "本地无对应资料 / no sealed item for this file"
    if row.get("size") not in (None, rec.size):
        return False, "大小不符 / sealed size differs from the recorder's file"
    if policy == "after-local-verify":
        if row["state"] not in HAVE_STATES or row["state"] == "rejected":
            return False, "尚未封存 / not sealed yet"
        if reread_hash is None:
            return False, "未复核 / not re-read from the recorder"
        if reread_hash != row["content_hash"]:
            return False, "复核哈希不符 / second read differs from the sealed copy"
        return True, "本地复核一致 / sealed and re-read equal"
    if policy == "after-archive":
        if row["state"] not in ("archived", "purged") or not row.get("archived_at"):
            return False, "等待归档确认 / waiting for the archive's acknowledgement"
        receipt = {}
        try:
            receipt = json.loads(row.get("receipt") or "{}") or {}
        except ValueError:
            return False, "归档回执无法解析 / archive receipt unreadable"
        for key in ("content_hash", "hash", "sha256"):
            if isinstance(receipt, dict) and receipt.get(key) and receipt[key] != row["content_hash"]:
                return False, "归档哈希不符 / the archive acknowledged a different hash"
        return True, "归档已确认 / archive acknowledged the same hash"
    return False, f"unknown erase policy {policy!r}"


class BayErase:
    """Wait for the archive and erase per policy (mixed into ``Bay``, whose state, lock, ``set()``,
    ``_problem()``, ``_reread()`` and ``gone()`` it uses)."""

    station: "DockStation"
    st: BayState
    lock: threading.RLock
    client: RecorderClient | None
    mass_storage: bool

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
            if waiting:
                return  # undocked or stopping: erase happens at the next docking
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
            ok, why = erase_decision(policy, rec, e["row"], reread_hash=e["reread"], conflict=conflict)
            if not ok:
                if rec.protected or policy == "never" or conflict:
                    e["erase_final"] = True
                continue
            self._erase(e, serial, policy, why)

    def _erase(self, e: dict, serial: str, policy: str, why: str) -> None:
        s = self.station
        rec: FileRecord = e["rec"]
        detail = dict(bay=self.name, serial=serial, file=rec.name, size=rec.size, hash=e["row"]["content_hash"],
                      policy=policy, why=why)
        try:
            if self.mass_storage:
                os.unlink(e["src"])
            else:
                self.client.erase(rec.name)
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
