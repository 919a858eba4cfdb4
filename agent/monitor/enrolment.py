"""The monitor's read-only view of the enrolled devices: device id -> unit and Ed25519 public key.

The monitor shows as a device's state only what that device signed with the key it is enrolled
with, and takes the device's unit from the enrolment, never from a message. The rows come from
a loader (the CLI passes one that reads the archive root's enrolment read-only,
agent/archive/registry.py ``read_enrolment``); :meth:`Enrolment.reload` is called every few
seconds by the monitor so a device enrolled later is accepted without a restart. Keys are parsed
once per (device, key id).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable

from agent.common.errors import EdgeError
from agent.evidence import keys

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Enrolled:
    device: str
    unit: str
    key_id: str
    public: object  # Ed25519PublicKey
    raw: bytes = b""  # its 32 bytes (what the signature check takes: agent/evidence/keys.py verify_raw)


class Enrolment:
    """Enrolled devices by id. ``loader()`` returns rows {id, unit, pubkey (PEM)}."""

    def __init__(self, loader: Callable[[], Iterable[dict]] | None = None, *, source: str = ""):
        self.loader = loader
        self.source = source
        self.devices: dict[str, Enrolled] = {}
        self.errors = 0
        self.last_error: str | None = None
        if loader is not None:
            self.reload()

    @classmethod
    def of(cls, entries: Iterable[tuple[str, str, object]]) -> "Enrolment":
        """From (device, unit, public key) triples (tests, benchmarks)."""
        e = cls(source="memory")
        e.devices = {d: Enrolled(d, u, keys.key_id(p), p, keys.public_raw(p)) for d, u, p in entries}
        return e

    def reload(self) -> int:
        """Read the rows again; returns how many devices are enrolled. A failing loader keeps the
        previous view (counted in ``errors``)."""
        if self.loader is None:
            return len(self.devices)
        try:
            rows = list(self.loader())
        except (EdgeError, OSError) as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.warning("enrolment %s unreadable, keeping the previous view: %s", self.source, exc)
            return len(self.devices)
        old, new = self.devices, {}
        for r in rows:
            dev, unit, kid = r.get("id"), r.get("unit"), r.get("key_id")
            cur = old.get(dev)
            if cur is not None and cur.key_id == kid and cur.unit == unit:
                new[dev] = cur
                continue
            try:
                pub = keys.parse_public(str(r.get("pubkey", "")).encode(), f"enrolled key of {dev}")
            except EdgeError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.warning("%s", exc)
                continue
            new[dev] = Enrolled(dev, unit, keys.key_id(pub), pub, keys.public_raw(pub))
        self.devices = new  # one reference swap: readers see the old or the new view
        return len(new)

    def get(self, device: str) -> Enrolled | None:
        return self.devices.get(device)

    def __len__(self) -> int:
        return len(self.devices)
