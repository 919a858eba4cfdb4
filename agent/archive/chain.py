"""Chain history: every signed chain checkpoint a device publishes is kept (``chain_history``), and
what it shows is alarmed (``chain_alarms``; docs/custody.md "Chain history"):

``chain_fork``      two checkpoints name different heads for one chain length, or a checkpoint's head
                    is not the manifest the archive holds at that chain position: two chains were signed
                    with the device's key;
``chain_rollback``  a checkpoint announces fewer items (or, for the same items, fewer annotations) than
                    one received before: an older checkpoint replayed, or items removed at the edge;
``chain_gap``       items a checkpoint announced that the archive has not received within the upload
                    deadline (``archive.chain_gap_h`` hours after they were first announced);
``chain_silent``    no new checkpoint from the device for ``archive.chain_silent_h`` hours (devices
                    sign one at start, after every sealed item, and every ``uplink.checkpoint_every_s``).

Fork and rollback stay raised until a custodian acknowledges them with a reason
(``archive chain DEVICE --acknowledge CODE --reason``; the history that shows them is kept); gap and silence are evaluated
against the archive's clock (:attr:`ArchiveStore.clock`, injectable in tests) whenever a checkpoint
arrives, every minute in ``archive serve``, and by ``archive chain DEVICE``. The monitor shows the
raised ones per device and unit (:func:`read_chain_alarms`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.pg import is_url, read_once
from agent.common.timeutil import from_epoch, iso
from agent.wire import checkpoint as cpmod

log = logging.getLogger(__name__)

#: code -> (severity, 中文 / English title)
ALARMS = {
    "chain_fork": ("critical", "链分叉 / chain fork"),
    "chain_rollback": ("critical", "链回退 / chain rollback"),
    "chain_gap": ("warning", "逾期未收到 / items announced, not received in time"),
    "chain_silent": ("warning", "链静默 / device silent"),
    "station_audit": ("critical", "站点审计日志断链 / station audit log broken"),
}
#: alarms a custodian clears by hand (the others clear when their cause is gone)
ACKNOWLEDGED = ("chain_fork", "chain_rollback", "station_audit")
DEFAULT_GAP_H = 24
#: missing chain positions looked at (and named) at most
MISSING_SHOWN = 1000
DEFAULT_SILENT_H = 3


def _at(ts: float) -> str:
    return iso(from_epoch(ts))


class ChainHistory:
    """Mixed into :class:`agent.archive.storage.ArchiveStore` (``self.db``, ``self.clock``)."""

    chain_gap_s: float = DEFAULT_GAP_H * 3600
    chain_silent_s: float = DEFAULT_SILENT_H * 3600

    def _init_chain(self) -> None:
        #: device -> (count, annotations) of the last checkpoint this process received
        self._chain_seen: dict[str, tuple[int, int]] = {}

    # --- reception ---------------------------------------------------------------------------
    def record_checkpoint(self, cp: cpmod.Checkpoint, payload: bytes) -> str | None:
        """Keep ``cp`` (already verified) in the history; returns the finding it raised, if any."""
        now = self.clock()
        dev = cp.device
        ann = cp.annotations or 0
        findings: list[str] = []
        with self.db.atomic() as db:
            self.db.serialize("chain")
            known = db.execute("SELECT id FROM chain_history WHERE device = ? AND sig = ?", [dev, cp.sig]).fetchone()
            if known:  # a retained re-delivery, a second receiver, or an old checkpoint published again
                db.execute("UPDATE chain_history SET repeats = repeats + 1, last_ts = ? WHERE id = ?", [now, known[0]])
                seen = self._chain_seen.get(dev)
                if seen and seen > (cp.count, ann):
                    findings.append((f"an earlier checkpoint ({cp.count} items, {ann} annotations, signed {cp.time}) was "
                               f"published again after one of {seen[0]} items, {seen[1]} annotations"))
                    self._raise(db, dev, "chain_rollback", findings[-1], now)
                    db.execute("UPDATE chain_history SET finding = ? WHERE id = ?", [findings[-1][:1000], known[0]])
            else:
                top = db.execute("SELECT count, annotations, time FROM chain_history WHERE device = ? "
                                 "ORDER BY count DESC, annotations DESC LIMIT 1", [dev]).fetchone()
                if top and (top[0], top[1] or 0) > (cp.count, ann):
                    findings.append((f"checkpoint signed {cp.time} announces {cp.count} items, {ann} annotations; "
                               f"one signed {top[2]} announced {top[0]} items, {top[1] or 0} annotations"))
                    self._raise(db, dev, "chain_rollback", findings[-1], now)
                other = next((r for r in db.execute("SELECT head, time FROM chain_history WHERE device = ? AND count = ?",
                                                    [dev, cp.count]).fetchall() if r[0] != cp.head), None)
                if other:
                    findings.append((f"two heads for chain length {cp.count}: {str(other[0])[:16]}… (signed {other[1]}) and "
                               f"{str(cp.head)[:16]}… (signed {cp.time})"))
                    self._raise(db, dev, "chain_fork", findings[-1], now)
                held = db.execute("SELECT item, manifest_hash FROM items WHERE device = ? AND seq = ?",
                                  [dev, cp.count]).fetchone() if cp.count else None
                if held and held[1] != cp.head:
                    findings.append((f"checkpoint signed {cp.time} names head {str(cp.head)[:16]}… for chain position "
                               f"{cp.count}; the archive holds item {held[0]} there ({held[1][:16]}…)"))
                    self._raise(db, dev, "chain_fork", findings[-1], now)
                db.execute("INSERT INTO chain_history(device, count, head, annotations, time, key_id, sig, payload, "
                           "received_at, received_ts, last_ts, finding) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           [dev, cp.count, cp.head, cp.annotations, cp.time, cp.key_id, cp.sig,
                            payload.decode("utf-8", "replace"), _at(now), now, now, "; ".join(findings) or None])
        finding = "; ".join(findings) or None
        if finding:
            log.warning("chain of %s: %s", dev, finding)
        seen = self._chain_seen.get(dev)
        if not seen or (cp.count, ann) > seen:
            self._chain_seen[dev] = (cp.count, ann)
        self.evaluate_chain(dev)
        return finding

    def _raise(self, db, dev: str, code: str, detail: str, now: float) -> None:
        row = db.execute("SELECT active FROM chain_alarms WHERE device = ? AND code = ?", [dev, code]).fetchone()
        if row and row[0]:
            db.execute("UPDATE chain_alarms SET detail = ? WHERE device = ? AND code = ?", [detail, dev, code])
            return
        db.execute("INSERT INTO chain_alarms(device, code, active, since, detail, cleared_at) VALUES (?,?,1,?,?,NULL) "
                   "ON CONFLICT(device, code) DO UPDATE SET active = 1, since = excluded.since, "
                   "detail = excluded.detail, cleared_at = NULL", [dev, code, _at(now), detail])
        self.audit.append("chain_alarm", None, actor=f"archive:{self.receiver}", device=dev, code=code, detail=detail)

    def _clear(self, db, dev: str, code: str, now: float) -> None:
        db.execute("UPDATE chain_alarms SET active = 0, cleared_at = ? WHERE device = ? AND code = ? AND active = 1",
                   [_at(now), dev, code])

    def acknowledge_chain_alarm(self, device: str, code: str, reason: str, actor: str | None = None) -> dict:
        """A custodian who has looked into a fork, a rollback or a broken station log clears it,
        with the reason, in the archive's audit log; the history that showed it stays. The same
        finding again raises it again."""
        self.registry.device(device)
        if code not in ACKNOWLEDGED:
            raise EdgeError(f"告警 {code} 不能手工解除 / {code} cannot be acknowledged: give one of "
                            f"{', '.join(ACKNOWLEDGED)} (gap and silence clear themselves)")
        if not (reason or "").strip():
            raise EdgeError("需要理由 / --reason is required: what was found and done")
        now = self.clock()
        with self.db.atomic() as db:
            row = db.execute("SELECT detail FROM chain_alarms WHERE device = ? AND code = ? AND active = 1",
                             [device, code]).fetchone()
            if not row:
                raise EdgeError(f"device {device} has no raised {code} alarm")
            self._clear(db, device, code, now)
            self.audit.append("chain_ack", None, actor=actor, device=device, code=code, reason=reason.strip(),
                              detail=row[0])
        return self.chain_verdict(device)

    # --- evaluation --------------------------------------------------------------------------
    def held_seqs(self, device: str) -> set[int]:
        """Chain positions the archive accounts for: stored items, and items deleted when their
        retention ended (their tombstones, agent/archive/retention.py)."""
        return {r["seq"] for r in self.db.query("SELECT seq FROM items WHERE device = ? UNION "
                                                "SELECT seq FROM tombstones WHERE device = ?", [device, device])}

    def evaluate_chain(self, device: str, now: float | None = None) -> dict:
        """Gap and silence of ``device`` at ``now`` (default the store's clock), raised or cleared;
        returns the verdict (every raised alarm of the device). Cheap when nothing is missing (two
        aggregate queries); the history is read only from the first missing chain position on."""
        fixed = now is not None
        now = self.clock() if now is None else now
        late, first, missing_n, silent, last, active = self._chain_state(device, now)
        if not late and not silent and not active & {"chain_gap", "chain_silent"}:
            return self.chain_verdict(device)  # nothing to raise or clear: no write
        with self.db.atomic() as db:
            self.db.serialize("chain")
            if not fixed:
                # evaluations take turns here (the minute's, one after each checkpoint, `archive chain`),
                # each on the clock and the history as they are now: one that looked earlier must not
                # undo what another raised or cleared meanwhile
                now = self.clock()
                late, first, missing_n, silent, last, active = self._chain_state(device, now)
            if late:
                oldest = min(first[s] for s in late)
                shown = ", ".join(map(str, late[:20])) + (f" … ({missing_n} missing in all)" if len(late) > 20 else "")
                self._raise(db, device, "chain_gap",
                            f"chain position(s) {shown} announced since {_at(oldest)}, not received within "
                            f"{self.chain_gap_s / 3600:g} h", now)
            else:
                self._clear(db, device, "chain_gap", now)
            if silent:
                self._raise(db, device, "chain_silent",
                            f"no new checkpoint since {_at(last)} (expected within {self.chain_silent_s / 3600:g} h)", now)
            else:
                self._clear(db, device, "chain_silent", now)
        return self.chain_verdict(device)

    def _chain_state(self, device: str, now: float):
        """(late positions, first announced of each, missing count, silent, last checkpoint time,
        active alarm codes) of ``device`` at ``now``."""
        agg = self.db.one("SELECT max(count) AS top, max(received_ts) AS last FROM chain_history WHERE device = ?",
                          [device]) or {}
        top, last = agg.get("top") or 0, agg.get("last")
        late: list[int] = []
        first: dict[int, float] = {}
        missing_n = 0
        if top:
            n = self.db.one("SELECT count(*) AS n FROM (SELECT seq FROM items WHERE device = ? AND seq <= ? UNION "
                            "SELECT seq FROM tombstones WHERE device = ? AND seq <= ?) h", [device, top, device, top])["n"]
            missing_n = top - n
        if missing_n > 0:
            held = self.held_seqs(device)
            missing = []
            for s in range(1, top + 1):  # the first MISSING_SHOWN missing positions are named
                if s not in held:
                    missing.append(s)
                    if len(missing) >= MISSING_SHOWN:
                        break
            # the first time each of them was announced: the history in order of arrival, running top
            hist = self.db.query("SELECT count, received_ts FROM chain_history WHERE device = ? AND count >= ? "
                                 "ORDER BY received_ts, id", [device, missing[0]])
            k = 0
            for h in hist:
                while k < len(missing) and missing[k] <= h["count"]:
                    first[missing[k]] = h["received_ts"]
                    k += 1
            late = [s for s in missing if s in first and now - first[s] > self.chain_gap_s]
        dev = self.registry.device(device, missing_ok=True)
        if last is None and dev:
            try:
                from agent.common.timeutil import parse_iso

                last = parse_iso(dev["enrolled_at"]).timestamp()
            except EdgeError:
                last = None
        silent = last is not None and now - last > self.chain_silent_s
        active = {r["code"] for r in self.db.query("SELECT code FROM chain_alarms WHERE device = ? AND active = 1",
                                                   [device])}
        return late, first, missing_n, silent, last, active

    def evaluate_chains(self, now: float | None = None) -> None:
        """Every enrolled device (``archive serve`` calls this every minute)."""
        for d in self.registry.devices():
            self.evaluate_chain(d["id"], now)

    def chain_verdict(self, device: str) -> dict:
        rows = self.db.query("SELECT * FROM chain_alarms WHERE device = ? ORDER BY code", [device])
        raised = [_alarm(r) for r in rows if r["active"]]
        return {"device": device, "ok": not raised, "alarms": raised,
                "cleared": [_alarm(r) for r in rows if not r["active"]]}

    def chain_report(self, device: str, actor: str | None = None) -> dict:
        """``archive chain DEVICE``: the device's checkpoint history and its verdict (audited)."""
        dev = self.registry.device(device)
        verdict = self.evaluate_chain(device)
        hist = self.db.query("SELECT id, count, head, annotations, time, key_id, received_at, repeats, finding "
                             "FROM chain_history WHERE device = ? ORDER BY received_ts, id", [device])
        held = self.held_seqs(device)
        top = max((h["count"] for h in hist), default=0)
        missing = []
        for s in range(1, top + 1):
            if s not in held:
                missing.append(s)
                if len(missing) >= MISSING_SHOWN:
                    break
        self.audit.append("retrieve", None, actor=actor, what="chain", device=device)
        return {"device": device, "unit": dev["unit"], "key_id": dev["key_id"], "checkpoints": hist,
                "announced": top, "held": len(held), "missing": missing,
                "gap_deadline_h": self.chain_gap_s / 3600, "silent_after_h": self.chain_silent_s / 3600,
                "verdict": "ok" if verdict["ok"] else "alarm", "alarms": verdict["alarms"],
                "cleared": verdict["cleared"]}


def _alarm(r: dict) -> dict:
    sev, title = ALARMS.get(r["code"], ("warning", r["code"]))
    return {"code": r["code"], "severity": sev, "title": title, "since": r["since"], "detail": r["detail"],
            "cleared_at": r.get("cleared_at")}


def read_chain_alarms(root: Path | str) -> list[dict]:
    """The raised chain alarms of every device with its unit, read-only (the monitor's view:
    ``edge-agent monitor --enrolment ROOT`` reads them with the enrolment). ``root`` may be the
    postgresql:// URL of the archive's index."""
    import sqlite3

    sql = ("SELECT a.device, d.unit, a.code, a.since, a.detail FROM chain_alarms a JOIN devices d ON d.id = a.device "
           "WHERE a.active = 1 ORDER BY a.device, a.code")
    try:
        if is_url(str(root)):
            rows = read_once(str(root), sql)
        else:
            path = Path(root) / "archive.db"
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
            try:
                conn.row_factory = sqlite3.Row
                rows = [dict(r) for r in conn.execute(sql)]
            finally:
                conn.close()
    except (sqlite3.Error, EdgeError) as exc:  # an index from before the chain history: none yet
        if "no such table" in str(exc) or "does not exist" in str(exc):
            return []
        raise EdgeError(f"{root}: 无法读取证据链告警 / cannot read the chain alarms ({exc})") from None
    return [dict(r, **dict(zip(("severity", "title"), ALARMS.get(r["code"], ("warning", r["code"]))))) for r in rows]
