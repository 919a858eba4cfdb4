#!/usr/bin/env python3
"""verify.py: check a court bundle made by `edge-agent archive export --case NO --bundle DEST`.

Standalone: Python 3.9+ standard library and the `cryptography` package (pip install
cryptography); nothing of edge-agent. Written from docs/evidence-format.md of edge-agent.

    python3 verify.py [BUNDLE_DIR]        (default: the folder this file is in)

Checks, and prints one line per finding:
  1. bundle.json is signed (bundle.sig) by the archive key in keys/archive.pub, and every file of
     the bundle is listed there with its size and SHA-256 (nothing added, removed or changed);
  2. each item under items/: manifest.json is canonical JSON (RFC 8785) signed (manifest.sig) by
     a key enrolled for its device (enrolment.json, keys/devices/); every file has the size and
     hash sealed in the manifest; the segments tile each file and chain
     (link[-1] = H(JCS(header)), link[i] = H(link[i-1] || H(segment i) || u64be(i)), item_hash =
     the last link); annotations are canonical, numbered, chained to the manifest and to each
     other, and signed by the item's device key or an annotator enrolled for its unit;
  3. consecutive items of one device chain (prev_manifest_hash = H(previous manifest.json)).
Exit 0 and "OK" when everything holds; exit 1 and "FAIL ..." lines otherwise.
验证通过输出 OK（退出码 0）；否则逐条输出 FAIL（退出码 1）。
"""

import base64
import hashlib
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

BUNDLE_FORMAT = "edge-court-bundle/1"


class Bad(Exception):
    pass


def jcs(v):
    """RFC 8785 canonical JSON for the values these records hold (no floats)."""
    if isinstance(v, dict):
        items = sorted(v.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(x) for k, x in items) + "}"
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, float):
        raise Bad("a float in a signed record")
    return json.dumps(v, ensure_ascii=False)


def read_json(data, what, canonical=True):
    def pairs(ps):
        d = {}
        for k, v in ps:
            if k in d:
                raise Bad(f"{what}: duplicate key {k!r}")
            d[k] = v
        return d

    def no_float(_s):
        raise Bad(f"{what}: a float")

    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_float=no_float,
                         parse_constant=no_float)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Bad(f"{what}: not JSON ({exc})") from None
    if canonical and jcs(obj).encode("utf-8") != data:
        raise Bad(f"{what}: not in the canonical form (RFC 8785) that was signed")
    return obj


def H(alg, data):
    try:
        return hashlib.new(alg, data).digest()
    except ValueError:
        raise Bad(f"hash algorithm {alg!r} not available here") from None


def key_id(pub):
    return hashlib.sha256(pub.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def load_key(path):
    pub = load_pem_public_key(path.read_bytes())
    return key_id(pub), pub


def check_sig(pub, data, sig_b64, what):
    try:
        pub.verify(base64.b64decode(sig_b64, validate=True), data)
    except (InvalidSignature, ValueError):
        raise Bad(f"{what}: bad signature") from None


def verify_index(b, fails):
    """bundle.json signed by the archive, every file listed with its size and SHA-256."""
    data = (b / "bundle.json").read_bytes()
    index = read_json(data, "bundle.json")
    if index.get("format") != BUNDLE_FORMAT:
        raise Bad(f"bundle.json: format is not {BUNDLE_FORMAT}")
    kid, pub = load_key(b / "keys" / "archive.pub")
    sig = read_json((b / "bundle.sig").read_bytes(), "bundle.sig", canonical=False)
    if sig.get("key_id") != kid or kid != index.get("archive_key_id"):
        fails.append(f"bundle.sig: signed by key {sig.get('key_id')}, the archive key here is {kid}")
    try:
        check_sig(pub, data, sig.get("sig", ""), "bundle.json")
    except Bad as exc:
        fails.append(str(exc))
    listed = {f["path"]: f for f in index["files"]}
    present = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()} - {"bundle.json", "bundle.sig"}
    for p in sorted(present - set(listed)):
        fails.append(f"{p}: in the folder but not in bundle.json (added)")
    for p in sorted(set(listed) - present):
        fails.append(f"{p}: listed in bundle.json but missing")
    for p in sorted(set(listed) & present):
        raw = (b / p).read_bytes()
        if len(raw) != listed[p]["size"] or hashlib.sha256(raw).hexdigest() != listed[p]["sha256"]:
            fails.append(f"{p}: changed since the bundle was made (size or SHA-256 differs from bundle.json)")
    return index


