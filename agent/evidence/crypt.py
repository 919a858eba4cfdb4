"""Encryption at rest (optional per unit): a fresh AES-256-GCM key per item, sealed to the
archive's X25519 public key, so a stolen docking station or room box reveals no recording.

What is hashed and signed are the *stored* (encrypted) bytes, so `edge-agent verify`, the
uplink and the archive check integrity without decrypting. Each file entry also carries
``plain_size`` and ``plain_hash`` (of the decrypted bytes), checked by `decrypt_item`.

Layout of an encrypted file: the plaintext is cut into blocks of ``block_size`` bytes; block
``b`` of file ``f`` is stored as AES-256-GCM(key, nonce = uint32_be(f) || uint64_be(b),
aad = "<item_id>/<f>/<b>") = ciphertext || 16-byte tag. One stored block is one chain segment.

Key wrap (the manifest's ``encryption`` object): ephemeral X25519 key ``epk``; shared =
X25519(epk, archive public key); kek = HKDF-SHA256(shared, salt = epk || archive public key,
info = "edge-agent item key v1", 32 bytes); wrapped_key = AES-256-GCM(kek, wrap_nonce, item key,
aad = item_id).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from agent.common.errors import EdgeError, VerifyError
from agent.common.fs import atomic_write
from .keys import load_pem

TAG = 16
INFO = b"edge-agent item key v1"


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def recipient_id(pub: X25519PublicKey) -> str:
    return hashlib.sha256(_raw(pub)).hexdigest()[:16]


def generate_archive_key(private_path: Path, public_path: Path, force: bool = False) -> X25519PrivateKey:
    if private_path.exists() and not force:
        raise EdgeError(f"{private_path}: an archive encryption key already exists")
    key = X25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    atomic_write(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def load_public(path: Path) -> X25519PublicKey:
    return load_pem(path, X25519PublicKey, private=False, what="the archive's X25519 public key")


def load_private(path: Path) -> X25519PrivateKey:
    return load_pem(path, X25519PrivateKey, private=True, what="the archive's X25519 private key")


def _kek(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=INFO).derive(shared)


class ItemCipher:
    def __init__(self, item_id: str, key: bytes, header: dict):
        self.item_id = item_id
        self.aead = AESGCM(key)
        self.header = header

    @classmethod
    def new(cls, item_id: str, archive_pub: X25519PublicKey) -> "ItemCipher":
        key = AESGCM.generate_key(bit_length=256)
        eph = X25519PrivateKey.generate()
        epk = _raw(eph.public_key())
        kek = _kek(eph.exchange(archive_pub), epk, _raw(archive_pub))
        nonce = os.urandom(12)
        header = {
            "alg": "AES-256-GCM",
            "wrap": "X25519-HKDF-SHA256-A256GCM",
            "recipient": recipient_id(archive_pub),
            "epk": base64.b64encode(epk).decode(),
            "wrap_nonce": base64.b64encode(nonce).decode(),
            "wrapped_key": base64.b64encode(AESGCM(kek).encrypt(nonce, key, item_id.encode())).decode(),
        }
        return cls(item_id, key, header)

    @classmethod
    def open(cls, item_id: str, header: dict, archive_key: X25519PrivateKey) -> "ItemCipher":
        if recipient_id(archive_key.public_key()) != header.get("recipient"):
            raise EdgeError(f"item sealed to archive key {header.get('recipient')}, not this key")
        epk = base64.b64decode(header["epk"])
        kek = _kek(archive_key.exchange(X25519PublicKey.from_public_bytes(epk)), epk, _raw(archive_key.public_key()))
        try:
            key = AESGCM(kek).decrypt(base64.b64decode(header["wrap_nonce"]), base64.b64decode(header["wrapped_key"]),
                                      item_id.encode())
        except InvalidTag:
            raise VerifyError("the item key does not unwrap (wrong archive key or altered header)") from None
        return cls(item_id, key, header)

    def _nonce_aad(self, f: int, b: int) -> tuple[bytes, bytes]:
        return struct.pack(">IQ", f, b), f"{self.item_id}/{f}/{b}".encode()

    def encrypt_block(self, f: int, b: int, data: bytes) -> bytes:
        nonce, aad = self._nonce_aad(f, b)
        return self.aead.encrypt(nonce, data, aad)

    def decrypt_block(self, f: int, b: int, data: bytes) -> bytes:
        nonce, aad = self._nonce_aad(f, b)
        try:
            return self.aead.decrypt(nonce, data, aad)
        except InvalidTag:
            raise VerifyError(f"file {f} block {b}: authentication failed") from None


def decrypt_item(item_dir: Path, archive_key: X25519PrivateKey, out_dir: Path) -> list[Path]:
    """Decrypt every file of an (already verified) item into out_dir; checks plain hashes."""
    import json

    from . import manifest as mf

    m = json.loads((item_dir / mf.MANIFEST).read_bytes())
    enc = m.get("encryption")
    if not enc:
        raise EdgeError(f"{item_dir}: item is not encrypted")
    cipher = ItemCipher.open(m["item_id"], enc, archive_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = []
    for fi, f in enumerate(m["files"]):
        h = hashlib.new(m["hash_alg"]) if m["hash_alg"] != "sha256" else hashlib.sha256()
        target = out_dir / f["name"]
        with open(item_dir / mf.FILES_DIR / f["name"], "rb") as src, open(target, "wb") as dst:
            for b, seg in enumerate(s for s in m["segments"] if s["file"] == fi):
                pt = cipher.decrypt_block(fi, b, src.read(seg["size"]))
                h.update(pt)
                dst.write(pt)
        if h.hexdigest() != f.get("plain_hash"):
            raise VerifyError(f"{f['name']}: decrypted content does not match plain_hash")
        outs.append(target)
    return outs
