"""Independent reference verifier for edge-agent evidence, written only from docs/evidence-format.md.

Standard library + `cryptography` (Ed25519) + `rfc8785` (the canonical form); it shares no code with
agent/. tests/evidence/test_evidence_format.py checks that it agrees with `edge-agent verify`.

    python tools/verify_reference.py ITEM_DIR KEY              KEY: a PEM public key, or a keys directory
    python tools/verify_reference.py --chain DIR KEYS_DIR [CHECKPOINTS_DIR]

Prints "OK ..." (exit 0) or "FAIL <reason>" (exit 1).
"""

import base64
import datetime
import hashlib
import json
import re
import struct
import sys
import unicodedata
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

HEX = re.compile(r"^[0-9a-f]{64}$")
KID = re.compile(r"^[0-9a-f]{16}$")
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
MAX = 2 ** 53 - 1
CTRL = re.compile(r"[\x00-\x1f\x7f]")
MANIFEST = ("format item_id hash_alg device metadata source ingest_time clock_offset_ms software device_seq "
            "prev_manifest_hash block_size files session gaps sealed_at encryption segments item_hash").split()
ANNOTATION = "format item_id manifest_hash hash_alg seq prev time actor set reason".split()
RESERVED_UNITS = {"keys", "archive.db", "archive.db-wal", "archive.db-shm", "archive.db-journal"}


class Fail(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Fail(msg)


def H(alg, data):
    return hashlib.new(alg, data).digest()


def read_json(data, what, canonical=True):
    """Strict reading: no duplicate key, no float/NaN; signed records must be RFC 8785 bytes."""
    def pairs(ps):
        d = {}
        for k, v in ps:
            need(k not in d, f"{what}: duplicate key {k!r}")
            d[k] = v
        return d

    def no_float(x):
        raise Fail(f"{what}: float {x}")

    def no_const(x):
        raise Fail(f"{what}: {x}")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_float=no_float, parse_constant=no_const)
    except (UnicodeDecodeError, ValueError):
        raise Fail(f"{what}: not JSON") from None
    if canonical:
        try:
            need(rfc8785.dumps(obj) == data, f"{what}: not canonical (RFC 8785)")
        except rfc8785.CanonicalizationError:
            raise Fail(f"{what}: not canonical (RFC 8785)") from None
    return obj


def fields(obj, names, what):
    need(isinstance(obj, dict) and set(obj) == set(names), f"{what}: fields must be exactly {' '.join(names)}")


def is_int(v, lo=0):
    return type(v) is int and lo <= v <= MAX


def is_hex(v):
    return isinstance(v, str) and bool(HEX.match(v))


def ident(v, limit):
    return isinstance(v, str) and 0 < len(v) <= limit and v.isascii() and bool(IDENT.match(v))


def text_ok(v, limit):
    """place, proof, the collector's name and id: not blank, no control character, at most LIMIT characters."""
    return isinstance(v, str) and v.strip() != "" and not CTRL.search(v) and len(v) <= limit


def when(t):
    return datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))


def case_ok(v):
    return (isinstance(v, str) and 0 < len(v) <= 64 and v == v.strip() and len(v.encode("utf-8", "surrogatepass")) <= 255
            and not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") for c in v)
            and "/" not in v and "\\" not in v and not v.startswith((".", "_")))


