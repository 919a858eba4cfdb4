"""Key files a technician may mix up: each refusal names the file and what it should hold."""

from __future__ import annotations

import os

import pytest

from agent.common.errors import EdgeError
from agent.evidence import crypt, keys


def test_device_key_where_the_archive_key_belongs(tmp_path):
    keys.generate(tmp_path / "device.key", tmp_path / "device.pub")
    with pytest.raises(EdgeError) as err:
        crypt.load_public(tmp_path / "device.pub")
    assert str(err.value) == (f"{tmp_path / 'device.pub'}: not the archive's X25519 public key "
                              "(found Ed25519PublicKey)")


def test_archive_key_where_the_device_key_belongs(tmp_path):
    crypt.generate_archive_key(tmp_path / "archive.key", tmp_path / "archive.pub")
    os.chmod(tmp_path / "archive.key", 0o600)
    with pytest.raises(EdgeError) as err:
        keys.load_private(tmp_path / "archive.key")
    assert str(err.value) == (f"{tmp_path / 'archive.key'}: not the device's Ed25519 private key "
                              "(found X25519PrivateKey)")


def test_garbage_and_missing_key_files(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    os.chmod(bad, 0o600)
    with pytest.raises(EdgeError, match=r"bad\.pem: cannot load the device's Ed25519 private key: "):
        keys.load_private(bad)
    with pytest.raises(EdgeError, match=r"gone\.pem: cannot load the archive's X25519 private key: .*No such file"):
        crypt.load_private(tmp_path / "gone.pem")


def test_round_trip(tmp_path):
    k = keys.generate(tmp_path / "d.key", tmp_path / "d.pub")
    assert keys.key_id(keys.load_private(tmp_path / "d.key").public_key()) == keys.key_id(k.public_key())
    a = crypt.generate_archive_key(tmp_path / "a.key", tmp_path / "a.pub")
    assert crypt.load_public(tmp_path / "a.pub").public_bytes_raw() == a.public_key().public_bytes_raw()
