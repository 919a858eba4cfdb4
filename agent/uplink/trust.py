"""Which archive keys this device trusts (pinned at enrolment), and pinning one.

The archive's public key (``ROOT/_archive/archive.pub``) is copied to ``DATA_DIR/keys/archive/``
by ``edge-agent uplink trust-archive FILE``; ``uplink.archive_keys`` may name more files or
directories (several archives, a key being rotated in). Without any, the uplink sends nothing and
frees nothing (docs/mqtt.md, "Receipts")."""

from __future__ import annotations

from pathlib import Path

from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire import trust_list
from agent.wire.receipts import ArchiveTrust

NO_KEY = ("未固定归档服务器公钥：不上传、不释放任何资料 / no archive key pinned: nothing is uploaded or freed — "
          "copy the archive's ROOT/_archive/archive.pub here and run `edge-agent uplink trust-archive archive.pub`")


def archive_keys_dir(cfg) -> Path:
    return trust_list.archive_keys_dir(cfg.storage.data_dir)


def archive_trust(cfg) -> ArchiveTrust:
    try:
        return ArchiveTrust.load([archive_keys_dir(cfg), *cfg.uplink.archive_keys])
    except EdgeError as exc:
        raise EdgeError(f"uplink.archive_keys: {exc}") from None


class ReceiptCheck:
    """The dock's ``ReceiptPort`` (agent/common/ports.py): a receipt kept in the ledger, verified
    again before a recorder file is erased against the archive keys pinned now (read afresh each
    time: a key revoked since the receipt was accepted no longer frees anything)."""

    def __init__(self, cfg):
        self.cfg = cfg

    def verify_receipt(self, receipt: dict) -> None:
        archive_trust(self.cfg).verify(receipt, "receipt")


def pin_archive_key(cfg, path: Path) -> tuple[str, Path]:
    """Copy the archive public key at ``path`` into DATA_DIR/keys/archive/ (named by key id);
    returns (key id, where it went). Refuses anything that is not an Ed25519 public key, and a
    key revoked on this device."""
    kid = keys.key_id(keys.load_public(Path(path)))
    if kid in archive_trust(cfg).revoked:
        raise EdgeError(f"归档公钥 {kid} 已吊销 / archive key {kid} was revoked on this device: not pinned again")
    return keys.pin_public(path, archive_keys_dir(cfg), "archive")


def revoke_archive_key(cfg, key_id: str) -> dict:
    """Stop trusting pinned archive (receiver) key ``key_id`` (16 hex digits, as `archive receiver
    list` shows it): its file moves to DATA_DIR/keys/archive/revoked/, and a receipt, answer or
    status signed by it is ignored (a running uplink re-reads its keys every 10 s), even if
    ``uplink.archive_keys`` still names it. Refuses a key id that is not pinned here."""
    d = archive_keys_dir(cfg)
    kid = (key_id or "").strip().lower()
    found = [f for f in sorted(d.glob("*.pub")) if keys.key_id(keys.load_public(f)) == kid] if d.is_dir() else []
    trust = archive_trust(cfg)
    if not found and kid not in trust.key_ids:
        raise EdgeError(f"没有固定该归档公钥 / no pinned archive key {key_id!r} here; pinned: "
                        f"{', '.join(trust.key_ids) or 'none'}")
    pub = keys.load_public(found[0]) if found else trust.ring.get(kid)
    trust_list.revoke_key(d, pub)
    dest = d / trust_list.REVOKED_DIR / f"archive-{kid}.pub"
    return {"revoked": kid, "path": str(dest), "pinned": archive_trust(cfg).key_ids}
