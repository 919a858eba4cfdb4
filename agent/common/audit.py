"""The hash-chained audit log: who did what to which evidence, when (调阅监督).

Each entry's hash covers the previous entry's hash and the entry's own fields (RFC 8785
canonical JSON), so editing or deleting any entry breaks the chain. The head (count and
hash) is also signed by the device key after every append, so removing the newest entries is
detected too.
"""

from __future__ import annotations

import csv
import getpass
import io
import json
import os

from agent.common.errors import VerifyError
from agent.common import canon as hashing
from agent.common.timeutil import now_iso
from agent.common.sqlite import Database

ACTIONS = ("ingest", "seal", "verify", "export", "view", "annotate", "purge", "config", "discard", "recover",
           "upload", "archive", "reject", "erase", "dock", "clock", "command", "session", "retrieve", "enroll", "init")


def current_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = f"uid{os.getuid()}"
    return f"{user}(uid={os.getuid()})"


def _entry_hash(alg: str, entry: dict) -> str:
    body = {k: entry[k] for k in ("seq", "ts", "actor", "action", "item_id", "detail", "prev")}
    return hashing.hexdigest(alg, hashing.canonical(body))


def entry_hash(alg: str, entry: dict) -> str:
    """The hash an entry must carry: over the RFC 8785 JSON of seq, ts, actor, action, item_id,
    detail (a JSON text) and prev (the archive checks the stations' logs with it)."""
    return _entry_hash(alg, entry)


class AuditLog:
    def __init__(self, ledger: Database, alg: str = "sha256", signer=None):
        self.ledger = ledger
        self.alg = alg
        self.signer = signer  # callable(bytes) -> signature b64, or None

    def append(self, action: str, item_id: str | None = None, actor: str | None = None, **detail) -> dict:
        with self.ledger.atomic() as db:
            self.ledger.serialize("audit")  # PostgreSQL: receivers on other hosts append too
            last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq = (last[0] + 1) if last else 1
            entry = {
                "seq": seq,
                "ts": now_iso(),
                "actor": actor or current_actor(),
                "action": action,
                "item_id": item_id,
                "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str),
                "prev": last[1] if last else None,
            }
            entry["hash"] = _entry_hash(self.alg, entry)
            db["audit"].insert(entry)
            if self.signer:
                head = hashing.canonical({"count": seq, "hash": entry["hash"]})
                db.execute("INSERT INTO meta(key, value) VALUES ('audit_head', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           [json.dumps({"count": seq, "hash": entry["hash"], "sig": self.signer(head)})])
        return entry

    def entries(self, item_id: str | None = None, action: str | None = None, limit: int | None = None) -> list[dict]:
        rows = self.ledger.select("audit", "seq", item_id=item_id, action=action)
        return rows[-limit:] if limit else rows

    def verify(self, verifier=None) -> int:
        """Check every link; raise VerifyError naming the first bad entry. Returns the count."""
        prev = None
        expect = 1
        rows = self.ledger.query("SELECT * FROM audit ORDER BY seq")
        for row in rows:
            if row["seq"] != expect:
                raise VerifyError(f"audit: entry {expect} is missing (next present is {row['seq']})")
            if row["prev"] != prev:
                raise VerifyError(f"audit: entry {row['seq']} does not chain to entry {expect - 1} (an entry was edited or removed)")
            if _entry_hash(self.alg, row) != row["hash"]:
                raise VerifyError(f"audit: entry {row['seq']} was edited after it was written")
            prev = row["hash"]
            expect += 1
        head_raw = self.ledger.get_meta("audit_head")
        if verifier and head_raw:
            head = json.loads(head_raw)
            data = hashing.canonical({"count": head["count"], "hash": head["hash"]})
            if not verifier(data, head["sig"]):
                raise VerifyError("audit: the signed head is invalid")
            if head["count"] != len(rows) or head["hash"] != prev:
                raise VerifyError(f"audit: signed head says {head['count']} entries, log has {len(rows)} "
                                  "(newest entries removed or the log replaced)")
        return len(rows)

    def export_csv(self) -> str:
        buf = io.StringIO()
        fields = ["seq", "ts", "actor", "action", "item_id", "detail", "prev", "hash"]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for row in self.entries():
            w.writerow({k: row[k] for k in fields})
        return buf.getvalue()
