"""One strict reading of the evidence format, shared by ingest, the archive and ``verify``.

docs/evidence-format.md ("Strict reading") is the specification; this module is its only
implementation in edge-agent. A record is accepted only if

- its bytes are UTF-8 and exactly the RFC 8785 (JCS) canonical form of what they parse to
  (so no white space, sorted keys, the shortest escapes, no BOM, no floats);
- no object repeats a key;
- every closed object has exactly its documented fields, each of its documented type;
- the chain fields agree (``device_seq`` 1 has no previous manifest hash, every later one has
  one; annotation ``seq`` 1 has no ``prev``, every later one has one).

Every refusal is a :class:`FormatError` naming the record, the field and the rule.
"""

from __future__ import annotations

import json
import re
from typing import Any

import rfc8785

from agent.common.errors import EdgeError
from . import rules

FORMAT = "edge-agent-evidence/1"
ANNOTATION_FORMAT = "edge-agent-annotation/1"
HASH_ALGS = ("sha256", "sm3")
DEVICE_KINDS = ("dock", "room")
PENDABLE = ("case_number", "proof", "place")
ANNOTATABLE = ("case_number", "proof", "place", "note", "evidence_mark")

#: the closed objects: field -> type check (see docs/evidence-format.md)
MANIFEST_FIELDS = ("format", "item_id", "hash_alg", "device", "metadata", "source", "ingest_time",
                   "clock_offset_ms", "software", "device_seq", "prev_manifest_hash", "block_size", "files",
                   "session", "gaps", "sealed_at", "encryption", "segments", "item_hash")
DEVICE_FIELDS = ("id", "unit_code", "unit_name", "kind", "location", "key_id")
FILE_FIELDS = ("name", "size", "hash")
ENCRYPTED_FILE_FIELDS = FILE_FIELDS + ("plain_size", "plain_hash")
SEGMENT_FIELDS = ("file", "offset", "size", "hash", "link")
SESSION_FIELDS = ("id", "index", "prev_item_hash", "final")
GAP_FIELDS = ("start", "end", "component", "reason")
ENCRYPTION_FIELDS = ("alg", "wrap", "recipient", "epk", "wrap_nonce", "wrapped_key")
COLLECTOR_FIELDS = ("name", "id")
ANNOTATION_FIELDS = ("format", "item_id", "manifest_hash", "hash_alg", "seq", "prev", "time", "actor", "set",
                     "reason")
SIGNATURE_FIELDS = ("alg", "key_id", "sig")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
#: the largest integer RFC 8785 represents exactly (IEEE 754 double)
MAX_INT = 2 ** 53 - 1


class FormatError(EdgeError):
    """A record that is not in the one strict form of the evidence format."""


