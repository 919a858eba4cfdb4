"""The evidence transfer protocol on the wire (``edge-xfer/1``): payload formats, parsing, limits.

Modelled on EMQX's MQTT file transfer (EIP-0021: init, segments with offset + checksum, fin) but in
this project's topic tree (:mod:`agent.wire.topics`) and with one difference: the broker's PUBACK
only means the broker has a message; an item counts as archived only when the *archive* answers
``stored`` (files fsynced, item verified). docs/mqtt.md describes every message with examples.

Every request carries the MQTT v5 Response Topic (``P/ack/D``) and Correlation Data; every answer
is one JSON object on that topic with the same correlation data. Chunks are the exception that
carries the bulk: their offset, SHA-256 and correlation data travel in a one-line JSON header in
front of the bytes (:func:`chunk_payload`), because paho copies the whole remaining packet at every
property it decodes (a 256 KiB chunk with six properties cost the receiver 2.4 ms of CPU to decode,
without any 0.7 ms). The earlier form with user properties is still accepted. Parsers raise
:class:`ProtocolError` with a one-line reason that is sent back to the agent.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from typing import Any

from agent.common.errors import EdgeError
from agent.evidence import manifest as mf, strict
from agent.evidence.blocks import merge_ranges  # noqa: F401  (also P.merge_ranges for the archive)

PROTO = "edge-xfer/1"

#: answer statuses
OK = "ok"                # a chunk was checked and written (not yet the item)
RECEIVING = "receiving"  # the manifest is known; ``held`` lists the byte ranges on the archive
STORED = "stored"        # the whole item is fsynced, verified and stored: the only proof of archiving
UNKNOWN = "unknown"      # the archive knows nothing of this item: send the manifest
INCOMPLETE = "incomplete"  # finish arrived but ranges are missing or a file did not hash: resend
REJECTED = "rejected"    # the item (or message) is refused for good; ``reason`` says why
ERROR = "error"          # a single message was refused (e.g. a chunk with a wrong hash); resend it
STATUSES = (OK, RECEIVING, STORED, UNKNOWN, INCOMPLETE, REJECTED, ERROR)

DEFAULT_MAX_MANIFEST = 4 * 1024 * 1024
MAX_ACK = 1024 * 1024
MAX_FINISH = 8 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ProtocolError(EdgeError):
    """A malformed or refused transfer message; the message is the reason sent back."""


def _props_dict(user_properties: list[tuple[str, str]] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in user_properties or []:
        out.setdefault(k, v)
    return out


def user_props(properties: Any) -> dict[str, str]:
    """User properties of a paho ``Properties`` object (first value of each name)."""
    return _props_dict(getattr(properties, "UserProperty", None))


# --- manifest ----------------------------------------------------------------------------------
@dataclasses.dataclass
class ManifestMsg:
    manifest: bytes   # the exact signed bytes (RFC 8785)
    sig: bytes        # the manifest.sig file
    doc: dict         # parsed manifest

    @property
    def files(self) -> list[dict]:
        return self.doc["files"]

    @property
    def total_size(self) -> int:
        return sum(f["size"] for f in self.files)


def manifest_props(sig: bytes) -> list[tuple[str, str]]:
    # base64: the exact bytes of manifest.sig (a broker refuses control characters such as its
    # final newline in a UTF-8 string)
    return [("proto", PROTO), ("sig", base64.b64encode(sig).decode())]


def parse_manifest(payload: bytes, props: dict[str, str], *, item: str, device: str,
                   max_manifest: int = DEFAULT_MAX_MANIFEST, max_item: int | None = None) -> ManifestMsg:
    """Check a manifest message before anything is written: size, JSON, ids, file list, limits."""
    if len(payload) > max_manifest:
        raise ProtocolError(f"manifest of {len(payload)} bytes exceeds the limit of {max_manifest} bytes")
    sig = props.get("sig")
    if not sig:
        raise ProtocolError("manifest message without a 'sig' user property (manifest.sig)")
    try:
        sig_bytes = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("manifest 'sig' user property is not base64") from None
    try:  # the one strict reading of the format (agent.evidence.strict)
        doc = strict.parse_manifest(payload, "manifest")
    except strict.FormatError as exc:
        raise ProtocolError(str(exc)) from None
    try:  # the mandatory metadata's content rules, as verify and ingest apply them
        mf.validate_metadata(doc.get("metadata"))
    except EdgeError as exc:
        raise ProtocolError(f"metadata: {exc}") from None
    if doc.get("item_id") != item:
        raise ProtocolError(f"manifest item_id {doc.get('item_id')!r} does not match the topic's item {item!r}")
    dev = doc.get("device")
    if not isinstance(dev, dict) or dev.get("id") != device:
        raise ProtocolError(f"manifest device {(dev or {}).get('id') if isinstance(dev, dict) else dev!r} "
                            f"does not match the topic's device {device!r}")
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise ProtocolError("manifest lists no files")
    names = set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise ProtocolError(f"manifest file {i}: not an object")
        name, size = f.get("name"), f.get("size")
        if not safe_name(name):
            raise ProtocolError(f"manifest file {i}: unsafe name {name!r} (paths, NUL, '..' are refused)")
        if name in names:
            raise ProtocolError(f"manifest file {i}: duplicate name {name!r}")
        names.add(name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"manifest file {name}: size {size!r} is not a non-negative integer")
    total = sum(f["size"] for f in files)
    if max_item is not None and total > max_item:
        raise ProtocolError(f"declared item size {total} bytes exceeds the archive's limit of {max_item} bytes")
    return ManifestMsg(manifest=payload, sig=sig_bytes, doc=doc)


def safe_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name.encode("utf-8", "surrogatepass")) <= 255
            and "/" not in name and "\\" not in name and "\x00" not in name and name not in (".", "..")
            and not name.startswith("."))


# --- chunk -------------------------------------------------------------------------------------
#: a chunk header is one line of JSON, at most this long (the newline included)
MAX_CHUNK_HEADER = 2048


@dataclasses.dataclass
class ChunkMsg:
    file: str
    offset: int
    sha256: str
    data: bytes | memoryview
    #: the request's correlation data when it came in the header (else the MQTT property's)
    corr: bytes | None = None


def chunk_header(file: str, offset: int, sha256: str, corr: bytes) -> bytes:
    """The header line of a chunk: ``{"proto","file","offset","sha256","corr"}`` + ``\n``."""
    return json.dumps({"proto": PROTO, "file": file, "offset": offset, "sha256": sha256,
                       "corr": base64.b64encode(corr).decode()}, ensure_ascii=False,
                      separators=(",", ":")).encode() + b"\n"


def chunk_payload(file: str, offset: int, data: bytes, corr: bytes, sha256: str | None = None) -> bytes:
    """A chunk message's payload: header line, then the bytes. No MQTT properties needed."""
    return chunk_header(file, offset, sha256 or hashlib.sha256(data).hexdigest(), corr) + data


