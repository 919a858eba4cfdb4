"""Independent reference verifier for one edge-agent evidence item, written only from
docs/evidence-format.md (standard library + `cryptography` for Ed25519). It shares no code with
agent/; tests/test_evidence_format.py checks that both verifiers agree.

    python tools/verify_reference.py ITEM_DIR DEVICE_PUBKEY.pem
"""

import base64
import hashlib
import json
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key


def jcs(obj) -> bytes:
    # RFC 8785 for documents without floats: sorted keys, no whitespace, UTF-8.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def H(alg, data):
    return hashlib.new(alg, data).digest()


def verify(item: Path, pub_pem: Path) -> str:
    data = (item / "manifest.json").read_bytes()
    sig = json.loads((item / "manifest.sig").read_bytes())
    load_pem_public_key(pub_pem.read_bytes()).verify(base64.b64decode(sig["sig"]), data)  # raises if bad
    m = json.loads(data)
    alg = m["hash_alg"]
    header = {k: v for k, v in m.items() if k not in ("segments", "item_hash")}
    link = H(alg, jcs(header))
    for i, seg in enumerate(m["segments"]):
        f = m["files"][seg["file"]]
        with open(item / "files" / f["name"], "rb") as fh:
            fh.seek(seg["offset"])
            block = fh.read(seg["size"])
        if H(alg, block).hex() != seg["hash"]:
            return f"FAIL segment {i} hash"
        link = H(alg, link + bytes.fromhex(seg["hash"]) + struct.pack(">Q", i))
        if link.hex() != seg["link"]:
            return f"FAIL segment {i} link"
    if link.hex() != m["item_hash"]:
        return "FAIL item_hash"
    for f in m["files"]:
        if hashlib.new(alg, (item / "files" / f["name"]).read_bytes()).hexdigest() != f["hash"]:
            return f"FAIL file {f['name']}"
    return f"OK {m['item_id']} manifest {hashlib.new(alg, data).hexdigest()}"


if __name__ == "__main__":
    print(verify(Path(sys.argv[1]), Path(sys.argv[2])))
