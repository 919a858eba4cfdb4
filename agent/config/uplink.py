"""``[uplink]``: sending sealed items to the archive."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ConfigModel


class UplinkConfig(ConfigModel):
    enabled: bool = Field(True, description="Upload sealed items to the archive.")
    chunk_size: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024,
                            description="Chunk size in bytes (never above the broker's maximum packet size).")
    bandwidth_limit: int = Field(0, ge=0, description="Upload bandwidth cap in bytes/s (0 = unlimited).")
    ack_timeout_s: int = Field(30, ge=1, le=3600, description="Seconds to wait for the archive's answer before retransmitting.")
    max_inflight: int = Field(32, ge=1, le=65535,
                              description="Chunks in flight at most (also bounded by the broker's Receive Maximum, less 2 kept for status and health).")
    parallel_items: int = Field(2, ge=1, le=8,
                                description="Items sent at once: one item's manifest and last answers overlap another's chunks (all share max_inflight).")
    checkpoint_every_s: int = Field(3600, ge=60, le=86400,
                                    description="The signed chain checkpoint is published at start, after every sealed item, and "
                                                "at least this often (the archive alarms a device silent for archive.chain_silent_h).")
    audit_every_s: int = Field(3600, ge=0, le=86400,
                               description="The station's audit log (every technician action, every erase) is sealed as a signed "
                                           "item and uploaded like evidence this often when it has new entries (0 = never).")
    archive_keys: list[str] = Field([], description="Pinned archive public keys besides data_dir/keys/archive/*.pub (where "
                                                    "`edge-agent uplink trust-archive FILE` puts them): files or directories of "
                                                    "*.pub. Nothing is marked archived, freed or erased without a receipt signed "
                                                    "by one of them.")

    @field_validator("archive_keys")
    @classmethod
    def _paths(cls, value: list[str]) -> list[str]:
        if any(not v for v in value):
            raise ValueError("路径不能为空 / paths must be non-empty (files or directories of *.pub)")
        return value
