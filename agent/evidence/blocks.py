"""The sealed blocks of an item, as its signed manifest lists them (``segments``).

One block is one chain segment: ``{file, offset, size, hash}``; the blocks of a file tile it from
0 to its size. The wire sends each block as one chunk (or, when a block is larger than the
broker lets a message be, as consecutive pieces of it), so the archive checks each chunk against
the signed manifest before writing it (docs/mqtt.md, "chunk").
"""

from __future__ import annotations

import bisect
import dataclasses
import re

_HEX = re.compile(r"^[0-9a-f]{40,128}$")


class BlockError(ValueError):
    """The manifest's segments do not describe the blocks of its files."""


@dataclasses.dataclass(frozen=True)
class Block:
    file: str
    offset: int
    size: int
    hash: str  # hex, in the manifest's hash algorithm

    @property
    def end(self) -> int:
        return self.offset + self.size


class BlockTable:
    """Per file, its blocks in order; lookup of the block that holds an offset."""

    def __init__(self, alg: str, files: dict[str, list[Block]]):
        self.alg = alg
        self._files = files
        self._starts = {name: [b.offset for b in bl] for name, bl in files.items()}

    @classmethod
    def from_manifest(cls, manifest: dict) -> "BlockTable":
        """Checks that the segments tile every file exactly (from 0 to its size, in order, no
        overlap, no gap; empty files have no block of positive size)."""
        files = manifest.get("files")
        segs = manifest.get("segments")
        alg = manifest.get("hash_alg")
        if not isinstance(files, list) or not isinstance(segs, list) or not isinstance(alg, str):
            raise BlockError("manifest lacks files, segments or hash_alg")
        names: list[str] = []
        sizes: list[int] = []
        for i, f in enumerate(files):
            if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not _int(f.get("size")):
                raise BlockError(f"files[{i}] is not {{name, size}}")
            names.append(f["name"])
            sizes.append(f["size"])
        out: dict[str, list[Block]] = {n: [] for n in names}
        pos = [0] * len(names)
        for i, sg in enumerate(segs):
            if not isinstance(sg, dict) or not all(_int(sg.get(k)) for k in ("file", "offset", "size")) \
                    or not isinstance(sg.get("hash"), str) or not _HEX.match(sg["hash"]):
                raise BlockError(f"segments[{i}] is not {{file, offset, size, hash}}")
            fi = sg["file"]
            if not 0 <= fi < len(names):
                raise BlockError(f"segments[{i}] names file {fi}, the manifest lists {len(names)}")
            if sg["offset"] != pos[fi]:
                raise BlockError(f"segments[{i}] starts at {sg['offset']} in {names[fi]!r}, expected {pos[fi]} "
                                 "(blocks must tile the file in order)")
            if sg["size"] == 0:
                continue
            pos[fi] += sg["size"]
            if pos[fi] > sizes[fi]:
                raise BlockError(f"segments[{i}] runs past the size {sizes[fi]} of {names[fi]!r}")
            out[names[fi]].append(Block(names[fi], sg["offset"], sg["size"], sg["hash"]))
        for fi, name in enumerate(names):
            if pos[fi] != sizes[fi]:
                raise BlockError(f"the blocks of {name!r} cover {pos[fi]} of its {sizes[fi]} bytes")
        return cls(alg, out)

    def names(self) -> list[str]:
        return list(self._files)

    def blocks(self, name: str) -> list[Block]:
        return self._files.get(name, [])

    def at(self, name: str, offset: int) -> Block | None:
        """The block of ``name`` that holds byte ``offset``, or None."""
        starts = self._starts.get(name)
        if not starts:
            return None
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return None
        b = self._files[name][i]
        return b if b.offset <= offset < b.end else None


def plan(table: BlockTable, held: dict[str, list[list[int]]], max_chunk: int) -> list[tuple[str, int, int]]:
    """The chunks that send every block not covered by ``held``: one chunk per block, or pieces
    of ``max_chunk`` bytes of a block larger than that. Returns (file, offset, length)."""
    out = []
    for name in table.names():
        have = merge_ranges(held.get(name) or [])
        for b in table.blocks(name):
            if _covered(have, b.offset, b.end):
                continue
            for off in range(b.offset, b.end, max_chunk):
                out.append((name, off, min(max_chunk, b.end - off)))
    return out


def merge_ranges(ranges) -> list[list[int]]:
    """Sorted, merged half-open byte ranges ``[[start, end], ...]`` (as the wire carries them)."""
    out: list[list[int]] = []
    for s, e in sorted((int(a), int(b)) for a, b in ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def _covered(ranges: list[list[int]], start: int, end: int) -> bool:
    for s, e in ranges:
        if s <= start and end <= e:
            return True
    return False


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
