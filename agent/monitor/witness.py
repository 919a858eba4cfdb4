"""The monitor as an independent witness of the archive's log, as Certificate Transparency's
monitors are (mixed into :class:`agent.monitor.ingest.Ingest`).

The archive publishes each checkpoint over its whole store retained on ``P/archive/checkpoint``
together with the checkpoint it published before and the RFC 6962 consistency proof between them
(``edge-archive-consistency/1``, agent/wire/archive_checkpoint.py). The monitor keeps every
checkpoint it receives (``archive_checkpoints``, outside the archive), verifies its signature
with the archive's keys (``ROOT/_archive/archive.pub`` and its retired keys, or the keys given with
``monitor --archive-key``), and checks that it extends the last good one it kept:

- ``first``: nothing kept before (trusted on first use; a proof from ``previous`` is still checked);
- ``same``: the same size and root as the last good one (an hour without new items);
- ``consistent``: larger, with a proof from exactly the last good one that verifies;
- ``gap``: larger, its proof from a checkpoint this monitor never received (it was down): the link
  from the last good one is unproven; warning ``archive_log_unverified`` until the next checkpoint
  verifies; ``archive audit`` with the last good one (``monitor checkpoints --show ID``) closes it;
- otherwise critical ``archive_log_inconsistent``: a smaller size (the log shrank), another root for
  the same size, an older time, a proof that fails or is missing, a key that is not the archive's,
  a bad signature or a record that is not one. That alarm is never cleared by a later checkpoint:
  a signed checkpoint that does not extend the one before is proof that the log was rewritten.

A retained re-delivery (the same signature) is a duplicate and changes nothing. Alarms are the
device ``archive``'s, in the page, ``/api/alarms`` and ``monitor history``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

from agent.common.errors import EdgeError, VerifyError
from agent.wire.archive_checkpoint import check_checkpoint, check_consistency, parse_published

log = logging.getLogger(__name__)

DEVICE = "archive"
INCONSISTENT = "archive_log_inconsistent"
UNVERIFIED = "archive_log_unverified"
GOOD = ("first", "same", "consistent", "gap")
TITLES = {INCONSISTENT: ("critical", "存档日志不一致", "archive log inconsistent"),
          UNVERIFIED: ("warning", "存档日志未能核对", "archive log not verified")}


def _t(s: str) -> float:
    try:
        return dt.datetime.fromisoformat(s).timestamp()
    except (TypeError, ValueError):
        return float("nan")


class Witness:
    #: the archive's public keys (a loader; None: none known, every checkpoint is refused)
    archive_keys = None

    def _load_witness(self) -> None:
        self.cp_rows: list[dict] = []
        self._alarm_since: dict = {}
        self._cp_sigs: set[str] = {r["sig"] for r in self.db.query("SELECT sig FROM archive_checkpoints "
                                                                   "WHERE sig IS NOT NULL")}
        self._cp_last: dict | None = None
        self._acks_seen: set[int] = set()
        self._base_from_db()

    def _base_from_db(self) -> None:
        """The base the next checkpoint must extend: the newest kept checkpoint that was good, or
        that a person acknowledged and the archive's key signed (``monitor checkpoints --acknowledge``)."""
        rows = self.db.query("SELECT id, verdict, checkpoint, ack_at FROM archive_checkpoints WHERE verdict IN "
                             "('first', 'same', 'consistent', 'gap') OR ack_at IS NOT NULL ORDER BY id DESC LIMIT 50")
        pubs = None
        self._acks_seen |= {r["id"] for r in rows if r["ack_at"] is not None}
        for r in rows:
            cp = json.loads(r["checkpoint"]) if r["checkpoint"] else None
            if r["verdict"] in GOOD:
                self._cp_last = cp
                return
            pubs = self._archive_pubs() if pubs is None else pubs
            try:
                self._cp_last = check_checkpoint(cp, pubs)
                return
            except VerifyError:
                continue  # acknowledged but not the archive's (a stranger's): never a base

    def reload_witness_acks(self, now: float | None = None) -> None:
        """Acknowledgements written by ``monitor checkpoints --acknowledge`` (read every reload_s):
        an acknowledged checkpoint of the archive's becomes the base; when no inconsistent checkpoint
        is left unacknowledged, ``archive_log_inconsistent`` is cleared (the history keeps both)."""
        now = now or time.time()
        try:
            acked = {r["id"] for r in self.db.query("SELECT id FROM archive_checkpoints WHERE ack_at IS NOT NULL")}
        except Exception as exc:  # noqa: BLE001 - the monitor goes on; tried again at the next reload
            log.warning("archive checkpoint acknowledgements unreadable: %s", exc)
            return
        if acked <= self._acks_seen:
            return
        self.flush()  # what is pending is in the table before the base is chosen again
        with self.lock:
            if self.cp_rows:
                return  # a checkpoint arrived meanwhile: next time
            self._base_from_db()
            self._acks_seen |= acked
            left = self.db.one("SELECT count(*) AS n FROM archive_checkpoints WHERE verdict = 'inconsistent' "
                               "AND ack_at IS NULL")["n"]
            if not left:
                self._witness_alarm(INCONSISTENT, False, "", now)

    def _archive_pubs(self) -> list:
        if self.archive_keys is None:
            return []
        try:
            return list(self.archive_keys())
        except Exception as exc:  # noqa: BLE001 - unreadable keys: nothing verifies, which alarms
            log.warning("archive keys unreadable: %s", exc)
            return []

    def _archive_checkpoint(self, payload: bytes, now: float) -> str:
        """One message on P/archive/checkpoint (under the ingest's lock)."""
        rec, cp, verdict, detail, proof = None, None, None, "", None
        try:
            rec = parse_published(payload)
            cp = rec["checkpoint"]
            if isinstance(cp.get("sig"), str) and cp["sig"] in self._cp_sigs:
                self.count("duplicate")
                return "duplicate"
            pubs = self._archive_pubs()
            check_checkpoint(cp, pubs)
            prev, proof = rec["previous"], rec["proof"]
            if prev is not None:
                check_checkpoint(prev, pubs, "previous archive checkpoint")
            last = self._cp_last
            if last is None:
                if prev is not None:
                    check_consistency(prev, cp, proof)
                verdict = "first"
            elif _t(cp["time"]) < _t(last["time"]):
                raise VerifyError(f"older than the last one kept: signed {cp['time']}, the last {last['time']}")
            elif cp["size"] <= last["size"]:
                check_consistency(last, cp, None)
                verdict = "same"
            elif prev is not None and (prev["size"], prev["root"]) == (last["size"], last["root"]):
                check_consistency(last, cp, proof)
                verdict = "consistent"
            elif prev is not None and prev["size"] >= last["size"]:
                check_consistency(last, prev, None) if prev["size"] == last["size"] else None
                check_consistency(prev, cp, proof)
                verdict = "gap"
                detail = (f"checkpoints between {last['size']} and {prev['size']} leaves were not received here; "
                          f"the proof covers {prev['size']} -> {cp['size']}: run `archive audit` with the last "
                          f"one kept (`monitor checkpoints --show`)")
            else:
                raise VerifyError(f"no consistency proof from the last one kept ({last['size']} leaves, "
                                  f"{last['time']}) to {cp['size']} leaves")
        except VerifyError as exc:
            verdict, detail = "inconsistent", str(exc)
        sig = cp.get("sig") if isinstance(cp, dict) and isinstance(cp.get("sig"), str) else None
        ok = verdict in GOOD

        def val(k, typ):
            v = cp.get(k) if isinstance(cp, dict) else None
            return v if isinstance(v, typ) and not isinstance(v, bool) else None

        self.cp_rows.append({"received": now, "verdict": verdict, "detail": detail[:1000], "size": val("size", int),
                             "root": val("root", str), "signed": val("time", str), "key_id": val("key_id", str),
                             "sig": sig, "checkpoint": json.dumps(cp, ensure_ascii=False, sort_keys=True)
                             if isinstance(cp, dict) else None,
                             "record": payload.decode("utf-8", "replace")[:65536]})
        if sig is not None:
            self._cp_sigs.add(sig)
        if ok:
            self._cp_last = cp
            self._witness_alarm(UNVERIFIED, verdict == "gap", detail, now)
            self.count("archive_checkpoints")
            log.info("archive checkpoint %s: %d leaves, root %s", verdict, cp["size"], cp["root"][:16])
            return "accepted"
        self._witness_alarm(INCONSISTENT, True, detail, now)
        self.count("rejected.archive_checkpoint")
        log.critical("archive log inconsistent: %s", detail)
        return "archive_log_inconsistent"

    def _witness_alarm(self, code: str, active: bool, detail: str, now: float) -> None:
        k = (DEVICE, code)
        was = bool((self.alarms.get(k) or {}).get("active"))
        if not active and not was:
            return
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        sev, zh, en = TITLES[code]
        if active != was:
            self.events.append((DEVICE, None, code, code, sev, "raised" if active else "cleared", at, now))
        if active and was:
            since = self.alarm_rows.get(k, {}).get("since") or self._alarm_since.get(k) or at
        else:
            since = at if active else None
        self._alarm_since[k] = since
        self.alarms[k] = {"active": active}
        self.alarm_rows[k] = {"device": DEVICE, "key": code, "code": code, "unit_code": None, "severity": sev,
                              "active": int(active), "since": since, "cleared": None if active else at, "ts": at,
                              "message_zh": f"{zh}：{detail}" if active else None,
                              "message_en": f"{en}: {detail}" if active else None, "source": "monitor", "updated": now}

    def _flush_witness(self, c, rows: list[dict]) -> None:
        c.executemany("INSERT INTO archive_checkpoints(received, verdict, detail, size, root, signed, key_id, sig, "
                      "checkpoint, record) VALUES (:received, :verdict, :detail, :size, :root, :signed, :key_id, :sig, "
                      ":checkpoint, :record)", rows)