def chunk_props(file: str, offset: int, data: bytes) -> list[tuple[str, str]]:
    """User properties of the earlier chunk form (bytes as the payload), still accepted."""
    return [("proto", PROTO), ("file", file), ("offset", str(offset)),
            ("sha256", hashlib.sha256(data).hexdigest())]


def _chunk_header(payload: bytes) -> tuple[dict, memoryview]:
    nl = payload.find(b"\n", 0, MAX_CHUNK_HEADER)
    if nl < 0:
        raise ProtocolError(f"chunk: no header line within the first {MAX_CHUNK_HEADER} bytes "
                            "(and no file/offset/sha256 user properties)")
    try:
        head = json.loads(bytes(payload[:nl]))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("chunk: header line is not valid JSON") from None
    if not isinstance(head, dict):
        raise ProtocolError("chunk: header line is not a JSON object")
    return head, memoryview(payload)[nl + 1:]


def chunk_corr(payload: bytes) -> bytes | None:
    """The correlation data in a chunk's header, or None (to answer a chunk refused for another reason)."""
    try:
        c = _chunk_header(payload)[0].get("corr")
        return base64.b64decode(c, validate=True) if isinstance(c, str) and len(c) <= 256 else None
    except (ProtocolError, binascii.Error, ValueError):
        return None


def chunk_digest(payload) -> str | None:
    """The SHA-256 (hex) of the bytes after a chunk's header line, as :func:`parse_chunk` checks
    it, or None without a header line. The archive computes it on the thread the chunk arrives on
    (hashlib lets go of Python's lock meanwhile), while its worker writes the chunk before."""
    if not isinstance(payload, (bytes, bytearray)):
        return None  # parse_chunk hashes it then
    nl = payload.find(b"\n", 0, MAX_CHUNK_HEADER)
    if nl < 0:
        return None
    return hashlib.sha256(memoryview(payload)[nl + 1:]).hexdigest()


