"""``[evidence]``: the hash and the blocks of the hash chain (docs/evidence-format.md)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ConfigModel


class EvidenceConfig(ConfigModel):
    hash_algorithm: str = Field("sha256", description="Hash of segments, links and manifests: sha256 or sm3.")
    block_size: int = Field(256 * 1024, ge=4096, le=1 << 30,
                            description="Block size (bytes) a file is split into for the hash chain. Equal to uplink.chunk_size, "
                                        "each chunk's SHA-256 is its block's hash: neither the agent nor the archive hashes those bytes twice.")
    max_blocks_per_file: int = Field(1024, ge=16, le=1 << 20,
                                     description="A file that would have more blocks uses the smallest block of block_size times a power "
                                                 "of two that keeps it within this many (keeps manifests small).")

    @field_validator("hash_algorithm")
    @classmethod
    def _available(cls, value: str) -> str:
        from agent.common.canon import available_algorithms

        if value not in available_algorithms():
            raise ValueError(f"本机不支持 / not available here; choose one of {', '.join(available_algorithms())}")
        return value