def checkpoints(conn, limit: int = 1000) -> list[dict]:
    """What the monitor kept, oldest first (``monitor checkpoints``)."""
    rows = conn.execute("SELECT id, received, verdict, detail, size, root, signed, key_id, checkpoint, ack_by, "
                        "ack_reason, ack_at FROM archive_checkpoints ORDER BY id DESC LIMIT ?", [limit]).fetchall()
    out = []
    for r in reversed(rows):
        d = {k: r[k] for k in ("id", "received", "verdict", "detail", "size", "root", "signed", "key_id")}
        d["received"] = dt.datetime.fromtimestamp(d["received"]).astimezone().isoformat(timespec="seconds")
        d["checkpoint"] = json.loads(r["checkpoint"]) if r["checkpoint"] else None
        d["acknowledged"] = None if r["ack_at"] is None else {
            "by": r["ack_by"], "reason": r["ack_reason"],
            "at": dt.datetime.fromtimestamp(r["ack_at"]).astimezone().isoformat(timespec="seconds")}
        out.append(d)
    return out


def checkpoint(conn, cid: int) -> dict | None:
    r = conn.execute("SELECT checkpoint FROM archive_checkpoints WHERE id = ?", [cid]).fetchone()
    return json.loads(r["checkpoint"]) if r and r["checkpoint"] else None