def verify_item(d, enrol, b):
    """One item; returns (device, seq, manifest bytes, hash_alg). Raises Bad on the first fault."""
    raw = (d / "manifest.json").read_bytes()
    m = read_json(raw, f"{d.name}/manifest.json")
    if m.get("item_id") != d.name:
        raise Bad(f"{d.name}: manifest names item {m.get('item_id')!r}")
    alg, dev = m["hash_alg"], m["device"]["id"]
    devkeys = {k["key_id"]: b / k["file"] for k in enrol["devices"].get(dev, {}).get("keys", [])}
    if not devkeys:
        raise Bad(f"{d.name}: device {dev} is not in enrolment.json")
    sig = read_json((d / "manifest.sig").read_bytes(), f"{d.name}/manifest.sig", canonical=False)
    if sig.get("key_id") not in devkeys:
        raise Bad(f"{d.name}: manifest signed by key {sig.get('key_id')}, not one enrolled for device {dev}")
    check_sig(load_key(devkeys[sig["key_id"]])[1], raw, sig["sig"], f"{d.name}/manifest.json")
    blobs = {}  # segments name their file by its index in "files"
    for f in m["files"]:
        p = d / "files" / f["name"]
        if not p.is_file():
            raise Bad(f"{d.name}: file {f['name']} missing")
        blobs[f["name"]] = data = p.read_bytes()
        if len(data) != f["size"]:
            raise Bad(f"{d.name}/files/{f['name']}: size {len(data)} bytes, sealed as {f['size']}")
        if H(alg, data).hex() != f["hash"]:
            raise Bad(f"{d.name}/files/{f['name']}: hash mismatch (the bytes were changed)")
    header = {k: v for k, v in m.items() if k not in ("segments", "item_hash")}
    link = H(alg, jcs(header).encode("utf-8"))
    pos = {name: 0 for name in blobs}
    last = 0
    for i, s in enumerate(m["segments"]):
        if not isinstance(s["file"], int) or not last <= s["file"] < len(m["files"]):
            raise Bad(f"{d.name}: segment {i} names no file in order")
        last, name = s["file"], m["files"][s["file"]]["name"]
        data = blobs[name][s["offset"]:s["offset"] + s["size"]]
        if s["offset"] != pos[name] or len(data) != s["size"]:
            raise Bad(f"{d.name}: segment {i} does not tile file {name}")
        pos[name] += s["size"]
        h = H(alg, data)
        if h.hex() != s["hash"]:
            raise Bad(f"{d.name}: segment {i} (bytes {s['offset']}-{s['offset'] + s['size'] - 1}): hash mismatch")
        link = H(alg, link + h + i.to_bytes(8, "big"))
        if link.hex() != s["link"]:
            raise Bad(f"{d.name}: segment {i}: link does not chain")
    if any(pos[n] != len(blobs[n]) for n in blobs):
        raise Bad(f"{d.name}: segments do not cover every file")
    if link.hex() != m["item_hash"]:
        raise Bad(f"{d.name}: item_hash does not match the chain of segments")
    mhash, prev = H(alg, raw).hex(), None
    unit = m["device"]["unit_code"]
    annotators = enrol.get("annotators", {}).get(unit, {})
    n = 0
    for n, p in enumerate(sorted((d / "annotations").glob("*.json")) if (d / "annotations").is_dir() else [], 1):
        if p.name != f"{n:04d}.json":
            raise Bad(f"{d.name}: annotation {p.name} out of sequence (expected {n:04d}.json)")
        adata = p.read_bytes()
        a = read_json(adata, f"{d.name}/annotations/{p.name}")
        if (a.get("seq"), a.get("item_id"), a.get("manifest_hash"), a.get("prev")) != (n, d.name, mhash, prev):
            raise Bad(f"{d.name}: annotation {n} is not chained to this manifest and the previous annotation")
        asig = read_json(p.with_suffix(".sig").read_bytes(), f"{d.name}/annotations/{n:04d}.sig", canonical=False)
        kpath = devkeys.get(asig.get("key_id")) or next(
            (b / f for name, (k, f) in annotators.items() if k == asig.get("key_id")), None)
        if kpath is None:
            raise Bad(f"{d.name}: annotation {n} signed by key {asig.get('key_id')}, neither the device's nor an "
                      f"annotator's of unit {unit}")
        check_sig(load_key(kpath)[1], adata, asig["sig"], f"{d.name}/annotations/{p.name}")
        prev = H(alg, adata).hex()
    return dev, m["device_seq"], raw, alg, m.get("prev_manifest_hash"), n


def main(argv):
    b = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent)
    fails, ok = [], []
    try:
        index = verify_index(b, fails)
        enrol = read_json((b / "enrolment.json").read_bytes(), "enrolment.json", canonical=False)
    except (Bad, OSError, KeyError, TypeError) as exc:
        print(f"FAIL {exc}")
        return 1
    chain = {}
    for item in index["items"]:
        d = b / "items" / item
        try:
            dev, seq, raw, alg, prev, anns = verify_item(d, enrol, b)
        except Bad as exc:
            fails.append(f"{item}: {exc}")
        except (OSError, KeyError, TypeError, ValueError) as exc:
            fails.append(f"{item}: unreadable ({type(exc).__name__}: {exc})")
            continue
        chain.setdefault(dev, {})[seq] = (raw, alg, prev)
        ok.append(f"ok {item}: device {dev} seq {seq}, {anns} annotation(s)")
    links = 0
    for dev, seqs in chain.items():
        for seq, (_raw, _alg, prev) in seqs.items():
            if seq - 1 in seqs:
                praw, palg, _ = seqs[seq - 1]
                links += 1
                if H(palg, praw).hex() != prev:
                    fails.append(f"device {dev}: seq {seq} does not chain to seq {seq - 1} (prev_manifest_hash)")
    for line in ok:
        print(line)
    for line in fails:
        print(f"FAIL {line}")
    if fails:
        print(f"FAIL: {len(fails)} finding(s) / 验证未通过")
        return 1
    print(f"OK: case {index['case_number']}: {len(ok)} item(s), {links} device chain link(s), "
          f"{len(index['files'])} files as signed by archive key {index['archive_key_id']} / 验证通过")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
