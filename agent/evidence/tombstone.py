"""The tombstone of an item the archive deleted by its retention rule (``edge-agent-tombstone/1``).

When ``archive retention run`` deletes an expired item, the item's directory keeps exactly two
files: ``tombstone.json`` (RFC 8785 bytes, fields below) and ``tombstone.sig`` (the same signature
record as ``manifest.sig``, by the archive's key, ``KEYS/archive/KEYID.pub``). The tombstone repeats
what the device chain needs of the item — its seq, manifest hash, previous manifest hash, item
hash, session and annotation count — so ``verify --chain`` still finds every link, and says what
was deleted, under which retention class, by whom and when (docs/evidence-format.md, "Expired
items: the tombstone").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.common.errors import VerifyError
from . import keys, strict

FORMAT = "edge-agent-tombstone/1"
TOMBSTONE = "tombstone.json"
SIGNATURE = "tombstone.sig"
#: classes a tombstone may name: evidence is kept for ever and never has one
EXPIRING = ("normal", "important")
FIELDS = ("format", "item_id", "device_id", "device_seq", "unit_code", "case_number", "hash_alg", "manifest_hash",
          "prev_manifest_hash", "item_hash", "annotations", "session", "retention_class", "keep_until",
          "expired_at", "by", "key_id")


def build(*, manifest: dict, manifest_hash: str, annotations: int, case_number: str | None, retention_class: str,
          keep_until: str, expired_at: str, by: str, key_id: str) -> dict:
    s = manifest.get("session")
    return check({
        "format": FORMAT, "item_id": manifest["item_id"], "device_id": manifest["device"]["id"],
        "device_seq": manifest["device_seq"], "unit_code": manifest["device"]["unit_code"],
        "case_number": case_number, "hash_alg": manifest["hash_alg"], "manifest_hash": manifest_hash,
        "prev_manifest_hash": manifest.get("prev_manifest_hash"), "item_hash": manifest["item_hash"],
        "annotations": annotations,
        "session": {"id": s["id"], "index": s["index"], "prev_item_hash": s.get("prev_item_hash")} if s else None,
        "retention_class": retention_class, "keep_until": keep_until, "expired_at": expired_at, "by": by,
        "key_id": key_id,
    }, "tombstone")


def check(t: Any, where: str) -> dict:
    """Every field of a tombstone, its type, and the retention rule it must follow."""
    def fail(msg: str):
        raise strict.FormatError(f"{where}: {msg}")

    if not isinstance(t, dict) or sorted(t) != sorted(FIELDS):
        fail(f"fields must be exactly {', '.join(FIELDS)}")
    if t["format"] != FORMAT:
        fail(f"format is not {FORMAT}")
    for k in ("item_id", "device_id", "unit_code", "by"):
        if not isinstance(t[k], str) or not t[k]:
            fail(f"{k}: text required")
    if not isinstance(t["device_seq"], int) or isinstance(t["device_seq"], bool) or t["device_seq"] < 1:
        fail("device_seq: an integer from 1")
    if t["hash_alg"] not in strict.HASH_ALGS:
        fail(f"hash_alg: one of {', '.join(strict.HASH_ALGS)}")
    for k in ("manifest_hash", "item_hash"):
        if not isinstance(t[k], str) or len(t[k]) != 64:
            fail(f"{k}: 64 hex digits")
    if (t["prev_manifest_hash"] is None) != (t["device_seq"] == 1):
        fail("prev_manifest_hash: null exactly for device_seq 1")
    if not isinstance(t["annotations"], int) or isinstance(t["annotations"], bool) or t["annotations"] < 0:
        fail("annotations: a count")
    if t["retention_class"] not in EXPIRING:
        fail(f"retention_class {t['retention_class']!r}: only {' or '.join(EXPIRING)} items expire "
             "(evidence is kept permanently)")
    if not isinstance(t["keep_until"], str) or not isinstance(t["expired_at"], str):
        fail("keep_until, expired_at: ISO 8601 times")
    from agent.common.errors import MetadataError
    from agent.common.timeutil import parse_iso

    try:
        early = parse_iso(t["expired_at"], "expired_at") < parse_iso(t["keep_until"], "keep_until")
    except MetadataError as exc:
        fail(str(exc))
    if early:
        fail(f"deleted at {t['expired_at']}, before its retention ended ({t['keep_until']})")
    return t


def encode(t: dict) -> bytes:
    return strict.canonical(t, "tombstone")


def signed(t: dict, private) -> dict[str, bytes]:
    """The two files of a tombstone, by name: ``tombstone.json`` and ``tombstone.sig``."""
    from .manifest import signature_record

    data = encode(t)
    return {TOMBSTONE: data, SIGNATURE: signature_record(private, data)}


def write(item_dir: Path, t: dict, private) -> None:
    """tombstone.json and tombstone.sig into ``item_dir`` (atomically, each)."""
    from agent.common.fs import atomic_write

    for name, data in signed(t, private).items():
        atomic_write(item_dir / name, data)


def read(item_dir: Path, ring: keys.KeyRing) -> dict:
    """A tombstone, read strictly and checked against an archive key of ``ring``
    (:attr:`agent.evidence.keys.KeyRing.archive`)."""
    p = item_dir / TOMBSTONE
    data = p.read_bytes()
    rec = strict.parse_signature((item_dir / SIGNATURE).read_bytes(), str(item_dir / SIGNATURE))
    public = ring.archive.get(rec["key_id"])
    if public is None:
        raise VerifyError(f"{p}: signed by key {rec['key_id']}, not an archive key "
                          "(KEYS/archive/*.pub) / 删除记录须由存档中心签名")
    if not keys.verify_sig(public, data, rec["sig"]):
        raise VerifyError(f"{p}: bad signature: the tombstone was altered")
    t = check(strict.loads_canonical(data, str(p)), str(p))
    if t["key_id"] != rec["key_id"]:
        raise VerifyError(f"{p}: key_id {t['key_id']} is not the signing key {rec['key_id']}")
    if set(x.name for x in item_dir.iterdir()) != {TOMBSTONE, SIGNATURE}:
        raise VerifyError(f"{item_dir}: a tombstone and other files / 删除记录目录含其他文件")
    return t


def dumps(t: dict) -> str:
    return json.dumps(t, ensure_ascii=False, sort_keys=True)