def parse_chunk(payload: bytes, props: dict[str, str], hashed: str | None = None) -> ChunkMsg:
    """A chunk in either form: header line + bytes, or bytes with user properties. ``hashed``:
    the SHA-256 of the header form's bytes, already computed (:func:`chunk_digest`)."""
    corr = None
    if "file" in props or "sha256" in props:  # the user-property form
        name, raw, digest, data = props.get("file"), props.get("offset", ""), props.get("sha256", ""), payload
        where = "user property"
    else:
        head, data = _chunk_header(payload)
        name, off, digest = head.get("file"), head.get("offset"), head.get("sha256", "")
        raw = str(off) if isinstance(off, int) and not isinstance(off, bool) else repr(off)
        where = "header field"
        c = head.get("corr")
        if c is not None:
            try:
                corr = base64.b64decode(c, validate=True) if isinstance(c, str) and len(c) <= 256 else None
            except (binascii.Error, ValueError):
                corr = None
            if corr is None:
                raise ProtocolError("chunk: header field corr is not base64 of at most 192 bytes")
        if head.get("proto", PROTO) != PROTO:
            raise ProtocolError(f"chunk: protocol {head.get('proto')!r} not understood (this archive speaks {PROTO})")
    if not safe_name(name):
        raise ProtocolError(f"chunk: unsafe or missing file name {name!r}")
    if not isinstance(raw, str) or not (raw.isascii() and raw.isdigit()):
        raise ProtocolError(f"chunk: offset {raw!r} is not a non-negative integer")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ProtocolError(f"chunk: sha256 {where} missing or not 64 hex digits")
    if hashed is None or where != "header field":
        hashed = hashlib.sha256(data).hexdigest()
    if hashed != digest:
        raise ProtocolError(f"chunk {name}@{raw}: sha256 mismatch (corrupted in transit); resend")
    return ChunkMsg(file=name, offset=int(raw), sha256=digest, data=data, corr=corr)


# --- finish ------------------------------------------------------------------------------------
@dataclasses.dataclass
class Annotation:
    data: bytes  # the exact NNNN.json bytes
    sig: bytes   # the NNNN.sig bytes


@dataclasses.dataclass
class FinishMsg:
    files: list[dict]
    size: int
    annotations: list[Annotation]


def finish_payload(files: list[dict], annotations: list[tuple[bytes, bytes]]) -> bytes:
    return json.dumps({
        "proto": PROTO,
        "files": [{"name": f["name"], "size": f["size"], "hash": f["hash"]} for f in files],
        "size": sum(f["size"] for f in files),
        "annotations": [{"json": base64.b64encode(d).decode(), "sig": base64.b64encode(s).decode()}
                        for d, s in annotations],
    }, ensure_ascii=False).encode()


def bounded_json(payload: bytes, limit: int, what: str, error: type[EdgeError] = ProtocolError) -> Any:
    """``payload`` parsed as JSON once its size is checked: ``error`` naming ``what`` when it is
    larger than ``limit`` bytes or not JSON (every message read off the wire goes through here)."""
    if len(payload) > limit:
        raise error(f"{what} too large: {len(payload)} bytes exceeds {limit}")
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise error(f"{what} is not valid JSON") from None


def parse_finish(payload: bytes) -> FinishMsg:
    doc = bounded_json(payload, MAX_FINISH, "finish")
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list) or not isinstance(doc.get("size"), int):
        raise ProtocolError("finish lacks files[] and size")
    if not isinstance(doc.get("annotations") or [], list):
        raise ProtocolError("finish: annotations is not a list")
    anns = []
    for i, a in enumerate(doc.get("annotations") or []):
        try:
            anns.append(Annotation(base64.b64decode(a["json"], validate=True), base64.b64decode(a["sig"], validate=True)))
        except (KeyError, TypeError, ValueError, binascii.Error):  # ValueError: non-ASCII base64
            raise ProtocolError(f"finish: annotation {i + 1} is not {{json, sig}} in base64") from None
    return FinishMsg(files=doc["files"], size=doc["size"], annotations=anns)


# --- answers -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Answer:
    item: str
    kind: str            # the request kind answered: manifest | chunk | finish | query
    status: str
    reason: str | None = None
    held: dict[str, list[list[int]]] | None = None  # file -> [[start, end), ...]
    annotations: int | None = None
    receipt: dict | None = None
    file: str | None = None
    offset: int | None = None
    #: further requests (their correlation data, base64) this answer also settles: a receiver
    #: behind on chunks answers several successful ones at once
    more: list[str] | None = None
    #: correlation data of the request when it came inside the payload (chunk header); not sent
    corr: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
    #: the whole JSON object as received (with the signature members of agent.wire.receipts)
    raw: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k not in ("corr", "raw")}

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()


def parse_answer(payload: bytes) -> Answer:
    d = bounded_json(payload, MAX_ACK, "answer")
    if not isinstance(d, dict) or d.get("status") not in STATUSES or not isinstance(d.get("item"), str):
        raise ProtocolError("answer lacks item or a known status")
    fields = {f.name for f in dataclasses.fields(Answer)} - {"corr", "raw"}
    return Answer(**{k: v for k, v in d.items() if k in fields}, raw=d)


# --- byte ranges -------------------------------------------------------------------------------
def missing_ranges(size: int, held: list[list[int]] | None) -> list[tuple[int, int]]:
    """Byte ranges of a file of ``size`` bytes not covered by ``held``."""
    out, pos = [], 0
    for s, e in merge_ranges(held or []):
        if s > pos:
            out.append((pos, min(s, size)))
        pos = max(pos, e)
    if pos < size:
        out.append((pos, size))
    return [(s, e) for s, e in out if e > s]
