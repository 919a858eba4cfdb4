"""Crash recovery of the spool and the ledger, and the lock that gives the device chain one head.

After a crash the spool and the ledger are brought back in step: items sealed on disk but not
recorded are rolled forward (when they verify and extend the chain head), interrupted one-shot
work is discarded, resumable copies are kept, orphan directories are removed. Every action is
audited. Mixed into :class:`~agent.store.store.Store`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.fs import rename_durable
from ..evidence import manifest as mf
from ..evidence.verify import verify_item

log = logging.getLogger(__name__)

_chain_thread_lock = threading.RLock()


class _ChainLock:
    """flock on ``data_dir/chain.lock`` (other processes: an ingest beside the agent) under a
    process-wide lock (other threads: the bays, the room's sealer)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        _chain_thread_lock.acquire()
        self.fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        _chain_thread_lock.release()


class Recovery:
    """recover(), settle_unrecorded() and the chain lock; mixed into Store (uses its ledger,
    spool directories, audit log and keyring)."""

    def _chain_lock(self) -> _ChainLock:
        """Serialises sealing across threads and processes: the device chain has one head."""
        return _ChainLock(self.data_dir / "chain.lock")

    def recover(self) -> list[str]:
        """After a crash: roll sealed-but-unrecorded items forward, discard interrupted one-shot work
        (resumable work, with a source key, is kept for resume), remove orphans. Audited."""
        actions: list[str] = []
        with self._chain_lock():
            for row in self.items(state="receiving"):
                path = Path(row["path"])
                sealed_dir = self.items_dir / row["id"]
                for cand in (sealed_dir, path):
                    if (cand / mf.MANIFEST).is_file() and (cand / mf.SIGNATURE).is_file():
                        if self._roll_forward(row, cand):
                            actions.append(f"{row['id']}: sealed before the crash, recorded now")
                        break
                else:
                    if _owner_alive(path):
                        continue  # another live process (e.g. a CLI ingest) is still writing it
                    if row["source_key"]:
                        actions.append(f"{row['id']}: partial copy kept for resume")
                        continue
                    shutil.rmtree(path, ignore_errors=True)
                    with self.ledger.atomic():
                        self._update_item(row["id"], state="discarded", error="interrupted before sealing")
                        self.audit.append("recover", row["id"], actor="agent:recover", result="discarded",
                                          reason="interrupted before sealing")
                    actions.append(f"{row['id']}: interrupted before sealing, discarded")
            known = self.item_ids()
            for parent in (self.incoming, self.items_dir):
                for d in parent.iterdir():
                    if d.name not in known:
                        shutil.rmtree(d, ignore_errors=True)
                        self.audit.append("recover", d.name, actor="agent:recover", result="orphan removed",
                                          path=str(d))
                        actions.append(f"{d.name}: orphan directory removed")
        for a in actions:
            log.warning("recovery: %s", a)
        return actions

    def settle_unrecorded(self) -> list[str]:
        """Call with the chain lock held: record items that a process killed mid-seal left sealed on
        disk but not in the ledger, so that the next seal does not reuse their chain position (a
        fork). Holding the chain lock, no live sealer can be between its manifest and its ledger row."""
        done = []
        for row in self.items(state="receiving"):
            for cand in (self.items_dir / row["id"], Path(row["path"])):
                if (cand / mf.MANIFEST).is_file() and (cand / mf.SIGNATURE).is_file():
                    if self._roll_forward(row, cand):
                        log.warning("recovery: %s was sealed by a process that died; recorded now", row["id"])
                        done.append(row["id"])
                    break
        return done

    def _roll_forward(self, row: dict, cand: Path) -> bool:
        seq, head = self.head()
        try:
            rep = verify_item(cand, self.keyring())
        except EdgeError as exc:
            log.error("recovery: %s has a manifest that does not verify (%s); kept for inspection", cand, exc)
            return False
        if rep.device_seq != seq + 1 or rep.prev_manifest_hash != head:
            log.error("recovery: %s does not extend the chain head %s; kept for inspection", cand, seq)
            return False
        target = self.items_dir / row["id"]
        if cand != target:
            rename_durable(cand, target)
        self._record_sealed(row["id"], target, rep.manifest, rep.manifest_hash, rep.bytes)
        self.audit.append("recover", row["id"], actor="agent:recover", result="sealed", seq=rep.device_seq)
        return True


def _owner_alive(path: Path) -> bool:
    try:
        pid = json.loads((path / "pending.json").read_text()).get("pid")
    except (OSError, ValueError):
        return False
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


