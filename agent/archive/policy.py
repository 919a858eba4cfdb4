"""The centre's side of the unit policy (agent/wire/policy.py): the policy key and publishing.

The policy key is a role of its own (TUF): ``ROOT/_policy/policy.key`` signs nothing but unit
policies; the archive's receipt key (``_archive/archive.key``) never signs a policy and the
policy key never signs a receipt. Its public half, ``ROOT/_policy/policy.pub``, is pinned on each
station (``archive enroll --pin-to`` or ``edge-agent policy trust``).

Every document carries the archive trust list of the root (:func:`trust_list`): the receiver keys
revoked with ``archive receiver revoke`` (so the next publish takes a revocation to every station
of the unit) and, endorsed by the archive root key, the enrolled receivers' keys and the next root
key of a rotation (agent/wire/trust_list.py).

The last document signed for each unit is kept as ``ROOT/_policy/published/UNIT.json`` (the
exact payload), written *before* it is sent: the next version is always above every version
that may have reached a broker, so a version number is never used for two contents.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from agent.common.errors import EdgeError, NotFoundError
from agent.common.fs import atomic_write
from agent.evidence import keys
from agent.wire import policy as wp
from agent.wire import trust_list as tl
from agent.wire.client import ConnSettings
from agent.wire.mqtt import Connection


def policy_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "_policy"


def key_paths(root: str | os.PathLike) -> tuple[Path, Path]:
    d = policy_dir(root)
    return d / "policy.key", d / "policy.pub"


def new_key(root: str | os.PathLike) -> dict:
    """Create the policy key pair (refused when one exists: stations have its public key pinned)."""
    kp, pp = key_paths(root)
    if kp.exists():
        raise EdgeError(f"策略密钥已存在 / a policy key exists already: {kp} (stations have pinned it)")
    kp.parent.mkdir(parents=True, exist_ok=True)
    keys.generate(kp, pp)
    return key_info(root)


def key_info(root: str | os.PathLike) -> dict:
    kp, pp = key_paths(root)
    if not pp.exists():
        raise NotFoundError(f"没有策略密钥 / no policy key at {pp}: create it with "
                            f"`edge-agent archive policy key --new --root {root}`")
    pub = keys.load_public(pp)
    return {"key_id": keys.key_id(pub), "public": str(pp), "private": str(kp)}


def signing_key(root: str | os.PathLike):
    kp, _ = key_paths(root)
    if not kp.exists():
        raise NotFoundError(f"没有策略密钥 / no policy key at {kp}: create it with "
                            f"`edge-agent archive policy key --new --root {root}`")
    return keys.load_private(kp)


def _published_path(root: str | os.PathLike, unit: str) -> Path:
    return policy_dir(root) / "published" / f"{wp._code(unit)}.json"


def published_units(root: str | os.PathLike) -> list[str]:
    """The units a policy was published for (ROOT/_policy/published/UNIT.json)."""
    d = policy_dir(root) / "published"
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def last_published(root: str | os.PathLike, unit: str) -> tuple[wp.Document, bytes] | None:
    """The last document signed for ``unit`` and its payload, or None."""
    p = _published_path(root, unit)
    try:
        payload = p.read_bytes()
    except FileNotFoundError:
        return None
    doc, _ = wp.parse(payload)
    return doc, payload


def trust_list(root: str | os.PathLike) -> tl.ArchiveKeys | None:
    """The archive trust list of ``root``: every revoked receiver key to revoke, every enrolled
    receiver key (and ``next.pub`` during a root key rotation) to pin, endorsed by the root key
    ``_archive/archive.key``; None when there is nothing to say. Without the root's private key
    here, only revocations (which need no endorsement)."""
    from . import receivers

    base = Path(root).resolve() / "_archive"
    revoke = []
    for p in sorted((base / receivers.REVOKED).glob("*.pub")) if (base / receivers.REVOKED).is_dir() else []:
        revoke.append(tl.entry(p.stem.rpartition("-")[0] or "archive", keys.load_public(p)))
    pins = [("archive", keys.load_public(base / "next.pub"))] if (base / "next.pub").is_file() else []
    pins += sorted(receivers.enrolled(root).items())
    endorser = keys.load_private(base / "archive.key") if (base / "archive.key").is_file() else None
    pin = [tl.entry(rid, pub, endorser=endorser) for rid, pub in pins] if endorser is not None else []
    if not revoke and not pin:
        return None
    return tl.ArchiveKeys(revoke=revoke, pin=pin)


def content_of(doc: wp.Document) -> wp.Content:
    """The content (rules, roster, assignments) of a published document, without its trust list:
    what ``archive policy publish`` without ``--file`` signs again."""
    return wp.Content.model_validate({k: getattr(doc, k) for k in ("rules", "units", "officers", "assignments")})


def read_content(path: Path) -> wp.Content:
    """policy.toml or policy.json: the rules, units, officers and assignments."""
    from agent import config as config_mod

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeError(f"{path}: 文件不存在 / no such file") from None
    except UnicodeDecodeError:
        raise EdgeError(f"{path}: 不是 UTF-8 文本 / not UTF-8 text") from None
    if path.suffix == ".json":
        try:
            raw = json.loads(text, object_pairs_hook=wp._no_duplicates, parse_float=wp._no_floats)
        except ValueError as exc:
            raise EdgeError(f"{path}: 不是有效的 JSON / invalid JSON: {exc}") from None
    elif path.suffix == ".toml":
        raw = config_mod.parse_toml(text, path)
    else:
        raise EdgeError(f"{path}: 需要 .toml 或 .json 文件 / give a .toml or .json file")
    if isinstance(raw, dict) and "archive_keys" in raw:
        raise EdgeError(f"{path}: archive_keys 由存档根目录的接收端生成，不写在文件里 / archive_keys comes from the "
                        "archive root's receivers (`archive receiver add|revoke`), not from the policy file")
    return wp.content_from(raw, str(path))


def sign_next(root: str | os.PathLike, unit: str, content: wp.Content, *, version: int | None = None,
              expires_days: int = wp.DEFAULT_EXPIRES_DAYS, now: float | None = None) -> tuple[wp.Document, bytes]:
    """Sign ``content`` for ``unit`` as the next version (or ``version``, which must be above the
    last), with the root's archive trust list (:func:`trust_list`), and keep it as the unit's last
    published document."""
    key = signing_key(root)
    content = content.model_copy(update={"archive_keys": trust_list(root)})
    last = last_published(root, unit)
    floor = last[0].version if last else 0
    if version is None:
        version = floor + 1
    elif version <= floor:
        raise EdgeError(f"版本必须递增 / version {version} is not above version {floor} already signed for unit "
                        f"{unit}: versions never go back")
    payload = wp.sign(key, unit, version, content, now=time.time() if now is None else now,
                      expires_days=expires_days)
    p = _published_path(root, unit)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(p, payload, mode=0o644)
    return wp.parse(payload)[0], payload


def publish_settings(settings: ConnSettings) -> ConnSettings:
    """The settings :func:`publish` logs in with: ``NAME.policy`` for the user name ``NAME``."""
    import dataclasses

    from agent.wire.broker_auth import POLICY
    from agent.wire.client import instance_user

    return dataclasses.replace(settings, username=instance_user(settings.username, POLICY)) if settings.username \
        else settings


def publish_lock_path(root: str | os.PathLike) -> Path:
    """The lock file that makes the publishes from one root take turns (sign, publish, record)."""
    d = policy_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    return d / "publish.lock"


def publish(settings: ConnSettings, topic: str, payload: bytes, timeout: float = 10.0) -> None:
    """Publish ``payload`` retained (QoS 1) and wait for the broker's PUBACK; EdgeError if the
    broker cannot be reached or refuses it. With a user name it logs in as ``NAME.policy``
    (`archive broker-config` gives every archive login one): the broker keeps one session per
    login, and ``NAME`` may be the running receiver's, which a login of its own would end."""
    settings = publish_settings(settings)
    conn = Connection(settings, name="policy-publish")
    conn.start()
    try:
        if not conn.wait_connected(timeout):
            hint = (f" — 登录名 {settings.username} 由 `archive broker-config` 生成 / the login {settings.username} "
                    "is made by `archive broker-config` (run it again and reload the broker)"
                    if settings.username and "authori" in str(conn.last_error or "").lower() else "")
            raise EdgeError(f"无法连接代理 / cannot reach the broker at {settings.host}:{settings.port}: "
                            f"{conn.last_error or 'no connection'}{hint}")
        h = conn.publish(topic, payload, qos=1, retain=True, timeout=timeout)
        if not h.wait(timeout):
            raise EdgeError(f"代理未确认 / the broker did not acknowledge the policy within {timeout:g} s")
        if not h.ok:
            raise EdgeError(f"代理拒绝了策略 / the broker refused the policy on {topic}: "
                            f"{h.error or hex(h.reason or 0)}")
    finally:
        conn.stop(timeout=2.0)
