"""`edge-agent init`: the config file, the data directory and the device's key pair, in one call.

Re-running it is safe: an existing config is kept (only the values given are set in it), an
existing device key is kept unless ``force`` is given, and the result says what was kept and what
changed. Changing ``device.id`` of a device that has a key needs ``force`` (the key is the device's
identity at the archive); that refusal comes before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import config as config_mod
from agent.common.errors import EdgeError
from agent.common.fs import atomic_write
from ..evidence import keys
from .store import Store


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    config_written: bool      # False: an existing config was kept (the values given were set in it)
    values_given: int         # how many settings were given
    data_dir: Path
    key_path: Path
    pub_path: Path
    key_id: str
    key_kept: bool = False    # True: the existing device key was kept (no --force)
    changed: tuple = ()       # ((dotted key, old, new), ...) set in an existing config


def init_device(config_path: str | os.PathLike | None, values: dict[str, dict[str, Any]],
                force: bool = False, actor: str | None = None) -> InitResult:
    """Write a commented default config (or set ``values`` — {section: {key: value}}, None for
    "not given" — in the existing one), make the data directory (0750, keys/ 0700) and a new
    Ed25519 device key (0600); audited as ``init``. An existing key is replaced only with ``force``."""
    path = config_mod.config_path(config_path)
    given = {section: {k: v for k, v in kv.items() if v is not None} for section, kv in values.items()}
    if path.exists():
        cfg = config_mod.load(path)
        text = None
        data_dir = Path(given.get("storage", {}).get("data_dir", cfg.storage.data_dir))
    else:
        text = config_mod.render_default(given)
        data_dir = Path(config_mod.loads(text, path).storage.data_dir)
    key_file = data_dir / "keys" / "device.key"
    keep_key = key_file.exists() and not force
    if keep_key and text is None:
        new_id = given.get("device", {}).get("id")
        if new_id is not None and new_id != cfg.device.id:
            raise EdgeError(f"device.id: 已有设备密钥，改设备编号须 --force / {key_file} is the key of device "
                            f"{cfg.device.id}; changing device.id to {new_id} needs --force (a new key pair)")
    changed = []
    if text is None:
        for section, kv in given.items():
            for key, value in kv.items():
                old = cfg.get(f"{section}.{key}")
                if old != value:
                    config_mod.set_value(path, f"{section}.{key}", str(value))
                    changed.append((f"{section}.{key}", old, value))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        config_mod.atomic_write_text(path, text, mode=0o640)
    cfg = config_mod.load(path)
    data = Path(cfg.storage.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o750)
    (data / "keys").mkdir(exist_ok=True)
    os.chmod(data / "keys", 0o700)
    store = Store(cfg)
    try:
        if keep_key:
            key = keys.load_private(store.key_path)
            if not store.pub_path.exists():
                atomic_write(store.pub_path, keys.public_pem(key.public_key()), mode=0o644)
        else:
            key = keys.generate(store.key_path, store.pub_path, force=force)
        store._key = key
        kid = keys.key_id(key.public_key())
        store.audit.append("init", None, actor=actor, device=cfg.device.id, key_id=kid, forced=force,
                           key_kept=keep_key, changed=[k for k, _o, _n in changed])
        return InitResult(config_path=path, config_written=text is not None,
                          values_given=sum(map(len, given.values())), data_dir=data,
                          key_path=store.key_path, pub_path=store.pub_path, key_id=kid,
                          key_kept=keep_key, changed=tuple(changed))
    finally:
        store.close()
