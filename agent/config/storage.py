"""``[storage]``: where the ledger, spool and keys live, and the disk kept free."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel


class StorageConfig(ConfigModel):
    data_dir: str = Field("/var/lib/edge-agent", description="Data directory: ledger, spool, keys.")
    reserve_mb: int = Field(1024, ge=0, description="Free disk to keep in reserve (MiB); new work is refused below it.")
    retention_days: int = Field(7, ge=0, description="Days to keep a local copy after the archive acknowledged it (0 = purge at once).")
