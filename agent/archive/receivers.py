"""Receivers enrolled at the centre, each with its own signing key and broker identity.

A receiver id (also its MQTT user name and client id) is enrolled with ``archive receiver add
RID``: a new Ed25519 pair ``ROOT/_archive/receivers/RID.key`` / ``RID.pub`` (the private key is
moved to that receiver's host and given to ``archive serve --receiver-key``; or only a public key
made on that host is registered with ``--pub``). `archive broker-config` gives each enrolled
receiver a broker identity of its own (the archive's ACL block), `archive enroll --pin-to` pins
every enrolled, unrevoked receiver key on the device, and ``archive serve --client-id RID`` signs
every answer, receipt and status with RID's key.

Revocation (``archive receiver revoke RID``): the public key moves to
``ROOT/_archive/revoked/RID-KEYID.pub``, its private key (if here) is deleted, the next
broker-config drops the identity, a receiver started with it refuses to run, and no later
enrolment pins it. The next ``archive policy publish`` of each unit carries the revocation to its
stations (agent/archive/policy.py ``trust_list``); a device without the unit policy drops it with
``edge-agent uplink revoke-archive KEYID`` (docs/security.md, "Receiver keys"). Rotation is enrolment of a new receiver id, pinning
it, then revoking the old one.

The root key (``ROOT/_archive/archive.key``) still signs for a receiver that is not enrolled
(one receiver per root, as before).
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.common.errors import EdgeError
from agent.common.fs import atomic_write, fsync_dir
from agent.evidence import keys
from agent.wire.topics import safe_segment

from .paths import flock

RECEIVERS = "receivers"
REVOKED = "revoked"


def _dirs(root: str | os.PathLike) -> tuple[Path, Path, Path]:
    base = Path(root).resolve() / "_archive"
    if not base.is_dir():
        raise EdgeError(f"{base}: 不是存档根目录 / not an archive root (`archive serve` or `archive enroll` creates it)")
    return base, base / RECEIVERS, base / REVOKED


def check_rid(rid: str) -> str:
    if not isinstance(rid, str) or not safe_segment(rid) or len(rid) > 64:
        raise EdgeError(f"接收端编号不合法 / receiver id {rid!r}: 1-64 letters, digits, '_', '.', '-' "
                        "(it is the MQTT user name and client id)")
    return rid


def add(root: str | os.PathLike, rid: str, pub: Path | None = None) -> dict:
    """Enrol receiver ``rid``: a new key pair in ROOT/_archive/receivers/ (or only ``pub``)."""
    check_rid(rid)
    base, rdir, vdir = _dirs(root)
    rdir.mkdir(exist_ok=True)
    with flock(base / "key.lock"):
        if (rdir / f"{rid}.pub").exists():
            raise EdgeError(f"接收端已登记 / receiver {rid} is enrolled already; for a new key enrol a new id, "
                            f"pin it, then `archive receiver revoke {rid}`")
        if pub is not None:
            key = keys.load_public(Path(pub))
            atomic_write(rdir / f"{rid}.pub", keys.public_pem(key), mode=0o644)
            private = None
        else:
            key = keys.generate(rdir / f"{rid}.key", rdir / f"{rid}.pub").public_key()
            private = str(rdir / f"{rid}.key")
        kid = keys.key_id(key)
        if vdir.is_dir() and any(p.name.endswith(f"-{kid}.pub") for p in vdir.iterdir()):
            for ext in ("key", "pub"):
                (rdir / f"{rid}.{ext}").unlink(missing_ok=True)
            raise EdgeError(f"密钥 {kid} 已被吊销 / key {kid} was revoked: it cannot be enrolled again")
        fsync_dir(rdir)
    return {"receiver": rid, "key_id": kid, "public": str(rdir / f"{rid}.pub"), "private": private}


def listing(root: str | os.PathLike) -> list[dict]:
    """Every enrolled receiver and every revoked key, by receiver id."""
    _base, rdir, vdir = _dirs(root)
    out = []
    for p in sorted(rdir.glob("*.pub")) if rdir.is_dir() else []:
        out.append({"receiver": p.stem, "key_id": keys.key_id(keys.load_public(p)), "state": "enrolled",
                    "private_key_here": (rdir / f"{p.stem}.key").exists(), "public": str(p)})
    for p in sorted(vdir.glob("*.pub")) if vdir.is_dir() else []:
        rid, _, kid = p.stem.rpartition("-")
        out.append({"receiver": rid, "key_id": kid, "state": "revoked", "private_key_here": False,
                    "public": str(p)})
    return out


def enrolled(root: str | os.PathLike) -> dict[str, keys.Ed25519PublicKey]:
    """receiver id -> public key of every enrolled, unrevoked receiver (none for an old root)."""
    try:
        _base, rdir, _v = _dirs(root)
    except EdgeError:
        return {}
    return {p.stem: keys.load_public(p) for p in sorted(rdir.glob("*.pub"))} if rdir.is_dir() else {}


def revoked_ids(root: str | os.PathLike) -> set[str]:
    try:
        _base, _r, vdir = _dirs(root)
    except EdgeError:
        return set()
    return {p.stem.rpartition("-")[2] for p in vdir.glob("*.pub")} if vdir.is_dir() else set()


def revoke(root: str | os.PathLike, rid: str) -> dict:
    """Receiver ``rid`` signs nothing any more: its public key to revoked/, its private key
    (if here) deleted."""
    check_rid(rid)
    base, rdir, vdir = _dirs(root)
    with flock(base / "key.lock"):
        pub = rdir / f"{rid}.pub"
        if not pub.exists():
            raise EdgeError(f"没有该接收端 / no enrolled receiver {rid} (see `archive receiver list`)")
        kid = keys.key_id(keys.load_public(pub))
        vdir.mkdir(exist_ok=True)
        os.replace(pub, vdir / f"{rid}-{kid}.pub")
        (rdir / f"{rid}.key").unlink(missing_ok=True)
        fsync_dir(vdir)
        fsync_dir(rdir)
    return {"receiver": rid, "key_id": kid, "revoked": str(vdir / f"{rid}-{kid}.pub")}


def signing_key(root: str | os.PathLike, rid: str, key_path: Path | None = None):
    """The private key receiver ``rid`` signs with: ``key_path`` or ROOT/_archive/receivers/RID.key
    for an enrolled receiver (it must match the enrolled public key), None for a receiver that is
    not enrolled (the root key signs). A revoked receiver, or an enrolled one without its key
    here, is an error: it must not start."""
    pubs = enrolled(root)
    if rid not in pubs:
        gone = [r for r in listing(root) if r["receiver"] == rid and r["state"] == "revoked"] \
            if (Path(root) / "_archive").is_dir() else []
        if gone:
            raise EdgeError(f"接收端已吊销 / receiver {rid} was revoked (key {gone[0]['key_id']}): it must not "
                            "sign anything; enrol a new receiver id")
        if key_path is not None:
            raise EdgeError(f"接收端未登记 / receiver {rid} is not enrolled: `archive receiver add {rid}` first")
        return None
    _base, rdir, _v = _dirs(root)
    path = Path(key_path) if key_path is not None else rdir / f"{rid}.key"
    if not path.exists():
        raise EdgeError(f"接收端私钥不在此处 / receiver {rid}'s private key is not at {path}: "
                        "give --receiver-key PATH on this host")
    key = keys.load_private(path)
    if keys.key_id(key.public_key()) != keys.key_id(pubs[rid]):
        raise EdgeError(f"密钥与登记的不符 / {path} is not the key enrolled for receiver {rid} ({keys.key_id(pubs[rid])})")
    return key


def pin_all(root: str | os.PathLike, data_dir: Path) -> list[tuple[str, Path]]:
    """Pin every enrolled, unrevoked receiver key on a device (DATA_DIR/keys/archive/
    receiver-RID-KEYID.pub); (key id, file) of each."""
    out = []
    dest_dir = Path(data_dir) / "keys" / "archive"
    for rid, pub in enrolled(root).items():
        kid = keys.key_id(pub)
        dest = dest_dir / f"receiver-{rid}-{kid}.pub"
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, keys.public_pem(pub), mode=0o644)
        out.append((kid, dest))
    return out