def check_manifest(m):
    fields(m, MANIFEST, "manifest")
    need(m["format"] == "edge-agent-evidence/1", "manifest: format")
    need(m["hash_alg"] in ("sha256", "sm3"), "manifest: hash_alg")
    d = m["device"]
    fields(d, "id unit_code unit_name kind location key_id".split(), "device")
    need(ident(d["id"], 42) and ident(d["unit_code"], 64) and d["unit_code"] not in RESERVED_UNITS, "device: id/unit_code")
    need(isinstance(d["unit_name"], str) and isinstance(d["location"], str) and d["kind"] in ("dock", "room")
         and isinstance(d["key_id"], str) and KID.match(d["key_id"]), "device: types")
    need(ident(m["item_id"], 64) and m["item_id"].startswith(d["id"] + "-"), "manifest: item_id")
    meta = m["metadata"]
    need(isinstance(meta, dict) and all(k in meta for k in
                                        "case_number capture_start capture_end place collector proof pending".split()),
         "metadata: mandatory fields")
    pend = meta["pending"]
    need(isinstance(pend, list) and pend == sorted(set(pend)) and set(pend) <= {"case_number", "proof", "place"},
         "metadata: pending")
    for f in ("case_number", "proof", "place"):
        if f in pend:
            need(meta[f] is None, f"metadata: {f} pending but set")
        else:
            need(case_ok(meta[f]) if f == "case_number" else text_ok(meta[f], 200), f"metadata: {f}")
    fields(meta["collector"], ["name", "id"], "metadata.collector")
    need(text_ok(meta["collector"]["name"], 64) and text_ok(meta["collector"]["id"], 32), "metadata.collector")
    for t in (meta["capture_start"], meta["capture_end"], m["ingest_time"], m["sealed_at"]):
        need(isinstance(t, str) and ISO.match(t), f"time {t!r}")
    need(when(meta["capture_end"]) >= when(meta["capture_start"]), "metadata: capture_end before start")
    if "clock_offset_source" in meta or "clock_offset_measured_at" in meta:  # a recorder's capture-time correction
        off, src, at = meta.get("clock_offset_ms"), meta.get("clock_offset_source"), meta.get("clock_offset_measured_at")
        need(src in ("measured", "kept", "unknown") and (src == "unknown") == (off is None)
             and (at is None if src == "unknown" else isinstance(at, str) and when(at).tzinfo is not None),
             "metadata: clock_offset_source / clock_offset_measured_at")
    need(meta.get("clock_offset_ms") is None or type(meta["clock_offset_ms"]) is int, "metadata: clock_offset_ms")
    need(isinstance(m["source"], dict) and isinstance(m["software"], str) and m["software"], "manifest: source/software")
    need(m["clock_offset_ms"] is None or (type(m["clock_offset_ms"]) is int and abs(m["clock_offset_ms"]) <= MAX),
         "manifest: clock_offset_ms")
    need(is_int(m["device_seq"], 1) and is_int(m["block_size"], 1), "manifest: device_seq/block_size")
    prev = m["prev_manifest_hash"]
    need((prev is None) == (m["device_seq"] == 1) and (prev is None or is_hex(prev)),
         "manifest: prev_manifest_hash (null exactly for device_seq 1)")
    enc = m["encryption"]
    if enc is not None:
        fields(enc, "alg wrap recipient epk wrap_nonce wrapped_key".split(), "encryption")
        need(enc["alg"] == "AES-256-GCM" and enc["wrap"] == "X25519-HKDF-SHA256-A256GCM"
             and isinstance(enc["recipient"], str) and KID.match(enc["recipient"])
             and all(isinstance(enc[k], str) and enc[k] and len(enc[k]) % 4 == 0 and B64.match(enc[k])
                     for k in ("epk", "wrap_nonce", "wrapped_key")), "encryption: values")
    files = m["files"]
    need(isinstance(files, list) and files, "manifest: files")
    for f in files:
        fields(f, ["name", "size", "hash"] + (["plain_size", "plain_hash"] if enc else []), "files[]")
        n = f["name"]
        need(isinstance(n, str) and n and len(n.encode("utf-8", "surrogatepass")) <= 255
             and "/" not in n and "\\" not in n and "\x00" not in n and not n.startswith("."),
             f"files: name {n!r}")
        need(is_int(f["size"]) and is_hex(f["hash"]) and (not enc or (is_int(f["plain_size"]) and is_hex(f["plain_hash"]))),
             "files: types")
    need(len({f["name"] for f in files}) == len(files), "files: a name twice")
    segs = m["segments"]
    need(isinstance(segs, list), "manifest: segments")
    order = []
    for s in segs:
        fields(s, "file offset size hash link".split(), "segments[]")
        need(is_int(s["file"]) and s["file"] < len(files) and is_int(s["offset"]) and is_int(s["size"])
             and is_hex(s["hash"]) and is_hex(s["link"]), "segments: types")
        order.append(s["file"])
    need(order == sorted(order) and set(order) == set(range(len(files))), "segments: not file by file, or a file without")
    for fi, f in enumerate(files):  # the tiling
        mine = [s for s in segs if s["file"] == fi]
        off = 0
        for k, s in enumerate(mine):
            need(s["offset"] == off, f"segments: file {fi} not tiled at {off}")
            need(s["size"] <= mine[0]["size"] and (k == len(mine) - 1 or s["size"] == mine[0]["size"]),
                 f"segments: file {fi}: only the last block may be shorter")
            need(s["size"] > 0 or (f["size"] == 0 and len(mine) == 1), f"segments: file {fi}: empty segment")
            off += s["size"]
        need(off == f["size"], f"segments: file {fi} covered {off} of {f['size']}")
    sess = m["session"]
    if sess is not None:
        fields(sess, "id index prev_item_hash final".split(), "session")
        need(isinstance(sess["id"], str) and sess["id"] and is_int(sess["index"]) and isinstance(sess["final"], bool)
             and (sess["prev_item_hash"] is None) == (sess["index"] == 0)
             and (sess["prev_item_hash"] is None or is_hex(sess["prev_item_hash"])), "session: values")
    need(isinstance(m["gaps"], list), "manifest: gaps")
    for g in m["gaps"]:
        fields(g, "start end component reason".split(), "gaps[]")
        need(all(isinstance(v, str) for v in g.values()), "gaps: types")
    need(is_hex(m["item_hash"]), "manifest: item_hash")


