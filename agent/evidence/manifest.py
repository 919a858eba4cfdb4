"""The evidence manifest: metadata rules, building, canonical bytes, signature files.

This module owns the manifest format (``edge-agent-evidence/1``); docs/evidence-format.md
describes it byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from .. import __version__
from agent.common.errors import EdgeError, MetadataError
from agent.common.timeutil import parse_iso
from . import hashing, keys, rules, strict

FORMAT = "edge-agent-evidence/1"
ANNOTATION_FORMAT = "edge-agent-annotation/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES_DIR = "files"
ANNOTATIONS_DIR = "annotations"

#: the five fields every audio-video record carries (案件编号, 采集时间, 采集地点, 采集人, 证明对象)
MANDATORY = ("case_number", "capture_start", "capture_end", "place", "collector", "proof")
#: fields that may be sealed as pending (unknown at docking) and supplied later by annotation
PENDABLE = ("case_number", "proof", "place")
LABELS = {
    "case_number": "案件编号 case number",
    "capture_start": "采集时间 capture start",
    "capture_end": "采集时间 capture end",
    "place": "采集地点 place",
    "collector": "采集人 collector",
    "proof": "证明对象 proof object",
}
_CTRL = re.compile(r"[\x00-\x1f\x7f]")


def _text(field: str, value: Any, limit: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MetadataError(f"{LABELS.get(field, field)}: missing (必填 / required)")
    if _CTRL.search(value):
        raise MetadataError(f"{LABELS.get(field, field)}: control characters are not allowed")
    if len(value) > limit:
        raise MetadataError(f"{LABELS.get(field, field)}: longer than {limit} characters")
    return value.strip()


def check_case_number(value: Any) -> str:
    """Input is stripped of surrounding white space, then must satisfy the one case-number rule the
    archive applies too (:func:`agent.evidence.rules.case_number_problem`)."""
    if not isinstance(value, str) or not value.strip():
        raise MetadataError(f"{LABELS['case_number']}: missing (必填 / required)")
    return rules.check_case_number(value.strip())


def check_device(device_id: Any, unit_code: Any) -> None:
    """The device id and unit code every sealed item carries, by the rules the archive files by."""
    rules.check_device_id(device_id)
    rules.check_unit_code(unit_code)


#: where a recorder item's capture-time correction (metadata ``clock_offset_*``) comes from
CLOCK_SOURCES = ("measured", "kept", "unknown")


def _check_clock(meta: dict[str, Any]) -> None:
    """The capture-time correction of a recorder's item, when present: ``clock_offset_ms`` an integer
    (device minus station) or null; ``clock_offset_measured_at`` when it was measured (ISO 8601) or
    null; ``clock_offset_source`` measured | kept | unknown, where unknown goes with a null offset and
    a known offset with its measurement time. Items sealed before these fields existed carry only
    ``clock_offset_ms``."""
    off = meta.get("clock_offset_ms")
    if off is not None and (isinstance(off, bool) or not isinstance(off, int)):
        raise MetadataError(f"clock_offset_ms: an integer (ms) or null, got {off!r}")
    if "clock_offset_source" not in meta and "clock_offset_measured_at" not in meta:
        return
    src = meta.get("clock_offset_source")
    if src not in CLOCK_SOURCES:
        raise MetadataError(f"clock_offset_source: one of {', '.join(CLOCK_SOURCES)}, got {src!r}")
    at = meta.get("clock_offset_measured_at")
    if (src == "unknown") != (off is None):
        raise MetadataError("clock_offset_source: unknown exactly when clock_offset_ms is null "
                            f"(got {src!r} with {off!r}); an unknown offset is never written as 0")
    if src == "unknown":
        if at is not None:
            raise MetadataError("clock_offset_measured_at: null when the offset is unknown")
    else:
        parse_iso(at, "clock_offset_measured_at")


def validate_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Check the mandatory fields; return a normalised copy. Pending fields are ``None``."""
    if not isinstance(meta, dict):
        raise MetadataError("metadata must be an object")
    pending = meta.get("pending", []) or []
    if not isinstance(pending, list) or any(p not in PENDABLE for p in pending):
        raise MetadataError(f"pending: may only list {', '.join(PENDABLE)}")
    out: dict[str, Any] = {}
    for field in ("case_number", "place", "proof"):
        if field in pending:
            if meta.get(field) not in (None, ""):
                raise MetadataError(f"{LABELS[field]}: marked pending but also given")
            out[field] = None
        elif field == "case_number":
            out[field] = check_case_number(meta.get(field))
        else:
            out[field] = _text(field, meta.get(field))
    start = parse_iso(meta.get("capture_start"), LABELS["capture_start"])
    end = parse_iso(meta.get("capture_end"), LABELS["capture_end"])
    if end < start:
        raise MetadataError(f"{LABELS['capture_end']}: {meta['capture_end']} is before the start {meta['capture_start']}")
    out["capture_start"] = meta["capture_start"]
    out["capture_end"] = meta["capture_end"]
    collector = meta.get("collector")
    if not isinstance(collector, dict):
        raise MetadataError(f"{LABELS['collector']}: missing (name and officer certificate number)")
    out["collector"] = {
        "name": _text("collector", collector.get("name"), 64),
        "id": _text("collector", collector.get("id"), 32),
    }
    out["pending"] = sorted(pending)
    _check_clock(meta)
    for key, value in meta.items():
        if key not in out:
            out[key] = value
    return out


