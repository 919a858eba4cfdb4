"""``[archive]``: the central receiver (``edge-agent archive serve``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from .base import ConfigModel, ident


class ArchiveConfig(ConfigModel):
    root: str = Field("/var/lib/edge-agent-archive",
                      description="Archive root (archive serve): items under ROOT/UNIT/CASE/ITEM, keys under ROOT/keys.")
    max_item_mb: int = Field(64 * 1024, ge=1, description="Largest item (MiB, all files) the archive accepts; larger ones are refused.")
    max_manifest_kb: int = Field(4096, ge=4, le=1024 * 1024, description="Largest manifest (KiB) the archive accepts.")
    min_free_mb: int = Field(2048, ge=0, description="Disk watermark: below this much free space (MiB) on the archive root new transfers are refused with the reason (those under way may finish); 0 = off.")
    abandon_after_h: int = Field(72, ge=1, description="A partial transfer with no new chunk for this many hours is removed (at start and hourly); the agent starts it again by query.")
    quarantine_max_items: int = Field(20, ge=0, description="Items refused for good (failed verification) whose bytes one device may "
                                                             "have kept in ROOT/_quarantine/DEVICE; beyond it only the refusal note is "
                                                             "kept and the bytes are removed, so one device cannot fill the disk for all.")
    quarantine_max_mb: int = Field(4096, ge=0, description="Bytes (MiB) of refused items one device may have kept in ROOT/_quarantine/DEVICE; "
                                                           "an item that would cross it keeps only its refusal note (see quarantine_max_items).")
    db: str = Field("", description="The archive's index: empty = ROOT/archive.db (SQLite, one machine); "
                                     "postgresql://USER@HOST:PORT/NAME = PostgreSQL, for receivers on several hosts sharing "
                                     "the storage (`edge-agent archive db upgrade` migrates it); or a SQLite file path.")
    share_group: str = Field("", description="Shared-subscription group ($share/GROUP/...) so several receivers split the work (empty: none).")
    checkpoint_every_h: int = Field(1, ge=1, le=168, description="The archive signs a checkpoint over its whole store (Merkle root "
                                                                 "of every item and tombstone) this often in archive serve, keeps it "
                                                                 "under ROOT/_merkle and publishes it retained on P/archive/checkpoint.")
    chain_gap_h: int = Field(24, ge=1, description="Chain history: items a device's signed checkpoint announced and the archive "
                                                    "has not received this many hours later raise the chain_gap alarm (the upload deadline).")
    chain_silent_h: int = Field(3, ge=1, description="Chain history: a device with no new signed checkpoint for this many hours "
                                                      "raises chain_silent (devices sign one every uplink.checkpoint_every_s).")

    @field_validator("db")
    @classmethod
    def _db(cls, value: str) -> str:
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("give a postgresql://USER@HOST:PORT/NAME URL, a SQLite file path, or nothing")
        return value

    @field_validator("share_group")
    @classmethod
    def _group(cls, value: str) -> str:
        return value if value == "" else ident(value)
