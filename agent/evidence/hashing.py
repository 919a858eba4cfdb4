"""Hash algorithms and the rolling hash chain (see docs/evidence-format.md)."""

from __future__ import annotations

import hashlib
import struct

from agent.common.canon import available_algorithms, canonical, digest, hexdigest, new  # noqa: F401  (the format's hashes)


def header_hash(alg: str, header: dict) -> bytes:
    """H(JCS(header)): binds every metadata field to the first link."""
    return digest(alg, canonical(header))


def link(alg: str, prev: bytes, segment_hash: bytes, index: int) -> bytes:
    """link_i = H(link_{i-1} || segment_hash_i || uint64_be(i)); link_{-1} = header hash."""
    return digest(alg, prev + segment_hash + struct.pack(">Q", index))


def chain_links(alg: str, head: bytes, segment_hashes: list[bytes]) -> list[bytes]:
    links, prev = [], head
    for i, seg in enumerate(segment_hashes):
        prev = link(alg, prev, seg, i)
        links.append(prev)
    return links
