"""The archive trust list carried in the unit policy (``archive_keys`` of ``edge-policy/1``).

The centre's signed unit policy (agent/wire/policy.py) names the archive (receiver) keys the
stations must stop trusting and the ones they may pin, so that a revocation reaches every station
of the unit within seconds, without a visit (docs/security.md, "Receiver keys"):

- ``revoke``: ``{receiver, key_id, public}`` for every receiver key revoked at the centre. The raw
  public key (base64, 32 bytes) travels with its key id, so the revocation names exactly one key
  (a key id alone is 64 bits of a hash); a station moves it to ``DATA_DIR/keys/archive/revoked/``
  (:func:`revoke_key`), after which it never verifies, whatever else names it, and it is never
  pinned again (not by a later policy, not by ``uplink trust-archive``).
- ``pin``: ``{receiver, key_id, public, endorsed_by, endorsement}`` for every enrolled receiver
  key (and the archive's next root key during a rotation). A pin must also carry the
  *endorsement* of an archive key the station already trusts (the archive root key,
  ``ROOT/_archive/archive.key``): an Ed25519 signature over the RFC 8785 bytes of
  ``{"format": "edge-archive-key/1", "receiver", "key_id", "public"}``. The policy key alone
  can therefore revoke (which can only make a station trust less: items wait, nothing is freed)
  but never make a station accept receipts from a key the archive did not vouch for.

Revocation is sticky and wins: a key in both lists is refused when the policy is parsed, a key
revoked on a station is never pinned again, and a policy without a key that an earlier one
revoked does not un-revoke it.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agent.common.canon import canonical
from agent.common.fs import atomic_write, fsync_dir
from agent.evidence import keys

ENDORSEMENT_FORMAT = "edge-archive-key/1"
#: under a directory of pinned archive keys: the keys revoked on this device
REVOKED_DIR = "revoked"
_RID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_KID = r"^[0-9a-f]{16}$"


def archive_keys_dir(data_dir: str | Path) -> Path:
    """Where a device keeps its pinned archive keys (``revoked/`` beneath: the revoked ones)."""
    return Path(data_dir) / "keys" / "archive"


def _rid(v: str) -> str:
    if not _RID.match(v):
        raise ValueError("letters, digits, '_', '.', '-', 1-64 characters")
    return v


def raw_b64(pub: keys.Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return base64.b64encode(pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def _public(v: str) -> str:
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("base64 of a raw 32-byte Ed25519 public key") from None
    if len(raw) != 32:
        raise ValueError("base64 of a raw 32-byte Ed25519 public key")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ArchiveKey(_Model):
    """One archive key named by the policy; ``key_id`` must be the id of ``public``."""

    receiver: Annotated[str, Field(max_length=64), AfterValidator(_rid)] = Field(
        description="Receiver id (接收端编号) the key belongs to, or 'archive' for the root key.")
    key_id: Annotated[str, Field(pattern=_KID)] = Field(description="First 16 hex digits of SHA-256 of the raw key.")
    public: Annotated[str, Field(max_length=64), AfterValidator(_public)] = Field(
        description="The raw Ed25519 public key, base64 (32 bytes).")
    endorsed_by: Annotated[str, Field(pattern=_KID)] | None = Field(
        None, description="pin only: key id of the archive key that endorses this one.")
    endorsement: Annotated[str, Field(max_length=100)] | None = Field(
        None, description="pin only: that key's Ed25519 signature (base64) over the endorsement body.")

    @model_validator(mode="after")
    def _same_key(self) -> "ArchiveKey":
        if keys.key_id(self.key()) != self.key_id:
            raise ValueError(f"key_id {self.key_id} is not the id of the public key given "
                             f"({keys.key_id(self.key())}): the entry is ambiguous")
        return self

    def key(self) -> keys.Ed25519PublicKey:
        return keys.Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public))

    def body(self) -> bytes:
        """What an endorsement signs."""
        return canonical({"format": ENDORSEMENT_FORMAT, "receiver": self.receiver, "key_id": self.key_id,
                          "public": self.public})


class ArchiveKeys(_Model):
    """``archive_keys`` of a unit policy: keys to revoke and (endorsed) keys to pin."""

    revoke: list[ArchiveKey] = Field(default_factory=list, max_length=10_000,
                                     description="Archive keys every station of the unit stops trusting for good.")
    pin: list[ArchiveKey] = Field(default_factory=list, max_length=1000,
                                  description="Archive keys stations pin, each endorsed by an archive key they trust.")

    @model_validator(mode="after")
    def _consistent(self) -> "ArchiveKeys":
        gone = {k.key_id for k in self.revoke}
        for i, k in enumerate(self.pin):
            if k.key_id in gone:
                raise ValueError(f"pin[{i}]: key {k.key_id} is also in revoke")
            if k.endorsed_by is None or k.endorsement is None:
                raise ValueError(f"pin[{i}] ({k.key_id}): no endorsement by an archive key")
        return self


def entry(receiver: str, pub: keys.Ed25519PublicKey, *, endorser=None) -> ArchiveKey:
    """The entry for ``pub``; with ``endorser`` (an archive private key) endorsed for a pin."""
    e = ArchiveKey(receiver=receiver, key_id=keys.key_id(pub), public=raw_b64(pub))
    if endorser is None:
        return e
    return e.model_copy(update={"endorsed_by": keys.key_id(endorser.public_key()),
                                "endorsement": keys.sign(endorser, e.body())})


def endorsement_ok(k: ArchiveKey, trusted: dict[str, keys.Ed25519PublicKey]) -> str | None:
    """None when ``k`` is endorsed by one of ``trusted`` (key id -> key, the station's pinned,
    unrevoked archive keys) other than itself; else why not."""
    if k.endorsed_by is None or k.endorsement is None:
        return "no endorsement"
    if k.endorsed_by == k.key_id:
        return "endorsed by itself"
    pub = trusted.get(k.endorsed_by)
    if pub is None:
        return f"endorsed by key {k.endorsed_by}, which this station does not trust"
    if not keys.verify_sig(pub, k.body(), k.endorsement):
        return f"the endorsement by key {k.endorsed_by} does not verify"
    return None


# --- the device's key directory ---------------------------------------------------------------------
def _pinned_files(d: Path, kid: str) -> list[Path]:
    out = []
    for f in sorted(d.glob("*.pub")) if d.is_dir() else []:
        try:
            if keys.key_id(keys.load_public(f)) == kid:
                out.append(f)
        except Exception:  # an unreadable file is the loader's error to report, not ours
            continue
    return out


def revoked_ids(d: Path) -> set[str]:
    r = d / REVOKED_DIR
    return {keys.key_id(keys.load_public(f)) for f in sorted(r.glob("*.pub"))} if r.is_dir() else set()


def revoke_key(d: Path, pub: keys.Ed25519PublicKey) -> bool:
    """Revoke ``pub`` in the key directory ``d``: kept in ``d/revoked/archive-KEYID.pub`` (so it is
    refused wherever else it is named and never pinned again), every pinned copy removed. True
    when something changed."""
    kid = keys.key_id(pub)
    rdir = d / REVOKED_DIR
    dest = rdir / f"archive-{kid}.pub"
    changed = False
    if kid not in revoked_ids(d):
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, keys.public_pem(pub), mode=0o644)
        fsync_dir(rdir)
        changed = True
    found = _pinned_files(d, kid)
    for f in found:
        f.unlink()
    if found:
        fsync_dir(d)
    return changed or bool(found)


def pin_key(d: Path, pub: keys.Ed25519PublicKey, name: str) -> Path | None:
    """Pin ``pub`` in ``d`` as ``NAME-KEYID.pub``; None when it is pinned already or revoked here."""
    kid = keys.key_id(pub)
    if kid in revoked_ids(d) or _pinned_files(d, kid):
        return None
    dest = d / f"{name}-{kid}.pub"
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, keys.public_pem(pub), mode=0o644)
    fsync_dir(d)
    return dest