def build(
    *,
    item_id: str,
    hash_alg: str,
    device: dict,
    metadata: dict,
    source: dict,
    ingest_time: str,
    clock_offset_ms: int | None,
    device_seq: int,
    prev_manifest_hash: str | None,
    block_size: int,
    files: list[dict],
    segment_hashes: list[tuple[int, int, int, bytes]],
    session: dict | None = None,
    gaps: list[dict] | None = None,
    sealed_at: str,
    encryption: dict | None = None,
) -> dict:
    """Assemble a manifest; ``segment_hashes`` are (file index, offset, size, digest)."""
    header = {
        "format": FORMAT,
        "item_id": item_id,
        "hash_alg": hash_alg,
        "device": device,
        "metadata": validate_metadata(metadata),
        "source": source,
        "ingest_time": ingest_time,
        "clock_offset_ms": clock_offset_ms,
        "software": f"edge-agent/{__version__}",
        "device_seq": device_seq,
        "prev_manifest_hash": prev_manifest_hash,
        "block_size": block_size,
        "files": files,
        "session": session,
        "gaps": gaps or [],
        "sealed_at": sealed_at,
        "encryption": encryption,
    }
    head = hashing.header_hash(hash_alg, header)
    links = hashing.chain_links(hash_alg, head, [s[3] for s in segment_hashes])
    segments = [
        {"file": f, "offset": off, "size": size, "hash": h.hex(), "link": ln.hex()}
        for (f, off, size, h), ln in zip(segment_hashes, links)
    ]
    manifest = dict(header)
    manifest["segments"] = segments
    manifest["item_hash"] = (links[-1] if links else head).hex()
    return strict.check_manifest(manifest, f"manifest of {item_id}")  # what the archive will read


def header_of(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("segments", "item_hash")}


def encode(manifest: dict) -> bytes:
    """The exact bytes stored and signed: RFC 8785 canonical JSON."""
    return hashing.canonical(manifest)


def signature_record(private, data: bytes) -> bytes:
    record = {"alg": "ed25519", "key_id": keys.key_id(private.public_key()), "sig": keys.sign(private, data)}
    return (json.dumps(record, sort_keys=True) + "\n").encode()


def parse_signature(data: bytes, where: str) -> dict:
    """A ``.sig`` file, read strictly (:func:`agent.evidence.strict.parse_signature`)."""
    try:
        rec = strict.loads(data, where)
    except strict.FormatError as exc:
        raise strict.FormatError(f"{where}: signature file is not JSON as specified ({exc})") from None
    return strict.check_signature_record(rec, f"{where} (signature file)")


def parse(data: bytes, where: str = MANIFEST) -> dict:
    """Manifest bytes, read strictly: canonical, no duplicate or unknown field, every type as documented."""
    return strict.parse_manifest(data, where)


def manifest_hash(alg: str, data: bytes) -> str:
    return hashing.hexdigest(alg, data)


@dataclasses.dataclass
class Annotation:
    seq: int
    record: dict
    data: bytes


