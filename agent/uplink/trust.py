"""Which archive keys this device trusts (pinned at enrolment), and pinning one.

The archive's public key (``ROOT/_archive/archive.pub``) is copied to ``DATA_DIR/keys/archive/``
by ``edge-agent uplink trust-archive FILE``; ``uplink.archive_keys`` may name more files or
directories (several archives, a key being rotated in). Without any, the uplink sends nothing and
frees nothing (docs/mqtt.md, "Receipts")."""

from __future__ import annotations

from pathlib import Path

from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire.receipts import ArchiveTrust

NO_KEY = ("未固定归档服务器公钥：不上传、不释放任何资料 / no archive key pinned: nothing is uploaded or freed — "
          "copy the archive's ROOT/_archive/archive.pub here and run `edge-agent uplink trust-archive archive.pub`")


def archive_keys_dir(cfg) -> Path:
    return Path(cfg.storage.data_dir) / "keys" / "archive"


def archive_trust(cfg) -> ArchiveTrust:
    try:
        return ArchiveTrust.load([archive_keys_dir(cfg), *cfg.uplink.archive_keys])
    except EdgeError as exc:
        raise EdgeError(f"uplink.archive_keys: {exc}") from None


def pin_archive_key(cfg, path: Path) -> tuple[str, Path]:
    """Copy the archive public key at ``path`` into DATA_DIR/keys/archive/ (named by key id);
    returns (key id, where it went). Refuses anything that is not an Ed25519 public key."""
    return keys.pin_public(path, archive_keys_dir(cfg), "archive")