def acknowledge(db, cid: int, who: str, reason: str) -> dict:
    """A person who looked into inconsistent checkpoint ``cid`` acknowledges it with a reason
    (``monitor checkpoints --acknowledge``); the running monitor clears the alarm when none is left
    and, when the archive's key signed it, checks the next checkpoints against it."""
    if not reason or not reason.strip():
        raise EdgeError("需要理由 / --reason is required: say what was found (it is kept with the checkpoint)")
    r = db.one("SELECT id, verdict, ack_at, size, detail FROM archive_checkpoints WHERE id = ?", [cid])
    if r is None:
        raise EdgeError(f"没有该检查点 / no archive checkpoint {cid} kept here (see `monitor checkpoints`)")
    if r["verdict"] != "inconsistent":
        raise EdgeError(f"检查点 {cid} 无需确认 / checkpoint {cid} is {r['verdict']}: only an inconsistent one is acknowledged")
    if r["ack_at"] is not None:
        raise EdgeError(f"检查点 {cid} 已确认 / checkpoint {cid} is acknowledged already")
    with db.atomic() as c:
        c.execute("UPDATE archive_checkpoints SET ack_by = ?, ack_reason = ?, ack_at = ? WHERE id = ? "
                  "AND ack_at IS NULL", [who, reason.strip()[:1000], time.time(), cid])
    return {"id": cid, "size": r["size"], "detail": r["detail"], "by": who, "reason": reason.strip()}