#: annotatable fields that are mandatory: changing a value they already have needs a reason
ANNOTATABLE_MANDATORY = ("case_number", "place", "proof")
#: mandatory fields that no annotation can change (they are facts of the capture, sealed once)
SEALED_ONLY = ("capture_start", "capture_end", "collector")


def changed_mandatory(current: dict, changes: dict) -> list[str]:
    """The mandatory fields ``changes`` would change from a value they already have (completing a
    pending field, or setting the same value, is not a change)."""
    pending = current.get("pending") or []
    return [f for f in ANNOTATABLE_MANDATORY
            if f in changes and f not in pending and current.get(f) not in (None, "") and changes[f] != current.get(f)]


def check_reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise MetadataError("reason: must be text")
    if _CTRL.search(reason):
        raise MetadataError("理由 reason: control characters are not allowed")
    if len(reason) > 500:
        raise MetadataError("理由 reason: longer than 500 characters")
    return reason.strip()


def make_annotation(*, item_id: str, manifest_hash_hex: str, seq: int, prev: str | None, time: str,
                    actor: str, changes: dict, reason: str, hash_alg: str, current: dict | None = None) -> dict:
    """A correction or completion of metadata; the sealed manifest is never edited.

    ``current`` is the effective metadata before this annotation: changing a mandatory field that
    already has a value (not completing a pending one) is refused without a ``reason``."""
    if not changes:
        raise MetadataError("an annotation must set at least one field")
    reason = check_reason(reason)
    for field in changes:
        if field in SEALED_ONLY:
            raise MetadataError(f"{LABELS[field]}: 封存后不能修改 / is sealed with the recording and cannot be "
                                "changed by an annotation (allowed: case_number, proof, place, note, evidence_mark)")
    changed = changed_mandatory(current or {}, changes)
    if changed and not reason:
        names = ", ".join(f"{LABELS[f]} ({(current or {}).get(f)!s} → {changes[f]!s})" for f in changed)
        raise MetadataError(f"修改必填项须说明理由 / changing a mandatory field needs a reason: {names}; "
                            "give --reason \"…\"")
    changes = dict(changes)
    for field, value in changes.items():
        if field == "case_number":
            changes[field] = check_case_number(value)
        elif field in ("proof", "place", "note", "evidence_mark"):
            if field == "evidence_mark":
                if not isinstance(value, bool):
                    raise MetadataError("evidence_mark must be true or false")
            else:
                _text(field, value)
        else:
            raise MetadataError(f"{field}: cannot be annotated (allowed: case_number, proof, place, note, evidence_mark)")
    return strict.check_annotation({
        "format": ANNOTATION_FORMAT,
        "item_id": item_id,
        "manifest_hash": manifest_hash_hex,
        "hash_alg": hash_alg,
        "seq": seq,
        "prev": prev,
        "time": time,
        "actor": actor,
        "set": changes,
        "reason": reason,
    }, f"annotation {seq} of {item_id}")


def read_annotations(item_dir: Path) -> list[Annotation]:
    d = item_dir / ANNOTATIONS_DIR
    if not d.is_dir():
        return []
    return parse_annotations((str(p), p.read_bytes()) for p in sorted(d.glob("*.json")))


def parse_annotations(records) -> list[Annotation]:
    """Annotations from ``(where, bytes)`` of each ``annotations/NNNN.json``, in name order (an item read
    from a directory or through the archive's evidence storage)."""
    out = []
    for where, data in records:
        try:
            rec = json.loads(data)
        except ValueError:
            raise EdgeError(f"{where}: annotation is not JSON") from None
        seq = rec.get("seq", -1) if isinstance(rec, dict) else -1
        out.append(Annotation(seq=seq if isinstance(seq, int) else -1, record=rec if isinstance(rec, dict) else {},
                              data=data))
    return out


def effective_metadata(manifest: dict, annotations: list[Annotation]) -> dict:
    """Metadata as sealed with the annotations applied in order (the original stays in the manifest)."""
    meta = json.loads(json.dumps(manifest["metadata"]))
    for ann in annotations:
        for field, value in ann.record.get("set", {}).items():
            meta[field] = value
            if field in meta.get("pending", []):
                meta["pending"] = [p for p in meta["pending"] if p != field]
    return meta
