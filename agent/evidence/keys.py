"""The device's Ed25519 key pair: generation, loading, key ids, key directories."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.common.errors import EdgeError, NotFoundError
from agent.common.fs import atomic_write

try:  # libsodium (PyNaCl): verifies Ed25519 in about half OpenSSL's time here, without the GIL held
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.exceptions import BadSignatureError as _SodiumBad
except ImportError:  # pragma: no cover - PyNaCl is a dependency; OpenSSL (cryptography) otherwise
    _sodium_open = None


def load_pem(path: Path, cls: type, *, private: bool, what: str):
    """The PEM key in ``path``, which must be a ``cls``; errors name the file and ``what`` it
    should hold (e.g. "the archive's X25519 public key")."""
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise EdgeError(f"{path}: cannot load {what}: {exc}") from None
    if not isinstance(key, cls):
        raise EdgeError(f"{path}: not {what} (found {type(key).__name__})")
    return key


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def refuse_existing(private_path: Path, force: bool = False) -> None:
    """Raise unless ``private_path`` is free (or ``force`` replaces it)."""
    if private_path.exists() and not force:
        raise EdgeError(f"{private_path}: a device key already exists; use --force to replace it "
                        "(items signed with the old key then need the old public key to verify)")


def generate(private_path: Path, public_path: Path, force: bool = False) -> Ed25519PrivateKey:
    """Write a new key pair; the private key is mode 0600. Refuses to overwrite without force."""
    refuse_existing(private_path, force)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(private_path, pem, mode=0o600)
    atomic_write(public_path, public_pem(key.public_key()), mode=0o644)
    return key


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise EdgeError(f"{path}: device key not found (run `edge-agent init`)") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise EdgeError(f"{path}: private key is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                        f"run `chmod 600 {path}`")
    return load_pem(path, Ed25519PrivateKey, private=True, what="the device's Ed25519 private key")


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{path}: public key not found") from None
    return parse_public(data, str(path))


def pin_public(path: Path, directory: Path, prefix: str) -> tuple[str, Path]:
    """Copy the Ed25519 public key at ``path`` into ``directory`` as ``PREFIX-KEYID.pub``;
    returns (key id, where it went). Refuses anything that is not an Ed25519 public key."""
    pub = load_public(Path(path))
    kid = key_id(pub)
    dest = Path(directory) / f"{prefix}-{kid}.pub"
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, public_pem(pub), mode=0o644)
    return kid, dest


def parse_public(data: bytes, where: str = "public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            raw = base64.b64decode(data.strip(), validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except Exception:
            raise EdgeError(f"{where}: not a PEM or base64 Ed25519 public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgeError(f"{where}: not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def verify_sig(public: Ed25519PublicKey, data: bytes, sig_b64: str) -> bool:
    try:
        public.verify(base64.b64decode(sig_b64), data)
        return True
    except (InvalidSignature, ValueError):
        return False


#: whether :func:`verify_raw` uses libsodium (which releases the GIL while it verifies)
SODIUM = _sodium_open is not None


def public_raw(public: Ed25519PublicKey) -> bytes:
    """The 32 bytes of an Ed25519 public key (what :func:`verify_raw` takes)."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_raw(public: bytes, data: bytes, sig_b64: str) -> bool:
    """:func:`verify_sig` for a raw 32-byte public key, through libsodium when PyNaCl is there
    (the monitor's hot path: ~60 µs against OpenSSL's ~110 µs on these machines, and the GIL is
    released meanwhile). Same answer for every genuine signature; libsodium is the stricter of
    the two about crafted ones (small-order points, non-canonical encodings): refused, never
    accepted (tests/monitor/test_monitor_trust.py compares both)."""
    try:
        sig = base64.b64decode(sig_b64)
    except ValueError:
        return False
    if len(sig) != 64 or len(public) != 32:
        return False
    if _sodium_open is None:
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig, data)
            return True
        except (InvalidSignature, ValueError):
            return False
    try:
        _sodium_open(sig + data, public)
        return True
    except (_SodiumBad, ValueError):
        return False


class KeyRing:
    """Public keys by key id, loaded from files or a directory of ``*.pub`` (PEM) files."""

    def __init__(self) -> None:
        self.by_id: dict[str, Ed25519PublicKey] = {}
        #: key id -> device id (the enrolment record: ``DEVICE_ID.pub`` in a keys directory)
        self.device_of: dict[str, str] = {}
        #: key id -> unit code of an annotator key (``annotators/UNIT/NAME.pub``): may sign
        #: annotations of that unit's items, never a manifest
        self.annotators: dict[str, str] = {}
        #: key id -> public key of the archive (``archive/*.pub``): signs tombstones of expired
        #: items (agent/evidence/tombstone.py), never a manifest or an annotation
        self.archive: dict[str, Ed25519PublicKey] = {}

    def add(self, public: Ed25519PublicKey, device_id: str | None = None) -> str:
        kid = key_id(public)
        self.by_id[kid] = public
        if device_id:
            self.device_of[kid] = device_id
        return kid

    def add_annotator(self, public: Ed25519PublicKey, unit_code: str) -> str:
        kid = key_id(public)
        self.by_id[kid] = public
        self.annotators[kid] = unit_code
        return kid

    def load_annotators(self, keys_dir: Path, unit_code: str | None = None) -> None:
        """Annotator keys under ``keys_dir/annotators/UNIT/*.pub`` (only ``unit_code``'s if given)."""
        base = Path(keys_dir) / "annotators"
        for p in sorted(base.glob(f"{unit_code or '*'}/*.pub")) if base.is_dir() else []:
            self.add_annotator(load_public(p), p.parent.name)

    @classmethod
    def from_paths(cls, key: str | os.PathLike | None = None, keys_dir: str | os.PathLike | None = None) -> "KeyRing":
        ring = cls()
        if key:
            ring.add(load_public(Path(key)))
        if keys_dir:
            d = Path(keys_dir)
            if not d.is_dir():
                raise EdgeError(f"{d}: keys directory not found")
            for p in sorted(d.glob("*.pub")):
                ring.add(load_public(p), device_id=p.stem)
            for p in sorted(d.glob("*.pub.old")):  # a replaced key: DEVICE_ID.KEYID.pub.old, still that device's
                dev, _, kid = p.name[:-len(".pub.old")].rpartition(".")
                public = load_public(p)
                if dev and kid == key_id(public):
                    ring.add(public, device_id=dev)
            ring.load_annotators(d)
            for p in sorted((d / "archive").glob("*.pub")) if (d / "archive").is_dir() else []:
                public = load_public(p)
                ring.archive[key_id(public)] = public
        return ring

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self.by_id.get(kid)