def check_annotation(a, n):
    fields(a, ANNOTATION, f"annotation {n}")
    need(a["format"] == "edge-agent-annotation/1" and a["hash_alg"] in ("sha256", "sm3") and is_hex(a["manifest_hash"])
         and is_int(a["seq"], 1) and isinstance(a["actor"], str) and a["actor"] and isinstance(a["reason"], str)
         and isinstance(a["time"], str) and ISO.match(a["time"]), f"annotation {n}: values")
    need((a["prev"] is None) == (a["seq"] == 1) and (a["prev"] is None or is_hex(a["prev"])),
         f"annotation {n}: prev (null exactly for seq 1)")
    s = a["set"]
    need(isinstance(s, dict) and s, f"annotation {n}: set")
    for k, v in s.items():
        need(k in ("case_number", "proof", "place", "note", "evidence_mark"), f"annotation {n}: cannot set {k}")
        need(isinstance(v, bool) if k == "evidence_mark" else (case_ok(v) if k == "case_number" else
                                                               isinstance(v, str) and v != ""),
             f"annotation {n}: {k}")


class Keys:
    """Trusted keys: kid -> (public key, device or None); annotators: kid -> (public key, unit)."""

    def __init__(self, path):
        self.devices, self.annotators, self.archive = {}, {}, {}
        p = Path(path)
        if p.is_file():
            self._add(self.devices, p, None)
        else:
            for f in sorted(p.glob("*.pub")):
                self._add(self.devices, f, f.stem)
            for f in sorted(p.glob("*.pub.old")):  # DEVICE_ID.KEYID.pub.old: a replaced key of that device
                dev, _, kid = f.name[:-len(".pub.old")].rpartition(".")
                found = {}
                if dev and self._add(found, f, dev) == kid:
                    self.devices.update(found)
            for f in sorted(p.glob("annotators/*/*.pub")):
                self._add(self.annotators, f, f.parent.name)
            for f in sorted(p.glob("archive/*.pub")):  # the archive's keys: sign tombstones only
                self._add(self.archive, f, None)

    @staticmethod
    def _add(table, f, owner):
        pub = load_pem_public_key(f.read_bytes())
        kid = hashlib.sha256(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]
        table[kid] = (pub, owner)
        return kid

    def device_key(self, device):
        return next((pub for pub, dev in self.devices.values() if dev == device), None)


def check_sig(data, sig_bytes, pub, what):
    rec = read_json(sig_bytes, f"{what} signature", canonical=False)
    fields(rec, ["alg", "key_id", "sig"], f"{what} signature")
    need(rec["alg"] == "ed25519" and isinstance(rec["key_id"], str) and bool(KID.match(rec["key_id"]))
         and isinstance(rec["sig"], str) and len(rec["sig"]) == 88 and bool(B64.match(rec["sig"])),
         f"{what} signature: alg, key_id or sig")
    try:
        pub.verify(base64.b64decode(rec["sig"], validate=True), data)
    except (InvalidSignature, ValueError):
        raise Fail(f"{what}: bad signature") from None


def sig_kid(sig_bytes, what):
    rec = read_json(sig_bytes, f"{what} signature", canonical=False)
    need(isinstance(rec, dict) and isinstance(rec.get("key_id"), str), f"{what} signature: key_id")
    return rec["key_id"]