# --- bytes ---------------------------------------------------------------------------------------
def _pairs(where: str):
    def hook(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise FormatError(f"{where}: duplicate key {k!r} (每个键只能出现一次 / a key may appear once)")
            out[k] = v
        return out
    return hook


def _no_float(text: str):
    raise FormatError(f"number {text} is not an integer (floats are not allowed in evidence records)")


def _no_constant(text: str):
    raise FormatError(f"{text} is not JSON (NaN and Infinity are not allowed)")


def loads(data: bytes, where: str) -> Any:
    """Parse ``data`` refusing duplicate keys, floats, NaN; no canonical-form check (see :func:`loads_canonical`)."""
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError(f"{where}: not bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where}: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_pairs(where), parse_float=_no_float,
                          parse_constant=_no_constant)
    except FormatError as exc:
        msg = str(exc)
        raise FormatError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON ({exc})") from None


def record(data: bytes, where: str, fmt: str, fields, error: type[EdgeError] = FormatError,
           max_size: int | None = None) -> dict:
    """A signed record as it travels, read strictly: at most ``max_size`` bytes, strict JSON
    (:func:`loads`), an object whose ``format`` is ``fmt`` and with no field outside ``fields``;
    anything else raises ``error`` naming ``where``. The fields' values are the caller's to check."""
    if max_size is not None and len(data) > max_size:
        raise error(f"{where} of {len(data)} bytes exceeds {max_size}")
    try:
        rec = loads(data, where)
    except FormatError as exc:
        raise error(f"{where}: not JSON as specified: {exc}") from None
    if not isinstance(rec, dict) or rec.get("format") != fmt:
        raise error(f"{where}: not an {fmt} record")
    unknown = sorted(set(rec) - set(fields))
    if unknown:
        raise error(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    return rec


def canonical(obj: Any, where: str = "record") -> bytes:
    """The RFC 8785 bytes of ``obj``; :class:`FormatError` if it has none (lone surrogates, huge ints)."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, ValueError, TypeError, RecursionError) as exc:
        raise FormatError(f"{where}: has no RFC 8785 canonical form ({exc})") from None


def loads_canonical(data: bytes, where: str) -> Any:
    """Parse a signed or hashed record: its bytes must be exactly RFC 8785 of what they parse to."""
    obj = loads(data, where)
    canon = canonical(obj, where)
    if canon != bytes(data):
        n = next((i for i, (a, b) in enumerate(zip(canon, bytes(data))) if a != b), min(len(canon), len(data)))
        raise FormatError(f"{where}: not in canonical form (RFC 8785): differs at byte {n} "
                          "(white space, key order, number or escape form) / 非规范 JSON")
    return obj


# --- field checks --------------------------------------------------------------------------------
class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, rule: str) -> None:
        raise FormatError(f"{self.where}: {field}: {rule}")

    def closed(self, obj: Any, field: str, allowed: tuple[str, ...], required: tuple[str, ...] | None = None) -> dict:
        if not isinstance(obj, dict):
            self.fail(field, "must be an object")
        unknown = sorted(set(obj) - set(allowed))
        if unknown:
            self.fail(field, f"unknown field(s) {', '.join(map(repr, unknown))} (未定义字段 / not in the format)")
        missing = [k for k in (allowed if required is None else required) if k not in obj]
        if missing:
            self.fail(field, f"missing field(s) {', '.join(map(repr, missing))}")
        return obj

    def int_(self, v: Any, field: str, lo: int = 0) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= MAX_INT:
            self.fail(field, f"must be an integer from {lo} to {MAX_INT}, is {v!r}")
        return v

    def str_(self, v: Any, field: str, *, empty: bool = False) -> str:
        if not isinstance(v, str) or (not empty and not v):
            self.fail(field, f"must be a{'' if empty else ' non-empty'} string, is {v!r}")
        return v

    def hex64(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not _HEX64.match(v):
            self.fail(field, f"must be 64 lower-case hex digits, is {v!r}")
        return v

    def chain_link(self, d: dict, seq_field: str, prev_field: str, what: str, first: str) -> None:
        """``d[seq_field]`` counts from 1; the first has no ``d[prev_field]`` (``first`` says why),
        every later ``what`` names its predecessor's hash there."""
        seq = self.int_(d[seq_field], seq_field, 1)
        prev = self.opt_hex64(d[prev_field], prev_field)
        if seq == 1 and prev is not None:
            self.fail(prev_field, f"must be null for {seq_field} 1 ({first})")
        if seq > 1 and prev is None:
            self.fail(prev_field, f"missing for {seq_field} {seq} (every {what} after the first names its predecessor)")

    def opt_hex64(self, v: Any, field: str) -> str | None:
        return None if v is None else self.hex64(v, field)

    def time(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not _ISO.match(v):
            self.fail(field, f"must be an ISO 8601 time with offset, is {v!r}")
        return v

    def b64(self, v: Any, field: str) -> str:
        if not isinstance(v, str) or not v or len(v) % 4 or not _B64.match(v):
            self.fail(field, f"must be base64, is {v!r}")
        return v

    def rule(self, kind: str, v: Any, field: str) -> None:
        problem = rules._RULES[kind](v)
        if problem:
            self.fail(field, rules.message(kind, v, problem))


def check_manifest(m: Any, where: str = "manifest.json") -> dict:
    """Every field, type and chain rule of a manifest (not its signature or the file contents)."""
    c = _Checker(where)
    c.closed(m, "manifest", MANIFEST_FIELDS)
    if m["format"] != FORMAT:
        c.fail("format", f"must be {FORMAT!r}, is {m['format']!r}")
    if m["hash_alg"] not in HASH_ALGS:
        c.fail("hash_alg", f"must be one of {', '.join(HASH_ALGS)}, is {m['hash_alg']!r}")
    dev = c.closed(m["device"], "device", DEVICE_FIELDS)
    c.rule("device_id", dev["id"], "device.id")
    c.rule("unit_code", dev["unit_code"], "device.unit_code")
    c.str_(dev["unit_name"], "device.unit_name", empty=True)
    if dev["kind"] not in DEVICE_KINDS:
        c.fail("device.kind", f"must be one of {', '.join(DEVICE_KINDS)}, is {dev['kind']!r}")
    c.str_(dev["location"], "device.location", empty=True)
    if not isinstance(dev["key_id"], str) or not _KEY_ID.match(dev["key_id"]):
        c.fail("device.key_id", f"must be 16 lower-case hex digits, is {dev['key_id']!r}")
    c.rule("item_id", m["item_id"], "item_id")
    if not m["item_id"].startswith(dev["id"] + "-"):
        c.fail("item_id", f"{m['item_id']!r} must start with the device id {dev['id']!r} and '-'")
    check_metadata(m["metadata"], c)
    if not isinstance(m["source"], dict):
        c.fail("source", "must be an object")
    c.time(m["ingest_time"], "ingest_time")
    c.time(m["sealed_at"], "sealed_at")
    if m["clock_offset_ms"] is not None and (not isinstance(m["clock_offset_ms"], int)
                                             or isinstance(m["clock_offset_ms"], bool)
                                             or abs(m["clock_offset_ms"]) > MAX_INT):
        c.fail("clock_offset_ms", f"must be an integer or null, is {m['clock_offset_ms']!r}")
    c.str_(m["software"], "software")
    c.chain_link(m, "device_seq", "prev_manifest_hash", "item", "the first item has no previous manifest")
    c.int_(m["block_size"], "block_size", 1)
    enc = m["encryption"]
    if enc is not None:
        c.closed(enc, "encryption", ENCRYPTION_FIELDS)
        if enc["alg"] != "AES-256-GCM" or enc["wrap"] != "X25519-HKDF-SHA256-A256GCM":
            c.fail("encryption", "alg must be 'AES-256-GCM' and wrap 'X25519-HKDF-SHA256-A256GCM'")
        if not isinstance(enc["recipient"], str) or not _KEY_ID.match(enc["recipient"]):
            c.fail("encryption.recipient", "must be 16 lower-case hex digits")
        for k in ("epk", "wrap_nonce", "wrapped_key"):
            c.b64(enc[k], f"encryption.{k}")
    files = m["files"]
    if not isinstance(files, list) or not files:
        c.fail("files", "must be a non-empty list")
    names = set()
    for i, f in enumerate(files):
        fields = ENCRYPTED_FILE_FIELDS if enc is not None else FILE_FIELDS
        c.closed(f, f"files[{i}]", fields)
        name = f["name"]
        if not (isinstance(name, str) and name and len(name.encode("utf-8", "surrogatepass")) <= 255
                and "/" not in name and "\\" not in name and "\x00" not in name and not name.startswith(".")):
            c.fail(f"files[{i}].name", f"{name!r} is not a plain file name (no path, NUL, leading '.')")
        if name in names:
            c.fail(f"files[{i}].name", f"{name!r} is listed twice")
        names.add(name)
        c.int_(f["size"], f"files[{i}].size")
        c.hex64(f["hash"], f"files[{i}].hash")
        if enc is not None:
            c.int_(f["plain_size"], f"files[{i}].plain_size")
            c.hex64(f["plain_hash"], f"files[{i}].plain_hash")
    check_segments(m["segments"], files, c)
    sess = m["session"]
    if sess is not None:
        c.closed(sess, "session", SESSION_FIELDS)
        c.str_(sess["id"], "session.id")
        idx = c.int_(sess["index"], "session.index")
        ph = c.opt_hex64(sess["prev_item_hash"], "session.prev_item_hash")
        if (idx == 0) != (ph is None):
            c.fail("session.prev_item_hash", "must be null for index 0 and set for every later segment")
        if not isinstance(sess["final"], bool):
            c.fail("session.final", "must be true or false")
    if not isinstance(m["gaps"], list):
        c.fail("gaps", "must be a list")
    for i, g in enumerate(m["gaps"]):
        c.closed(g, f"gaps[{i}]", GAP_FIELDS)
        for k in GAP_FIELDS:
            c.str_(g[k], f"gaps[{i}].{k}", empty=True)
    c.hex64(m["item_hash"], "item_hash")
    return m


def check_segments(segs: Any, files: list[dict], c: _Checker) -> None:
    """Segments tile each file in order: file by file, offsets from 0 without gap or overlap, every
    block of a file the same size except the last, which is shorter or equal and empty only when
    the file is empty (then it is the file's only segment)."""
    if not isinstance(segs, list):
        c.fail("segments", "must be a list")
    pos: dict[int, int] = {}
    block: dict[int, int] = {}
    last_short: dict[int, bool] = {}
    cur = 0
    for i, s in enumerate(segs):
        c.closed(s, f"segments[{i}]", SEGMENT_FIELDS)
        fi = c.int_(s["file"], f"segments[{i}].file")
        off = c.int_(s["offset"], f"segments[{i}].offset")
        size = c.int_(s["size"], f"segments[{i}].size")
        c.hex64(s["hash"], f"segments[{i}].hash")
        c.hex64(s["link"], f"segments[{i}].link")
        if fi >= len(files):
            c.fail(f"segments[{i}].file", f"{fi} is not an index into files (0..{len(files) - 1})")
        if fi < cur:
            c.fail(f"segments[{i}].file", f"file {fi} after file {cur}: segments go file by file, in order")
        if fi > cur and pos.get(cur, 0) != files[cur]["size"]:
            c.fail(f"segments[{i}]", f"file {cur} is covered to byte {pos.get(cur, 0)} of {files[cur]['size']}")
        for skipped in range(cur + 1, fi):
            if skipped not in pos:
                c.fail(f"segments[{i}]", f"file {skipped} has no segment")
        cur = fi
        if off != pos.get(fi, 0):
            c.fail(f"segments[{i}].offset", f"{off}, expected {pos.get(fi, 0)} (segments tile the file in order)")
        if last_short.get(fi):
            c.fail(f"segments[{i}]", f"follows a shorter block of file {fi} (only the last block may be shorter)")
        if fi in block:
            if size > block[fi]:
                c.fail(f"segments[{i}].size", f"{size} is larger than the file's block size {block[fi]}")
            if size < block[fi]:
                last_short[fi] = True
        else:
            block[fi] = size
        if size == 0 and (off or files[fi]["size"]):
            c.fail(f"segments[{i}].size", "0: only an empty file has an (only) empty segment")
        pos[fi] = off + size
    for fi, f in enumerate(files):
        if fi not in pos:
            c.fail("segments", f"file {fi} ({f['name']!r}) has no segment (an empty file has one empty segment)")
        if pos[fi] != f["size"]:
            c.fail("segments", f"segments of file {fi} ({f['name']!r}) cover {pos[fi]} of {f['size']} bytes")


def check_metadata(meta: Any, c: _Checker) -> None:
    """The mandatory fields and their types (content rules: :func:`agent.evidence.manifest.validate_metadata`).
    ``metadata`` is open: producers add their own fields (recorder file number, room, cameras, ...)."""
    if not isinstance(meta, dict):
        c.fail("metadata", "must be an object")
    c.closed(meta, "metadata", tuple(meta), ("case_number", "capture_start", "capture_end", "place", "collector",
                                             "proof", "pending"))
    pending = meta["pending"]
    if not isinstance(pending, list) or any(p not in PENDABLE for p in pending) or pending != sorted(set(pending)):
        c.fail("metadata.pending", f"must be a sorted list of distinct fields from {', '.join(PENDABLE)}")
    for field in PENDABLE:
        v = meta[field]
        if field in pending:
            if v is not None:
                c.fail(f"metadata.{field}", "marked pending but not null")
        elif field == "case_number":
            c.rule("case_number", v, "metadata.case_number")
        else:
            c.str_(v, f"metadata.{field}")
    c.time(meta["capture_start"], "metadata.capture_start")
    c.time(meta["capture_end"], "metadata.capture_end")
    col = c.closed(meta["collector"], "metadata.collector", COLLECTOR_FIELDS)
    c.str_(col["name"], "metadata.collector.name")
    c.str_(col["id"], "metadata.collector.id")


def check_annotation(a: Any, where: str = "annotation") -> dict:
    c = _Checker(where)
    c.closed(a, "annotation", ANNOTATION_FIELDS)
    if a["format"] != ANNOTATION_FORMAT:
        c.fail("format", f"must be {ANNOTATION_FORMAT!r}, is {a['format']!r}")
    c.rule("item_id", a["item_id"], "item_id")
    c.hex64(a["manifest_hash"], "manifest_hash")
    if a["hash_alg"] not in HASH_ALGS:
        c.fail("hash_alg", f"must be one of {', '.join(HASH_ALGS)}")
    c.chain_link(a, "seq", "prev", "annotation", "the first annotation has no predecessor")
    c.time(a["time"], "time")
    c.str_(a["actor"], "actor")
    c.str_(a["reason"], "reason", empty=True)
    s = a["set"]
    if not isinstance(s, dict) or not s:
        c.fail("set", "must be a non-empty object")
    for k, v in s.items():
        if k not in ANNOTATABLE:
            c.fail("set", f"{k!r} cannot be annotated (allowed: {', '.join(ANNOTATABLE)})")
        if k == "evidence_mark":
            if not isinstance(v, bool):
                c.fail("set.evidence_mark", "must be true or false")
        elif k == "case_number":
            c.rule("case_number", v, "set.case_number")
        else:
            c.str_(v, f"set.{k}")
    return a


def check_signature_record(rec: Any, where: str) -> dict:
    c = _Checker(where)
    c.closed(rec, "signature", SIGNATURE_FIELDS)
    if rec["alg"] != "ed25519":
        c.fail("alg", f"must be 'ed25519', is {rec['alg']!r}")
    if not isinstance(rec["key_id"], str) or not _KEY_ID.match(rec["key_id"]):
        c.fail("key_id", f"must be 16 lower-case hex digits, is {rec['key_id']!r}")
    c.b64(rec["sig"], "sig")
    if len(rec["sig"]) != 88:
        c.fail("sig", "must be the base64 of a 64-byte Ed25519 signature")
    return rec


# --- whole records -------------------------------------------------------------------------------
def parse_manifest(data: bytes, where: str = "manifest.json") -> dict:
    """The one way to read manifest bytes: canonical, no duplicates, every field as documented."""
    return check_manifest(loads_canonical(data, where), where)


def parse_annotation(data: bytes, where: str = "annotation") -> dict:
    return check_annotation(loads_canonical(data, where), where)


def parse_signature(data: bytes, where: str) -> dict:
    """A ``.sig`` file: ``{"alg", "key_id", "sig"}`` as JSON, one line (not itself signed, so any
    white space is accepted; duplicate and unknown keys are not)."""
    return check_signature_record(loads(data, where), where)


def check_annotation_signer(key_id: str, *, manifest_key_id: str, device_id: str, unit_code: str,
                            device_of: dict[str, str], annotators: dict[str, str], where: str) -> None:
    """An annotation is signed by the item's own device key (the manifest's key, or a key the
    enrolment record maps to the item's device) or by an annotator key enrolled for the item's
    unit; never by another device."""
    if key_id == manifest_key_id or device_of.get(key_id) == device_id:
        return
    if annotators.get(key_id) == unit_code:
        return
    if key_id in device_of:
        raise FormatError(f"{where}: signed by the key {key_id} of device {device_of[key_id]}, not by the item's "
                          f"device {device_id} (注释须由本设备或本单位注释人签名 / an annotation is signed by the "
                          "item's own device or an annotator enrolled for its unit)")
    if key_id in annotators:
        raise FormatError(f"{where}: signed by annotator key {key_id} enrolled for unit {annotators[key_id]}, "
                          f"not for the item's unit {unit_code}")
    raise FormatError(f"{where}: signed by key {key_id}, which is neither the item's device key nor an "
                      f"annotator key enrolled for unit {unit_code}")
