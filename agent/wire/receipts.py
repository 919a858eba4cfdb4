"""Signed archive answers, receipts and receiver status (``edge-receipt/1``; docs/mqtt.md).

The broker is not trusted to say who speaks: everything the archive tells a device that could make
it free evidence, stop an item or silence an alarm is signed with the archive's own Ed25519 key
(``ROOT/_archive/archive.key``) and bound to what the device asked.

- An **answer** to a manifest, query or finish request carries ``device``, ``item`` and the
  ``nonce`` the agent put in that request (user property ``nonce``: 128 random bits, new for every
  request), ``key_id`` and ``sig``. Chunk answers (``ok``/``error``) are not signed: they only
  pace the window and never end, advance or stop an item (a chunk answer saying anything else
  makes the agent ask again with a signed ``query``).
- A **receipt** (inside a ``stored`` answer) names the device, the item, its chain position, the
  manifest hash, every file (name, size, hash), the annotations held and the nonce; it is signed
  on its own so that the ledger can keep it as proof (``items.receipt``) and the dock's erase check
  can read ``manifest_hash`` and ``files`` from it.
- The **receiver status** (``P/archive/status/RID``, retained) is signed and carries its ``time``;
  receivers republish it every :data:`STATUS_INTERVAL_S`, and an agent counts a receiver as online
  only while its last signed ``online`` is younger than :data:`STATUS_FRESH_S`.

Signature: Ed25519 over the RFC 8785 canonical JSON (:func:`agent.common.canon.canonical`) of the
object without its ``sig`` member; ``key_id`` is the first 16 hex digits of SHA-256 of the raw
public key (as for device keys).
"""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from pathlib import Path
from typing import Any, Iterable

from agent.common.canon import canonical
from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire.trust_list import REVOKED_DIR  # noqa: F401  (re-exported: agent.uplink.trust)

RECEIPT_FORMAT = "edge-receipt/1"
#: a receiver republishes its signed status this often
STATUS_INTERVAL_S = 30
#: an agent counts a receiver online only while its last signed "online" is younger than this
STATUS_FRESH_S = 120
_NONCE = re.compile(r"^[0-9a-f]{32,64}$")


class ReceiptError(EdgeError):
    """An archive answer, receipt or status that does not verify; the message says what failed."""


def new_nonce() -> str:
    """128 random bits (hex) for one request."""
    return secrets.token_hex(16)


def valid_nonce(value: Any) -> str | None:
    return value if isinstance(value, str) and _NONCE.match(value) else None


def _sign(key, body: dict) -> dict:
    body = {k: v for k, v in body.items() if v is not None and k != "sig"}
    body["key_id"] = keys.key_id(key.public_key())
    body["sig"] = keys.sign(key, canonical(body))
    return body


class ArchiveSigner:
    """The archive side: signs answers, receipts and status with the archive's private key."""

    def __init__(self, key, receiver: str):
        self.key = key
        self.receiver = receiver
        self.key_id = keys.key_id(key.public_key())

    def receipt(self, body: dict, *, nonce: str | None) -> dict:
        """``body``: device, item, seq, manifest_hash, item_hash, files [{name, size, hash}],
        size, annotations, stored_at (from the archive's storage)."""
        return _sign(self.key, {"format": RECEIPT_FORMAT, "archive": self.receiver, **body, "nonce": nonce})

    def answer(self, answer: dict, *, device: str, nonce: str | None) -> dict:
        d = dict(answer, device=device, nonce=nonce, archive=self.receiver)
        if isinstance(d.get("receipt"), dict):
            d["receipt"] = self.receipt(d["receipt"], nonce=nonce)
        return _sign(self.key, d)

    def status(self, state: str, **extra: Any) -> dict:
        return _sign(self.key, {"state": state, "receiver": self.receiver, "time": _now(), **extra})


