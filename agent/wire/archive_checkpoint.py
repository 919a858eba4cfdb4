"""The archive's checkpoint as it travels (docs/evidence-format.md "The archive's checkpoint"):
``edge-archive-checkpoint/1`` (size and RFC 6962 Merkle root of everything the archive stored,
signed by the archive's key) and what ``archive serve`` publishes retained on
``P/archive/checkpoint``: ``edge-archive-consistency/1``, the new checkpoint, the one published
before it and the consistency proof between them (``pymerkle``'s serialised form).

Read here by the archive (``archive audit``) and by the monitor, which keeps every checkpoint it
receives and checks that each extends the one before (agent/monitor/witness.py).
"""

from __future__ import annotations

import json

from pymerkle import InvalidProof, verify_consistency
from pymerkle.proof import ConsistencyProof

from agent.common import canon
from agent.common.errors import EdgeError, VerifyError
from agent.evidence import keys, strict

FORMAT = "edge-archive-checkpoint/1"
PUBLISHED_FORMAT = "edge-archive-consistency/1"
FIELDS = ("format", "archive", "size", "root", "time", "key_id")
PUBLISHED_FIELDS = ("format", "checkpoint", "previous", "proof")
MAX_SIZE = 64 * 1024  # a proof is at most 2·64 hashes


def check_checkpoint(cp, pubs: list, where: str = "archive checkpoint") -> dict:
    """A parsed checkpoint checked strictly and verified with one of ``pubs``."""
    if not isinstance(cp, dict) or cp.get("format") != FORMAT:
        raise VerifyError(f"{where}: not an {FORMAT} record")
    unknown = sorted(set(cp) - set(FIELDS) - {"sig"})
    if unknown:
        raise VerifyError(f"{where}: unknown field(s) {', '.join(unknown)}")
    size = cp.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise VerifyError(f"{where}: size {size!r} is not a non-negative integer")
    for k in ("archive", "root", "time", "key_id", "sig"):
        if not isinstance(cp.get(k), str):
            raise VerifyError(f"{where}: field {k} missing")
    try:  # text no canonical JSON can hold (a lone surrogate): nothing the archive could have signed
        body = canon.canonical({k: cp[k] for k in FIELDS})
    except EdgeError as exc:
        raise VerifyError(f"{where}: {exc}") from None
    pub = next((p for p in pubs if keys.key_id(p) == cp["key_id"]), None)
    if pub is None:
        raise VerifyError(f"{where} signed by key {cp['key_id']}, not a key of this archive")
    if not keys.verify_sig(pub, body, cp["sig"]):
        raise VerifyError(f"{where}: bad signature (altered, or not this archive's)")
    return cp


def parse_checkpoint(payload: bytes, pubs: list) -> dict:
    """A checkpoint read strictly and verified with one of the archive's keys."""
    try:
        cp = strict.loads(payload, "archive checkpoint")
    except strict.FormatError as exc:
        raise VerifyError(f"archive checkpoint: not JSON as specified: {exc}") from None
    return check_checkpoint(cp, pubs)


def parse_published(payload: bytes) -> dict:
    """An ``edge-archive-consistency/1`` record, its shape only (signatures: :func:`check_checkpoint`)."""
    rec = strict.record(payload, "published checkpoint", PUBLISHED_FORMAT, PUBLISHED_FIELDS, VerifyError, MAX_SIZE)
    if not isinstance(rec.get("checkpoint"), dict):
        raise VerifyError("published checkpoint: field checkpoint missing")
    for k in ("previous", "proof"):
        if rec.get(k) is not None and not isinstance(rec[k], dict):
            raise VerifyError(f"published checkpoint: {k} is neither an object nor null")
    return rec


def check_consistency(old: dict, new: dict, proof: dict | None) -> None:
    """``new`` extends ``old`` (both verified checkpoints): the same tree when the sizes are equal,
    else the RFC 6962 consistency ``proof`` from old's root to new's; raises :class:`VerifyError`
    naming what fails."""
    if new["size"] < old["size"]:
        raise VerifyError(f"the log shrank: {new['size']} leaves signed {new['time']}, {old['size']} signed {old['time']}")
    if new["size"] == old["size"]:
        if new["root"] != old["root"]:
            raise VerifyError(f"two roots for {new['size']} leaves: {old['root'][:16]}… signed {old['time']}, "
                              f"{new['root'][:16]}… signed {new['time']}")
        return
    if old["size"] == 0:
        return  # every tree extends the empty one
    if proof is None:
        raise VerifyError(f"no consistency proof from {old['size']} to {new['size']} leaves")
    try:
        p = ConsistencyProof.deserialize(proof)
        verify_consistency(bytes.fromhex(old["root"]), bytes.fromhex(new["root"]), p, prior_size=old["size"],
                           later_size=new["size"], algorithm="sha256")
    except (InvalidProof, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise VerifyError(f"consistency proof from {old['size']} to {new['size']} leaves fails: {exc or 'invalid'}") \
            from None


def unwrap(payload: bytes) -> bytes:
    """A checkpoint as kept, or the checkpoint inside a published ``edge-archive-consistency/1``
    record (what P/archive/checkpoint carries)."""
    try:
        d = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload
    if isinstance(d, dict) and d.get("format") == PUBLISHED_FORMAT and isinstance(d.get("checkpoint"), dict):
        return json.dumps(d["checkpoint"], ensure_ascii=False, sort_keys=True).encode()
    return payload
