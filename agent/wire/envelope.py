"""The signed envelope of every device-state topic (docs/mqtt.md, "Signed device state").

:class:`Sealer` seals a body on the device; :func:`open_envelope` reads an envelope and
:func:`verify` checks its Ed25519 signature at the monitor. The schema is
``agent.wire.health.ENVELOPE_SCHEMA``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import threading
import time
from typing import Any

from agent.common.canon import canonical
from agent.common.timeutil import now_iso
from agent.evidence import keys
from .health import (_HEADER, _HEX16, _HEX64, _ID_RE, _ISO_RE, _MAX_COUNTER, _SIG_RE, _TOPIC_RE, ENVELOPE,
                     EPOCH_META, SIGNED_KINDS, PayloadError, UnsignedError)
from .health_parse import _orjson, loads


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by null (JSON has neither); nothing truncated."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def body_bytes(body: dict | bytes | str) -> bytes:
    """The exact bytes a body is sealed as (sorted keys, UTF-8, no NaN)."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    try:
        return json.dumps(body, ensure_ascii=False, sort_keys=True, allow_nan=False, default=str).encode()
    except ValueError:
        return json.dumps(_finite(body), ensure_ascii=False, sort_keys=True, allow_nan=False, default=str).encode()


class Sealer:
    """Seals the device-state messages of one device (the agent side).

    ``epoch`` must grow at every start of the agent (:meth:`for_ledger` keeps it in the ledger's
    meta and takes at least the current Unix time, so a wiped ledger still starts above every
    earlier epoch); ``seq`` counts from 1 within an epoch. Thread-safe.
    """

    def __init__(self, private_key, device: str, epoch: int):
        if not _ID_RE.match(device or ""):
            raise ValueError(f"device id {device!r} cannot be sealed for")
        if not 1 <= epoch <= _MAX_COUNTER:
            raise ValueError(f"epoch {epoch} out of range")
        self.key = private_key
        self.device = device
        self.epoch = epoch
        self.key_id = keys.key_id(private_key.public_key())
        self._n = 0
        self._lock = threading.Lock()

    @classmethod
    def for_ledger(cls, store) -> "Sealer":
        """A sealer with the store's device key and a fresh epoch (saved in the ledger's meta)."""
        prev = store.get_meta(EPOCH_META)
        try:
            prev_n = int(prev or 0)
        except ValueError:
            prev_n = 0
        epoch = max(prev_n + 1, int(time.time()))
        store.set_meta(EPOCH_META, str(epoch))
        return cls(store.private_key, store.cfg.device.id, epoch)

    def seal(self, topic: str, body: dict | bytes | str, ts: str | None = None) -> bytes:
        """The envelope to publish on ``topic`` (P/dev/DEVICE/KIND[/NAME]) carrying ``body``,
        signed now (``ts``: the time to sign it for instead, ISO 8601 with its zone; the fleet
        simulator seals ahead of publication for the time it is scheduled to go out)."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[1] != "dev" or parts[2] != self.device or parts[3] not in SIGNED_KINDS:
            raise ValueError(f"{topic}: not a device-state topic of {self.device}")
        data = body_bytes(body)
        with self._lock:
            self._n += 1
            n = self._n
        header = {"v": ENVELOPE, "device": self.device, "kind": parts[3], "topic": topic, "epoch": self.epoch,
                  "seq": n, "ts": ts or now_iso(), "key_id": self.key_id,
                  "body_sha256": hashlib.sha256(data).hexdigest()}
        sig = keys.sign(self.key, canonical(header))
        return json.dumps({**header, "body": data.decode(), "sig": sig}, ensure_ascii=False,
                          separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    device: str
    kind: str
    topic: str
    epoch: int
    seq: int
    ts: str
    key_id: str
    body_sha256: str
    body: bytes
    sig: str

    def header(self) -> dict:
        return {"v": ENVELOPE, "device": self.device, "kind": self.kind, "topic": self.topic, "epoch": self.epoch,
                "seq": self.seq, "ts": self.ts, "key_id": self.key_id, "body_sha256": self.body_sha256}

    def signed_bytes(self) -> bytes:
        """The RFC 8785 bytes of the header. Every header value is an integer or an ASCII string
        without characters JSON escapes (checked by :func:`open_envelope`), and for such values
        sorted compact JSON is exactly RFC 8785: orjson writes it ~10x faster than the general
        serialiser (tests/monitor/test_monitor_trust.py compares both)."""
        if _orjson is not None:
            return _orjson.dumps(self.header(), option=_orjson.OPT_SORT_KEYS)
        return canonical(self.header())


def _counter(d: dict, key: str) -> int:
    v = d.get(key)
    if type(v) is not int or not 1 <= v <= _MAX_COUNTER:
        raise PayloadError(f"envelope.{key}: expected an integer 1..2^53-1, got {str(v)[:40]!r}")
    return v


def open_envelope(payload: bytes) -> Envelope:
    """Parse a signed envelope (no signature check yet: :func:`verify`). Raises
    :class:`UnsignedError` when the payload is not an envelope at all, :class:`PayloadError`
    naming the field otherwise. Body bytes must hash to ``body_sha256``."""
    if not payload:
        raise UnsignedError("empty payload (not signed)")
    try:
        d = loads(payload)
    except PayloadError as exc:
        raise UnsignedError(str(exc)) from None
    if type(d) is not dict or "sig" not in d or "body" not in d:
        raise UnsignedError("not a signed envelope (no body and sig)")
    if len(d) != len(_HEADER) + 2 or not all(k in d for k in _HEADER):
        extra = sorted(set(map(str, d)) - set(_HEADER) - {"body", "sig"})[:3]
        raise PayloadError(f"envelope: fields {', '.join(_HEADER)}, body, sig required"
                           + (f"; unknown {extra}" if extra else ""))
    if d["v"] != ENVELOPE or type(d["v"]) is not int:
        raise PayloadError(f"envelope.v: expected {ENVELOPE}")
    device, kind, topic, ts = d["device"], d["kind"], d["topic"], d["ts"]
    if type(device) is not str or not _ID_RE.match(device):
        raise PayloadError("envelope.device: invalid")
    if kind not in SIGNED_KINDS:
        raise PayloadError("envelope.kind: invalid")
    if type(topic) is not str or not _TOPIC_RE.match(topic):
        raise PayloadError("envelope.topic: invalid")
    if type(ts) is not str or len(ts) > 40 or not _ISO_RE.match(ts):
        raise PayloadError("envelope.ts: invalid")
    kid, bh, sig, body = d["key_id"], d["body_sha256"], d["sig"], d["body"]
    if type(kid) is not str or not _HEX16.match(kid):
        raise PayloadError("envelope.key_id: expected 16 hex digits")
    if type(bh) is not str or not _HEX64.match(bh):
        raise PayloadError("envelope.body_sha256: expected 64 hex digits")
    if type(sig) is not str or not _SIG_RE.match(sig):
        raise PayloadError("envelope.sig: expected a base64 Ed25519 signature")
    if type(body) is not str:
        raise PayloadError("envelope.body: expected the message's JSON text")
    try:
        raw = body.encode()
    except UnicodeEncodeError:
        raise PayloadError("envelope.body: not encodable as UTF-8 (lone surrogate)") from None
    if hashlib.sha256(raw).hexdigest() != bh:
        raise PayloadError("envelope.body_sha256: does not match the body")
    return Envelope(device, kind, topic, _counter(d, "epoch"), _counter(d, "seq"), ts, kid, bh, raw, sig)


def verify(env: Envelope, public) -> bool:
    """Whether ``env`` is signed by ``public`` (an Ed25519 public key, or its 32 raw bytes:
    then through libsodium, agent/evidence/keys.py ``verify_raw``)."""
    if isinstance(public, bytes):
        return keys.verify_raw(public, env.signed_bytes(), env.sig)
    return keys.verify_sig(public, env.signed_bytes(), env.sig)