def verify_item(item, keys):
    """Returns (manifest, manifest hash, annotation count)."""
    data = (item / "manifest.json").read_bytes()
    sigb = (item / "manifest.sig").read_bytes()
    kid = sig_kid(sigb, "manifest")
    need(kid not in keys.annotators, "manifest signed by an annotator key")
    need(kid in keys.devices, f"manifest signed by unknown key {kid}")
    pub, owner = keys.devices[kid]
    check_sig(data, sigb, pub, "manifest")
    m = read_json(data, "manifest")
    check_manifest(m)
    need(owner is None or owner == m["device"]["id"], f"key {kid} belongs to device {owner}")
    need(m["device"]["key_id"] == kid, "device.key_id is not the signing key")
    alg = m["hash_alg"]
    header = {k: v for k, v in m.items() if k not in ("segments", "item_hash")}
    link = H(alg, rfc8785.dumps(header))
    for i, seg in enumerate(m["segments"]):
        f = m["files"][seg["file"]]
        with open(item / "files" / f["name"], "rb") as fh:
            fh.seek(seg["offset"])
            block = fh.read(seg["size"])
        need(H(alg, block).hex() == seg["hash"], f"segment {i} hash")
        link = H(alg, link + bytes.fromhex(seg["hash"]) + struct.pack(">Q", i))
        need(link.hex() == seg["link"], f"segment {i} link")
    need(link.hex() == m["item_hash"], "item_hash")
    for f in m["files"]:
        body = (item / "files" / f["name"]).read_bytes()
        need(len(body) == f["size"] and hashlib.new(alg, body).hexdigest() == f["hash"], f"file {f['name']}")
    need(sorted(p.name for p in (item / "files").iterdir()) == sorted(f["name"] for f in m["files"]),
         "files/ holds other files than the manifest lists")
    mhash = hashlib.new(alg, data).hexdigest()
    adir = item / "annotations"
    names = sorted(p.name for p in adir.glob("*.json")) if adir.is_dir() else []
    need(names == [f"{n:04d}.json" for n in range(1, len(names) + 1)], "annotations not numbered 0001, 0002, ...")
    prev = None
    effective = dict(m["metadata"])
    for n in range(1, len(names) + 1):
        a_data, a_sig = (adir / f"{n:04d}.json").read_bytes(), (adir / f"{n:04d}.sig").read_bytes()
        akid = sig_kid(a_sig, f"annotation {n}")
        if akid in keys.annotators:
            apub, unit = keys.annotators[akid]
            need(unit == m["device"]["unit_code"], f"annotation {n} signed by an annotator of unit {unit}")
        else:
            need(akid in keys.devices, f"annotation {n} signed by unknown key {akid}")
            apub, adev = keys.devices[akid]
            need(akid == kid or adev == m["device"]["id"], f"annotation {n} signed by another device ({adev})")
        check_sig(a_data, a_sig, apub, f"annotation {n}")
        a = read_json(a_data, f"annotation {n}")
        check_annotation(a, n)
        need(a["seq"] == n and a["prev"] == prev, f"annotation {n}: chain")
        need(a["item_id"] == m["item_id"] and a["manifest_hash"] == mhash, f"annotation {n}: another item")
        changed = [f for f in ("case_number", "place", "proof") if f in a["set"] and effective.get(f) is not None
                   and f not in effective["pending"] and a["set"][f] != effective[f]]
        need(not changed or a["reason"].strip() != "", f"annotation {n} changes {', '.join(changed)} without a reason")
        effective.update(a["set"])
        effective["pending"] = [f for f in effective["pending"] if f not in a["set"]]
        prev = hashlib.new(alg, a_data).hexdigest()
    return m, mhash, len(names)


TOMBSTONE_FIELDS = {"format", "item_id", "device_id", "device_seq", "unit_code", "case_number", "hash_alg",
                    "manifest_hash", "prev_manifest_hash", "item_hash", "annotations", "session", "retention_class",
                    "keep_until", "expired_at", "by", "key_id"}