class ArchiveTrust:
    """The agent side: the archive public keys pinned on this device, and the checks."""

    def __init__(self, ring: keys.KeyRing | None = None, sources: list[str] | None = None,
                 revoked: set[str] | None = None):
        self.revoked = set(revoked or ())
        self.ring = ring or keys.KeyRing()
        for kid in self.revoked:  # a revoked key never verifies, wherever else it is named
            self.ring.by_id.pop(kid, None)
        self.sources = sources or []

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> "ArchiveTrust":
        """Keys from files (``*.pub``, PEM) and directories of them; a directory that does not
        exist yet adds nothing, a named file that does not exist or is no key is an error. The
        keys in a directory's ``revoked/`` subdirectory are refused (``uplink revoke-archive``):
        a receiver key revoked at the centre, whose receipts this device no longer accepts."""
        ring, sources, revoked = keys.KeyRing(), [], set()
        for p in paths:
            p = Path(p)
            if p.is_dir():
                for f in sorted(p.glob("*.pub")):
                    ring.add(keys.load_public(f))
                    sources.append(str(f))
                revoked |= {keys.key_id(keys.load_public(f)) for f in sorted((p / REVOKED_DIR).glob("*.pub"))}
            elif p.exists() or p.suffix == ".pub":
                ring.add(keys.load_public(p))
                sources.append(str(p))
        return cls(ring, sources, revoked)

    def __bool__(self) -> bool:
        return bool(self.ring.by_id)

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.ring.by_id)

    def verify(self, obj: Any, what: str) -> dict:
        """``obj`` with a valid signature by a pinned key, else :class:`ReceiptError`."""
        if not isinstance(obj, dict):
            raise ReceiptError(f"{what}: not a JSON object")
        sig, kid = obj.get("sig"), obj.get("key_id")
        if not isinstance(sig, str) or not isinstance(kid, str):
            raise ReceiptError(f"{what}: unsigned")
        if kid in self.revoked:
            raise ReceiptError(f"{what}: signed by key {kid[:16]!r}, which was revoked on this device")
        pub = self.ring.get(kid)
        if pub is None:
            raise ReceiptError(f"{what}: signed by key {kid[:16]!r}, which is not a pinned archive key")
        body = {k: v for k, v in obj.items() if k != "sig"}
        try:
            data = canonical(body)
        except EdgeError as exc:
            raise ReceiptError(f"{what}: not canonicalisable: {exc}") from None
        if not keys.verify_sig(pub, data, sig):
            raise ReceiptError(f"{what}: signature does not verify")
        return obj

    def check_answer(self, obj: Any, *, device: str, item: str, nonce: str) -> dict:
        """A signed answer about ``item`` of ``device`` to the request that carried ``nonce``."""
        self.verify(obj, "answer")
        if obj.get("device") != device:
            raise ReceiptError(f"answer names device {obj.get('device')!r}, not {device!r}")
        if obj.get("item") != item:
            raise ReceiptError(f"answer is about item {obj.get('item')!r}, not {item!r}")
        if obj.get("nonce") != nonce:
            raise ReceiptError("answer carries another request's nonce (replayed or forged)")
        return obj

    def check_receipt(self, receipt: Any, *, device: str, item: str, nonce: str, manifest_hash: str,
                      files: list[dict], annotations: int = 0) -> dict:
        """Everything a receipt must say before an item counts as archived, its spool copy may go
        and the dock may erase the recorder's file."""
        self.verify(receipt, "receipt")
        want = {"format": RECEIPT_FORMAT, "device": device, "item": item, "nonce": nonce,
                "manifest_hash": manifest_hash}
        for k, v in want.items():
            if receipt.get(k) != v:
                raise ReceiptError(f"receipt {k} {str(receipt.get(k))[:80]!r} differs from {str(v)[:80]!r}")
        got = receipt.get("files")
        if not isinstance(got, list) or not all(isinstance(f, dict) for f in got):
            raise ReceiptError("receipt lists no files")
        norm = lambda fs: sorted((f.get("name"), f.get("size"), f.get("hash")) for f in fs)  # noqa: E731
        if norm(got) != norm(files):
            raise ReceiptError("receipt's files (names, sizes, hashes) differ from the sealed manifest's")
        n = receipt.get("annotations")
        if not isinstance(n, int) or n < annotations:
            raise ReceiptError(f"receipt holds {n!r} annotations, the item has {annotations}")
        return receipt

    def check_status(self, obj: Any, *, receiver: str, now: float | None = None) -> str:
        """The state of a signed, fresh receiver status ("online" only while younger than
        :data:`STATUS_FRESH_S`); anything else raises :class:`ReceiptError`."""
        self.verify(obj, "archive status")
        if obj.get("receiver") != receiver:
            raise ReceiptError(f"status of receiver {obj.get('receiver')!r} on the topic of {receiver!r}")
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise ReceiptError(f"unknown receiver state {state!r}")
        if state == "online":
            try:
                t = _dt.datetime.fromisoformat(obj.get("time")).timestamp()
            except (TypeError, ValueError):
                raise ReceiptError("archive status without a valid time") from None
            age = (now if now is not None else _dt.datetime.now(_dt.timezone.utc).timestamp()) - t
            if not -STATUS_FRESH_S < age < STATUS_FRESH_S:
                raise ReceiptError(f"archive status is {age:.0f} s old (replayed?)")
        return state


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
