"""The monitor's subscriber: ``P/dev/#`` in, validated state out.

Every message is checked before it touches state (agent/health/payloads.py parsers). What is
refused is counted by reason in the ``counters`` table and logged (the first few of each reason,
then one line per 1,000), never raised: malformed or oversized payloads, unknown topics, a device
claiming another unit than the one it registered with (first unit seen pins it), retained garbage,
and floods (a per-device token bucket). State changes are applied in memory and flushed in one
SQLite transaction every ``flush_s`` by a separate thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.wire import health as pl
from agent.wire.topics import Topics
from .state import MonitorDB

log = logging.getLogger(__name__)

RATE_PER_DEVICE = 20.0     # messages per second a device may send on average
BURST_PER_DEVICE = 100.0   # ... and in a burst
MAX_DEVICES = 100_000      # distinct device ids kept (beyond: refused, counted)


@dataclass
class _Bucket:
    tokens: float
    t: float


@dataclass
class IngestSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    client_id: str = ""
    username: str = ""
    password: str = ""
    tls: bool = False
    cafile: str = ""
    certfile: str = ""
    keyfile: str = ""
    keepalive: int = 30
    flush_s: float = 1.0
    rate: float = RATE_PER_DEVICE
    burst: float = BURST_PER_DEVICE


class Ingest:
    def __init__(self, db: MonitorDB, settings: IngestSettings):
        self.db = db
        self.s = settings
        self.topics = Topics(settings.prefix)
        self.lock = threading.Lock()
        self.devices: dict[str, dict] = {}
        self.dirty: set[str] = set()
        self.alarms: dict[tuple[str, str], dict] = {}
        self.alarm_rows: dict[tuple[str, str], dict] = {}
        self.events: list[tuple] = []
        self.ratio: list[dict] = []
        self.usage: dict[tuple[str, str], dict] = {}
        self.counters: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._logged: dict[str, int] = {}
        self._last_ratio: dict[str, tuple] = {}
        self._day_cache: tuple[int, str] = (0, "")
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.client = None
        self.connected = False
        self.subscribed = threading.Event()  # set once the first subscription is acknowledged
        self._load()

    # --- persistence ------------------------------------------------------------------------------
    def _load(self) -> None:
        c = self.db.conn
        for r in c.execute("SELECT * FROM devices"):
            d = dict(r)
            d["components"] = json.loads(d["components"] or "{}")
            self.devices[d["id"]] = d
        for r in c.execute("SELECT device, key, active FROM alarms"):
            self.alarms[(r["device"], r["key"])] = {"active": bool(r["active"])}
        for r in c.execute("SELECT * FROM ratio_reports ORDER BY device, unit_code"):
            self._last_ratio.setdefault(r["device"], []).append((r["unit_code"], r["recorders"], r["officers"], r["serials"]))
        self._last_ratio = {k: tuple(v) for k, v in self._last_ratio.items()}
        self.counters = {r["name"]: r["value"] for r in c.execute("SELECT * FROM counters") if not r["name"].startswith("_")}

    def flush(self) -> None:
        with self.lock:
            # shallow copies: component entries and health dicts are replaced, never mutated, by ingest
            rows = [dict(self.devices[d], components=dict(self.devices[d]["components"])) for d in self.dirty]
            self.dirty = set()
            alarm_rows, self.alarm_rows = list(self.alarm_rows.values()), {}
            events, self.events = self.events, []
            ratio, self.ratio = self.ratio, []
            usage, self.usage = list(self.usage.values()), {}
            counters = dict(self.counters)
        counters["_flushed_at_ms"] = int(time.time() * 1000)  # when these counts were true (benchmarks)
        with self.db.atomic() as c:
            c.executemany(
                "INSERT INTO devices(id, unit_code, unit_name, kind, version, state, bdseq, first_seen, last_seen, "
                "status_ts, health, health_ts, components, unit_conflicts, last_conflict) "
                "VALUES (:id, :unit_code, :unit_name, :kind, :version, :state, :bdseq, :first_seen, :last_seen, "
                ":status_ts, :health, :health_ts, :components, :unit_conflicts, :last_conflict) "
                "ON CONFLICT(id) DO UPDATE SET unit_code=excluded.unit_code, unit_name=excluded.unit_name, "
                "kind=excluded.kind, version=excluded.version, state=excluded.state, bdseq=excluded.bdseq, "
                "last_seen=excluded.last_seen, status_ts=excluded.status_ts, health=excluded.health, "
                "health_ts=excluded.health_ts, components=excluded.components, "
                "unit_conflicts=excluded.unit_conflicts, last_conflict=excluded.last_conflict",
                [dict(r, components=json.dumps(r["components"], ensure_ascii=False),
                      health=r["health"] if r["health"] is None or isinstance(r["health"], str)
                      else json.dumps(r["health"], ensure_ascii=False)) for r in rows])
            c.executemany(
                "INSERT INTO alarms VALUES (:device, :key, :code, :unit_code, :severity, :active, :since, :cleared, "
                ":ts, :message_zh, :message_en, :source, :updated) ON CONFLICT(device, key) DO UPDATE SET "
                "code=excluded.code, unit_code=excluded.unit_code, severity=excluded.severity, active=excluded.active, "
                "since=excluded.since, cleared=excluded.cleared, ts=excluded.ts, message_zh=excluded.message_zh, "
                "message_en=excluded.message_en, source=excluded.source, updated=excluded.updated", alarm_rows)
            c.executemany("INSERT INTO alarm_events(device, unit_code, key, code, severity, event, ts, received) "
                          "VALUES (?,?,?,?,?,?,?,?)", events)
            for rep in ratio:  # a report replaces everything the station said before
                c.execute("DELETE FROM ratio_reports WHERE device = ?", [rep["device"]])
                for r in rep["rows"]:
                    c.execute("INSERT INTO ratio_reports VALUES (:device, :unit_code, :unit_name, :recorders, :officers, "
                              ":serials, :at, :received)", r)
                    c.execute("INSERT INTO ratio_history(device, unit_code, recorders, officers, serials, received) "
                              "VALUES (:device, :unit_code, :recorders, :officers, :serials, :received)", r)
            c.executemany(
                "INSERT INTO usage_daily VALUES (:device, :day, :unit_code, :kind, :items_total0, :items_archived0, "
                ":recorded_s0, :items_total, :items_archived, :recorded_s, :pending_annotation, :samples) "
                "ON CONFLICT(device, day) DO UPDATE SET items_total=excluded.items_total, "
                "items_archived=excluded.items_archived, recorded_s=excluded.recorded_s, "
                "pending_annotation=excluded.pending_annotation, samples=usage_daily.samples + excluded.samples", usage)
            c.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                          list(counters.items()))

    # --- accounting -------------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def reject(self, reason: str, topic: str, detail: str) -> None:
        self.count(f"rejected.{reason}")
        n = self._logged.get(reason, 0) + 1
        self._logged[reason] = n
        if n <= 5 or n % 1000 == 0:
            log.warning("rejected (%s, #%d): %s: %s", reason, n, topic[:200], detail[:200])

    def _allow(self, key: str, now: float) -> bool:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > MAX_DEVICES:
                return False
            b = self._buckets[key] = _Bucket(self.s.burst, now)
        if now > b.t:  # a clock stepping back never makes a device look like a flood
            b.tokens = min(self.s.burst, b.tokens + (now - b.t) * self.s.rate)
            b.t = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True

    # --- messages ---------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, retained: bool = False, now: float | None = None) -> str:
        """Apply one message; returns "accepted", "ignored" or the rejection reason. Never raises."""
        now = now or time.time()
        with self.lock:
            self.count("received")
            try:
                return self._handle(topic, payload, retained, now)
            except pl.PayloadError as exc:
                self.reject("invalid", topic, str(exc))
                return "invalid"
            except Exception as exc:  # defensive: a bug must not stop ingest
                log.exception("unexpected error on %s", topic[:200])
                self.reject("error", topic, repr(exc))
                return "error"

    def _handle(self, topic: str, payload: bytes, retained: bool, now: float) -> str:
        parsed = self.topics.parse_dev(topic)
        if parsed is None:
            self.reject("bad_topic", topic, "not a device topic")
            return "bad_topic"
        dev, kind, name = parsed
        if kind in ("cmd", "chain"):
            self.count("ignored")
            return "ignored"
        if not self._allow(dev, now):
            self.reject("flood", topic, f"more than {self.s.rate:g} msg/s from {dev}")
            return "flood"
        if len(payload) > pl.MAX_PAYLOAD:
            self.reject("oversized", topic, f"{len(payload)} bytes")
            return "oversized"
        if dev not in self.devices and len(self.devices) >= MAX_DEVICES:
            self.reject("too_many_devices", topic, dev)
            return "too_many_devices"
        if kind == "alarm" and payload == b"":
            return self._alarm_gone(dev, name, now)
        if payload == b"":
            self.count("ignored")
            return "ignored"
        if kind == "status":
            return self._status(dev, pl.parse_status(payload), retained, now, topic)
        if kind == "health":
            return self._health(dev, pl.parse_health(payload), retained, now, topic)
        if kind == "alarm":
            return self._alarm(dev, pl.parse_alarm(payload, name), retained, now, topic)
        if kind == "component":
            return self._component(dev, pl.parse_component(payload, name), retained, now, topic)
        if kind == "ratio":
            return self._ratio(dev, pl.parse_ratio(payload, dev), retained, now, topic)
        self.count("ignored")
        return "ignored"

    def _device(self, dev: str, now: float) -> dict:
        d = self.devices.get(dev)
        if d is None:
            d = self.devices[dev] = {
                "id": dev, "unit_code": None, "unit_name": None, "kind": None, "version": None, "state": "unknown",
                "bdseq": None, "first_seen": now, "last_seen": now, "status_ts": None, "health": None,
                "health_ts": None, "components": {}, "unit_conflicts": 0, "last_conflict": None}
            self.count("devices_new")
        return d

    def _day(self, now: float) -> str:
        sec = int(now)
        if sec != self._day_cache[0]:
            self._day_cache = (sec, time.strftime("%Y-%m-%d", time.localtime(sec)))
        return self._day_cache[1]

    def _unit_ok(self, d: dict, unit: str | None, unit_name: str | None, topic: str) -> bool:
        if not unit:
            return True
        if d["unit_code"] is None:
            d["unit_code"] = unit
            if unit_name:
                d["unit_name"] = unit_name
            return True
        if d["unit_code"] == unit:
            if unit_name and not d["unit_name"]:
                d["unit_name"] = unit_name
            return True
        d["unit_conflicts"] += 1
        d["last_conflict"] = unit
        self.dirty.add(d["id"])
        self.reject("unit_mismatch", topic, f"{d['id']} is registered with unit {d['unit_code']}, claims {unit}")
        return False

    def _seen(self, d: dict, retained: bool, now: float) -> None:
        if not retained:
            d["last_seen"] = now
        self.dirty.add(d["id"])
        self.count("accepted")

    def _status(self, dev: str, st: dict, retained: bool, now: float, topic: str) -> str:
        d = self._device(dev, now)
        if not self._unit_ok(d, st["unit_code"], st["unit_name"], topic):
            return "unit_mismatch"
        if st["state"] == "online":
            d.update(state="online", bdseq=st["bdseq"], status_ts=now)
            for k in ("kind", "version"):
                if st[k]:
                    d[k] = st[k]
        elif d["bdseq"] is None or st["bdseq"] >= d["bdseq"]:
            d.update(state="offline", bdseq=st["bdseq"], status_ts=now)
        else:
            self.count("stale_death")
            self.dirty.add(dev)
            return "stale_death"
        self._seen(d, retained, now)
        return "accepted"

    def _health(self, dev: str, h: dict, retained: bool, now: float, topic: str) -> str:
        if h["device"] != dev:
            self.reject("device_mismatch", topic, f"payload names {h['device']}")
            return "device_mismatch"
        d = self._device(dev, now)
        if not self._unit_ok(d, h["unit_code"], h["unit_name"], topic):
            return "unit_mismatch"
        if d["state"] != "online":
            d["state"] = "online"
        d["kind"] = h["kind"]
        if h["version"]:
            d["version"] = h["version"]
        d["health"] = h  # serialised at flush time, once per device and flush
        d["health_ts"] = now
        for name, state in h["components"].items():
            comp = d["components"].get(name)
            if comp is None or comp.get("state") != state:
                d["components"][name] = {"state": state, "ts": h["ts"]}
        day = self._day(now)
        u = self.usage.get((dev, day))
        if u is None:
            u = self.usage[(dev, day)] = {"device": dev, "day": day, "unit_code": d["unit_code"], "kind": h["kind"],
                                          "items_total0": h["items_total"], "items_archived0": h["items_archived"],
                                          "recorded_s0": h["recorded_s"], "samples": 0}
        u.update(items_total=h["items_total"], items_archived=h["items_archived"], recorded_s=h["recorded_s"],
                 pending_annotation=h["pending_annotation"])
        u["samples"] += 1
        self._seen(d, retained, now)
        return "accepted"

    def _alarm(self, dev: str, a: dict, retained: bool, now: float, topic: str) -> str:
        d = self._device(dev, now)
        if not self._unit_ok(d, a["unit_code"], None, topic):
            return "unit_mismatch"
        k = (dev, a["key"])
        prev = self.alarms.get(k)
        was_active = bool(prev and prev["active"])
        if a["active"] != was_active:
            self.events.append((dev, d["unit_code"], a["key"], a["code"], a["severity"],
                                "raised" if a["active"] else "cleared", a["ts"], now))
        self.alarms[k] = {"active": a["active"]}
        self.alarm_rows[k] = {"device": dev, "key": a["key"], "code": a["code"], "unit_code": d["unit_code"],
                              "severity": a["severity"], "active": int(a["active"]), "since": a["since"],
                              "cleared": a["cleared"], "ts": a["ts"], "message_zh": a["message_zh"],
                              "message_en": a["message_en"], "source": a["source"], "updated": now}
        self._seen(d, retained, now)
        return "accepted"

    def _alarm_gone(self, dev: str, key: str, now: float) -> str:
        """An empty retained payload deletes the alarm topic: treat as cleared."""
        k = (dev, key)
        prev = self.alarms.get(k)
        if prev and prev["active"]:
            code = key.split(".", 1)[0]
            self.events.append((dev, self.devices.get(dev, {}).get("unit_code"), key, code, None, "cleared", None, now))
            self.alarms[k] = {"active": False}
            self.alarm_rows[k] = {"device": dev, "key": key, "code": code,
                                  "unit_code": self.devices.get(dev, {}).get("unit_code"), "severity": "info",
                                  "active": 0, "since": None, "cleared": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "ts": None, "message_zh": "告警主题已删除", "message_en": "alarm topic deleted",
                                  "source": "monitor", "updated": now}
        self.count("accepted")
        return "accepted"

    def _component(self, dev: str, c: dict, retained: bool, now: float, topic: str) -> str:
        d = self._device(dev, now)
        detail = pl.jsonable(c["detail"])
        if len(json.dumps(detail, ensure_ascii=False)) > 4096:
            detail = {"note": "detail too large, omitted"}
        d["components"][c["name"]] = {"state": c["state"], "ts": c["ts"], "detail": detail,
                                      **({"label": c["label"]} if c["label"] else {}),
                                      **({"raw_state": c["raw_state"]} if c["raw_state"] != c["state"] else {})}
        if len(d["components"]) > 64:
            d["components"].pop(c["name"])
            self.reject("too_many_components", topic, dev)
            return "too_many_components"
        self._seen(d, retained, now)
        return "accepted"

    def _ratio(self, dev: str, r: dict, retained: bool, now: float, topic: str) -> str:
        d = self._device(dev, now)
        rows = []
        for u in r["units"]:
            serials = json.dumps(sorted(set(u["serials"]))) if u["serials"] is not None else None
            rows.append({"device": dev, "unit_code": u["unit_code"], "unit_name": u["unit_name"],
                         "recorders": u["recorders"], "officers": u["officers"], "serials": serials, "at": r["at"],
                         "received": now})
        sig = tuple((x["unit_code"], x["recorders"], x["officers"], x["serials"]) for x in
                    sorted(rows, key=lambda x: x["unit_code"]))
        if self._last_ratio.get(dev) != sig:  # a retained re-delivery adds no history
            self._last_ratio[dev] = sig
            self.ratio.append({"device": dev, "rows": rows})
        self._seen(d, retained, now)
        return "accepted"

    # --- running ----------------------------------------------------------------------------------
    def _flush_loop(self) -> None:
        while not self._stop.wait(self.s.flush_s):
            try:
                self.flush()
            except Exception:
                log.exception("monitor flush failed (will retry)")

    def start(self) -> None:
        from agent.wire.mqtt import ConnSettings, TlsConfig, new_client

        cid = self.s.client_id or f"edge-monitor-{int(time.time())}"
        tls = TlsConfig(self.s.cafile, self.s.certfile or None, self.s.keyfile or None) if self.s.tls else None
        c = new_client(ConnSettings(host=self.s.host, port=self.s.port, client_id=cid, keepalive=self.s.keepalive,
                                    username=self.s.username or None, password=self.s.password or None, tls=tls))
        self._flusher = threading.Thread(target=self._flush_loop, name="monitor-flush", daemon=True)
        self._flusher.start()
        c.reconnect_delay_set(1, 30)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c
        c.connect_async(self.s.host, self.s.port, keepalive=self.s.keepalive)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("monitor: broker refused the connection: %s", reason_code)
            return
        self.connected = True
        client.subscribe(self.topics.all_dev(), qos=1)
        log.info("monitor: connected to %s:%s, subscribed %s", self.s.host, self.s.port, self.topics.all_dev())

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if self._stop.is_set():
            log.info("monitor: disconnected (stopping)")
        else:
            log.warning("monitor: disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg) -> None:
        self.handle(msg.topic, msg.payload, bool(msg.retain))

    def stop(self) -> None:
        self._stop.set()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.flush()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"connected": self.connected, "devices": len(self.devices), **self.counters}
