"""The simulated devices of tools/fleet_sim.py: their payloads, keys, enrolment and fleets.

A simulated device's Ed25519 key is derived from its id (SHA-256 of "fleet-sim:" + id): the
simulator, a test and a benchmark can all sign for the same device without sharing files. Never
a way to make a real device's key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.evidence import keys as keys_mod
from agent.wire.envelope import Sealer

try:  # the simulator must cost little next to the monitor it loads
    import orjson

    _dumps = orjson.dumps
except ImportError:  # pragma: no cover
    def _dumps(obj) -> bytes:
        return json.dumps(obj, ensure_ascii=False).encode()

MAX_DEVICES = 5000
MAX_DURATION = 3600.0
ALARMS = [("camera_offline", "camera-main", "主摄像头离线", "main camera offline", "critical"),
          ("recorder_battery_low", "bay-2", "2号仓记录仪电量低", "recorder in bay 2: battery low", "warning"),
          ("backlog_old", None, "最早未归档资料已超过 24 小时", "oldest unarchived item older than 24 h", "warning")]


def iso(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return dt.datetime.fromtimestamp(t).astimezone().replace(microsecond=0).isoformat()


@dataclass
class SimDevice:
    id: str
    unit_code: str
    unit_name: str
    kind: str
    bdseq: int = 0
    seq: int = 0
    started: float = field(default_factory=time.time)
    items: int = 0
    recorded_s: int = 0
    alarm: tuple | None = None
    _sealer: Sealer | None = field(default=None, repr=False)

    @property
    def key(self) -> Ed25519PrivateKey:
        """The simulated device's key: derived from its id (simulator only)."""
        return sim_key(self.id)

    def seal(self, topic: str, body: dict | bytes, ts: str | None = None) -> bytes:
        """``body`` in the signed envelope an agent would publish on ``topic`` (signed for ``ts``)."""
        if self._sealer is None:  # epoch in microseconds: a new simulator for the same id starts above
            self._sealer = Sealer(self.key, self.id, time.time_ns() // 1000)
        return self._sealer.seal(topic, body, ts)

    def status(self, state: str) -> dict:
        return {"state": state, "bdseq": self.bdseq, "device": self.id, "kind": self.kind, "unit_code": self.unit_code,
                "unit_name": self.unit_name, "version": "0.1.0-sim", "ts": iso()}

    def components(self) -> dict[str, str]:
        if self.kind == "room":
            return {"room": "ok", "camera-main": "ok", "camera-pano": "ok", "microphone": "ok", "sensor": "ok",
                    "uplink": "ok"}
        return {"dock": "ok", "bay-1": "ok", "bay-2": "ok", "bay-3": "ok", "uplink": "ok"}

    def health(self, at: float | None = None) -> dict:
        """The next health report, as of now or of the Unix time ``at`` (sealed ahead)."""
        at = time.time() if at is None else at
        self.seq += 1
        if random.random() < 0.2:
            self.items += 1
            self.recorded_s += 600 if self.kind == "room" else 300
        pending = self.items - int(self.items * 0.8)
        comps = {n: {"state": s} for n, s in self.components().items()}
        if self.alarm and self.alarm[0] == "camera_offline":
            comps["camera-main"] = {"state": "offline"}
        return {
            "v": 1, "device": self.id, "unit_code": self.unit_code, "unit_name": self.unit_name, "kind": self.kind,
            "version": "0.1.0-sim", "ts": iso(at), "seq": self.seq, "uptime_s": max(0, int(at - self.started)),
            "cpu_percent": round(random.uniform(1, 30), 1), "load1": 0.3,
            "memory": {"total_bytes": 4 << 30, "used_percent": 41.5, "rss_bytes": 80 << 20},
            "disk": {"free_bytes": 800 << 30, "total_bytes": 1 << 40, "reserve_bytes": 1 << 30, "low": False},
            "buffer": {"items": pending, "bytes": pending * (300 << 20), "oldest_age_s": 120 if pending else None,
                       "pending_annotation": pending // 2, "oldest_pending_annotation_age_s": 600 if pending // 2 else None},
            "usage": {"items_total": self.items, "items_archived": self.items - pending, "recorded_s": self.recorded_s},
            "uplink": {"connected": True, "reconnects": 0, "errors": 0, "bytes_sent": self.items * (300 << 20),
                       "bytes_per_s": 1200.0, "archive_reachable": True, "last_error": None},
            "clock": {"synchronized": True, "source": "adjtimex", "offset_ms": 3, "max_error_ms": 12},
            "components": comps,
            "alarms": [self.alarm_key()] if self.alarm else [],
        }

    def alarm_key(self) -> str:
        code, inst = self.alarm[0], self.alarm[1]
        return f"{code}.{inst}" if inst else code

    def alarm_payload(self, active: bool, since: str) -> dict:
        code, inst, zh, en, sev = self.alarm
        out = {"code": code, "key": self.alarm_key(), "active": active, "severity": sev, "since": since, "ts": iso(),
               "message": {"zh": zh, "en": en}, "source": "sim", "device": self.id, "unit_code": self.unit_code}
        if not active:
            out["cleared"] = iso()
        return out

    def ratio(self, officers: int, recorders: int) -> dict:
        """What agent/dock/station.py publishes on P/dev/D/ratio."""
        pct = recorders * 100 // officers if officers else None
        return {"device": self.id, "at": iso(), "min_ratio_pct": 20, "usage_days": 30, "pending": [],
                "units": [{"unit_code": self.unit_code, "unit_name": self.unit_name, "officers": officers,
                           "recorders_in_service": recorders, "ratio_pct": pct, "min_ratio_pct": 20,
                           "meets_minimum": officers == 0 or recorders * 100 >= 20 * officers,
                           "recorders_registered": recorders, "recorders_used": recorders, "usage_pct": 100,
                           "usage_days": 30, "conflicts": 0}]}


def sim_key(device: str) -> Ed25519PrivateKey:
    """The key of a simulated device (derived from its id: never for a real device)."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"fleet-sim:{device}".encode()).digest())


def enrol(root, devices: list[SimDevice]) -> int:
    """Enrol ``devices`` (their simulator keys and units) in the archive root ``root`` (created if
    missing), as `edge-agent archive enroll` would, in one transaction. Returns how many."""
    from agent.archive.storage import ArchiveStore

    store = ArchiveStore(root, create=True)
    try:
        with store.db.atomic():
            for d in devices:
                store.registry.enroll(d.id, keys_mod.public_pem(d.key.public_key()), d.unit_code, force=True,
                                      actor="fleet-sim")
    finally:
        store.db.close()
    return len(devices)


def make_fleet(n: int, units: int, prefix_id: str = "sim", unit_prefix: str = "3301") -> list[SimDevice]:
    if not 1 <= n <= MAX_DEVICES:
        raise ValueError(f"--devices {n}: 1..{MAX_DEVICES}")
    units = max(1, min(units, n))
    fleet = []
    for i in range(n):
        u = i % units
        idx = i // units
        # one room per unit except the last unit (shown non-compliant); the rest are docks
        kind = "room" if idx == 0 and (u < units - 1 or units == 1) else "dock"
        fleet.append(SimDevice(id=f"{prefix_id}-{u:03d}-{idx:04d}", unit_code=f"{unit_prefix}{u:04d}",
                               unit_name=f"模拟执法单位{u + 1}", kind=kind))
    return fleet
