"""Canonical JSON (RFC 8785, JCS) and the hash functions every signed record uses.

Sign bytes, not objects: ``canonical()`` is the one serialiser of signed and hashed records.
"""

from __future__ import annotations

import hashlib

import rfc8785

from agent.common.errors import EdgeError


def available_algorithms() -> list[str]:
    algs = ["sha256"]
    try:
        hashlib.new("sm3", b"")
        algs.append("sm3")
    except (ValueError, TypeError):
        pass
    return algs


def new(alg: str):
    """A new hash object; SM3 only where OpenSSL provides it."""
    if alg == "sha256":
        return hashlib.sha256()
    if alg == "sm3":
        try:
            return hashlib.new("sm3")
        except ValueError:
            raise EdgeError("hash algorithm sm3 is not offered by this system's OpenSSL") from None
    raise EdgeError(f"unknown hash algorithm {alg!r} (known: sha256, sm3)")


def digest(alg: str, data: bytes) -> bytes:
    h = new(alg)
    h.update(data)
    return h.digest()


def hexdigest(alg: str, data: bytes) -> str:
    return digest(alg, data).hex()


def canonical(obj) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes; floats are refused (none may appear in signed records)."""
    _refuse_floats(obj, "$")
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        raise EdgeError(f"cannot canonicalise record: {exc}") from None


def _refuse_floats(obj, where: str) -> None:
    if isinstance(obj, float):
        raise EdgeError(f"{where}: floats are not allowed in signed records")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _refuse_floats(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _refuse_floats(v, f"{where}[{i}]")