def verify_tombstone(d, keys):
    """An expired item's tombstone, as a stand-in for its manifest in the chain."""
    need(sorted(p.name for p in d.iterdir()) == ["tombstone.json", "tombstone.sig"],
         f"{d.name}: tombstone with other files")
    data, sigb = (d / "tombstone.json").read_bytes(), (d / "tombstone.sig").read_bytes()
    kid = sig_kid(sigb, "tombstone")
    need(kid in keys.archive, f"tombstone signed by {kid}, not an archive key")
    check_sig(data, sigb, keys.archive[kid][0], "tombstone")
    t = read_json(data, "tombstone")
    need(isinstance(t, dict) and set(t) == TOMBSTONE_FIELDS and t["format"] == "edge-agent-tombstone/1",
         "tombstone: fields")
    need(t["key_id"] == kid and t["retention_class"] in ("normal", "important"), "tombstone: key or class")
    need(datetime.datetime.fromisoformat(t["expired_at"]) >= datetime.datetime.fromisoformat(t["keep_until"]),
         "tombstone: deleted before its retention ended")
    need(is_int(t["device_seq"], 1) and (t["prev_manifest_hash"] is None) == (t["device_seq"] == 1), "tombstone: seq")
    m = {"item_id": t["item_id"], "device": {"id": t["device_id"]}, "device_seq": t["device_seq"],
         "prev_manifest_hash": t["prev_manifest_hash"], "item_hash": t["item_hash"], "session": t["session"]}
    return m, t["manifest_hash"], t["annotations"]


def verify_chain(root, keys, checkpoints=None):
    by_dev = {}
    for mp in sorted(Path(root).rglob("manifest.json")):
        m, mhash, anns = verify_item(mp.parent, keys)
        by_dev.setdefault(m["device"]["id"], []).append((m, mhash, anns))
    for tp in sorted(Path(root).rglob("tombstone.json")):
        m, mhash, anns = verify_tombstone(tp.parent, keys)
        by_dev.setdefault(m["device"]["id"], []).append((m, mhash, anns))
    need(by_dev, "no items")
    out = []
    for dev, items in sorted(by_dev.items()):
        items.sort(key=lambda x: x[0]["device_seq"])
        need(items[0][0]["device_seq"] == 1, f"device {dev}: does not start at seq 1")
        for (a, ah, _), (b, _, _) in zip(items, items[1:]):
            need(b["device_seq"] == a["device_seq"] + 1, f"device {dev}: seq {a['device_seq'] + 1} missing")
            need(b["prev_manifest_hash"] == ah, f"device {dev}: {b['item_id']} does not chain")
        sessions = {}
        for m, _, _ in items:
            if m["session"]:
                sessions.setdefault(m["session"]["id"], []).append(m)
        for sid, ms in sessions.items():
            ms.sort(key=lambda m: m["session"]["index"])
            for n, m in enumerate(ms):
                need(m["session"]["index"] == n and m["session"]["prev_item_hash"] == (ms[n - 1]["item_hash"] if n else None),
                     f"session {sid}: segment {n}")
        count, head, total = items[-1][0]["device_seq"], items[-1][1], sum(x[2] for x in items)
        cp_file = Path(checkpoints) / f"{dev}.json" if checkpoints else None
        if cp_file and cp_file.is_file():
            cp = read_json(cp_file.read_bytes(), "checkpoint", canonical=False)
            need(isinstance(cp, dict) and set(cp) - {"annotations"} == {"format", "device", "count", "head", "time",
                                                                        "key_id", "sig"}, "checkpoint: fields")
            pub = keys.device_key(dev)
            need(pub is not None and cp["device"] == dev, f"checkpoint of {dev}: no enrolled key")
            body = {k: v for k, v in cp.items() if k != "sig"}
            try:
                pub.verify(base64.b64decode(cp["sig"], validate=True), rfc8785.dumps(body))
            except (InvalidSignature, ValueError):
                raise Fail(f"checkpoint of {dev}: bad signature") from None
            need(count >= cp["count"], f"device {dev}: checkpoint announces {cp['count']} items, chain ends at {count}")
            need(count != cp["count"] or head == cp["head"], f"device {dev}: head differs from the checkpoint")
            need(cp.get("annotations") is None or total >= cp["annotations"],
                 f"device {dev}: checkpoint announces {cp.get('annotations')} annotations, {total} found")
        out.append(f"{dev}: {len(items)} items, {total} annotations")
    return out


def main(argv):
    try:
        if argv[0] == "--chain":
            return "OK chain " + "; ".join(verify_chain(argv[1], Keys(argv[2]), argv[3] if len(argv) > 3 else None))
        m, mhash, _ = verify_item(Path(argv[0]), Keys(argv[1]))
        return f"OK {m['item_id']} manifest {mhash}"
    except Fail as exc:
        return f"FAIL {exc}"
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return f"FAIL unreadable: {exc!r}"


if __name__ == "__main__":
    result = main(sys.argv[1:])
    print(result)
    sys.exit(0 if result.startswith("OK") else 1)
