"""Encryption at rest: stored bytes reveal nothing, still verify without decrypting, and decrypt
exactly with the archive's key only."""

from __future__ import annotations

import os

import pytest

from agent.common.errors import EdgeError, VerifyError
from agent.evidence import crypt
from agent.evidence.verify import verify_item
from agent.store.ingest import ingest
from tests.support.spine import META, make_store, run_cli


@pytest.fixture
def enc_store(tmp_path):
    key = crypt.generate_archive_key(tmp_path / "arch" / "archive-enc.key", tmp_path / "arch" / "archive-enc.pub")
    store = make_store(tmp_path, evidence__block_size=4096, encryption__enabled=True,
                       encryption__archive_public_key=str(tmp_path / "arch" / "archive-enc.pub"))
    return store, key


def test_encrypted_item_verifies_without_key_and_decrypts(enc_store, tmp_path):
    store, key = enc_store
    plain = b"SECRET-INTERVIEW-" * 700 + os.urandom(333)
    src = tmp_path / "clip.mp4"
    src.write_bytes(plain)
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    stored = (item / "files" / "clip.mp4").read_bytes()
    assert b"SECRET-INTERVIEW" not in stored
    assert m["encryption"]["alg"] == "AES-256-GCM" and m["files"][0]["plain_size"] == len(plain)
    rep = verify_item(item, store.keyring())  # no decryption key needed
    assert rep.segments == 3  # 12,233 bytes in 4,096-byte blocks
    out = crypt.decrypt_item(item, key, tmp_path / "plain")
    assert out[0].read_bytes() == plain
    # the ledger's content hash is the plaintext's (the dock compares it with the recorder's)
    assert store.items()[0]["content_hash"] == m["files"][0]["plain_hash"]
    # CLI
    p = run_cli(tmp_path / "agent.toml", "crypt", "decrypt", str(item), "--key", str(tmp_path / "arch" / "archive-enc.key"),
                "--out", str(tmp_path / "plain2"), "--device-key", str(store.pub_path))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "plain2" / "clip.mp4").read_bytes() == plain


def test_wrong_key_and_tamper(enc_store, tmp_path):
    store, key = enc_store
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(10000))
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    other = crypt.generate_archive_key(tmp_path / "o.key", tmp_path / "o.pub")
    with pytest.raises(EdgeError, match="sealed to archive key"):
        crypt.decrypt_item(item, other, tmp_path / "x")
    f = item / "files" / "clip.mp4"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="segment 0"):
        verify_item(item, store.keyring())
    with pytest.raises(VerifyError, match="authentication failed"):
        crypt.decrypt_item(item, key, tmp_path / "y")


def test_enabled_without_key_is_a_config_error(tmp_path):
    with pytest.raises(EdgeError, match="archive_public_key is empty"):
        make_store(tmp_path, encryption__enabled=True)
