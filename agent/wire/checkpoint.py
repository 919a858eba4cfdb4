"""The signed chain checkpoint: the device's item count and head hash, published retained on
``P/dev/D/chain`` at start and after every sealed item.

The archive compares it with what it holds, so an item withheld or lost at the edge shows as
missing centrally before it is ever uploaded. The signature (device Ed25519 key, over the RFC 8785
bytes of everything but ``sig``) makes a forged or rolled-back checkpoint detectable.

``annotations`` is the number of annotations the device has signed, all its items together: the
archive keeps the latest checkpoint as ``ROOT/checkpoints/DEVICE.json`` and ``verify --chain
--checkpoints`` uses it to detect the removal of a device's last item (count, head) or of an
item's last annotation (the total drops), which the hash chains alone cannot show. Checkpoints of
agents before this field have none (``None``) and are checked for count and head only.
"""

from __future__ import annotations

import dataclasses
import json

from agent.common.errors import EdgeError
from agent.evidence import hashing, keys, strict
from agent.common.timeutil import now_iso

FORMAT = "edge-agent-checkpoint/1"
MAX_SIZE = 4096


class CheckpointError(EdgeError):
    """A checkpoint that is malformed or not signed by the enrolled key."""


@dataclasses.dataclass
class Checkpoint:
    device: str
    count: int
    head: str | None
    time: str
    key_id: str
    sig: str
    annotations: int | None = None

    def body(self) -> dict:
        body = {"format": FORMAT, "device": self.device, "count": self.count, "head": self.head,
                "time": self.time, "key_id": self.key_id}
        if self.annotations is not None:
            body["annotations"] = self.annotations
        return body


def make(store) -> bytes:
    """The current checkpoint of ``store``'s chain, signed, as the payload to publish."""
    count, head = store.head()
    pub = store.private_key.public_key()
    body = {"format": FORMAT, "device": store.cfg.device.id, "count": count, "head": head,
            "annotations": store.annotations_total(), "time": now_iso(), "key_id": keys.key_id(pub)}
    sig = keys.sign(store.private_key, hashing.canonical(body))
    return json.dumps({**body, "sig": sig}, ensure_ascii=False, sort_keys=True).encode()


def parse(payload: bytes, public=None, device: str | None = None) -> Checkpoint:
    """Parse and (with ``public``) verify a checkpoint; raises :class:`CheckpointError`."""
    d = strict.record(payload, "checkpoint", FORMAT,
                      ("format", "device", "count", "head", "annotations", "time", "key_id", "sig"),
                      CheckpointError, MAX_SIZE)
    ann = d.get("annotations")
    if ann is not None and (not isinstance(ann, int) or isinstance(ann, bool) or ann < 0):
        raise CheckpointError(f"checkpoint annotations {ann!r} is not a non-negative integer")
    count, head = d.get("count"), d.get("head")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise CheckpointError(f"checkpoint count {count!r} is not a non-negative integer")
    if not (head is None or isinstance(head, str)) or (count and not head):
        raise CheckpointError("checkpoint head missing")
    for k in ("device", "time", "key_id", "sig"):
        if not isinstance(d.get(k), str):
            raise CheckpointError(f"checkpoint field {k} missing")
    cp = Checkpoint(device=d["device"], count=count, head=head, time=d["time"], key_id=d["key_id"], sig=d["sig"],
                    annotations=ann)
    if device is not None and cp.device != device:
        raise CheckpointError(f"checkpoint names device {cp.device!r}, published under {device!r}")
    if public is not None:
        if keys.key_id(public) != cp.key_id or not keys.verify_sig(public, hashing.canonical(cp.body()), cp.sig):
            raise CheckpointError(f"checkpoint of {cp.device}: bad signature (not the enrolled key)")
    return cp
