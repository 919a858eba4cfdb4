"""The monitor's picture of each device (mixed into :class:`agent.monitor.ingest.Ingest`).

What a verified message changes (the device row, alarms and their events, components, the
equipment ratio, daily usage) is kept in memory and written to the monitor's SQLite in one
transaction by :meth:`DeviceState.flush`; :meth:`DeviceState._load` reads it back at start.
Every method here runs under the ingest's lock, on messages :class:`Ingest` already verified.
"""

from __future__ import annotations

import datetime as dt
import json
import time

from agent.wire import health as pl


try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - a dependency
    _orjson = None


def _dumps(obj) -> str:
    """JSON text of a device row's health or components (orjson: the flush's largest cost was
    json.dumps of every dirty device's health)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(obj).decode()
        except TypeError:  # an integer beyond 64 bits, or a type orjson does not know
            pass
    return json.dumps(obj, ensure_ascii=False)


def signed_at(ts: str | None, now: float) -> float | None:
    """A signed envelope's time as a Unix time, never after ``now`` (a device clock ahead of the
    monitor's does not make a message newer than its arrival)."""
    try:
        return min(now, dt.datetime.fromisoformat(ts).timestamp()) if ts else None
    except (TypeError, ValueError):
        return None


def _iso(t: float | None) -> str | None:
    return dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t is not None else None


class DeviceState:
    # --- persistence ------------------------------------------------------------------------------
    def _load(self) -> None:
        c = self.db
        for r in c.query("SELECT * FROM devices"):
            d = dict(r)
            d["components"] = json.loads(d["components"] or "{}")
            self.devices[d["id"]] = d
        for r in c.query("SELECT device, key, active FROM alarms"):
            self.alarms[(r["device"], r["key"])] = {"active": bool(r["active"])}
        for r in c.query("SELECT * FROM ratio_reports ORDER BY device, unit_code"):
            self._last_ratio.setdefault(r["device"], []).append((r["unit_code"], r["recorders"], r["officers"], r["serials"],
                                                                 r["min_ratio_pct"], r["min_rooms"], r["threshold_source"],
                                                                 r["policy_version"]))
        self._last_ratio = {k: tuple(v) for k, v in self._last_ratio.items()}
        self.counters = {r["name"]: r["value"] for r in c.query("SELECT * FROM counters") if not r["name"].startswith("_")}
        for r in c.query("SELECT topic, key_id, ord FROM signed_seen"):
            self.seen[r["topic"]] = (r["key_id"], tuple(json.loads(r["ord"])))
        for r in c.query("SELECT * FROM rejections"):
            self.rejections[(r["device"], r["reason"])] = [r["count"], r["last_at"], r["last_detail"]]

    def flush(self) -> None:
        with self.lock:
            # shallow copies: component entries and health dicts are replaced, never mutated, by ingest
            rows = [dict(self.devices[d], components=dict(self.devices[d]["components"])) for d in self.dirty]
            self.dirty = set()
            alarm_rows, self.alarm_rows = list(self.alarm_rows.values()), {}
            events, self.events = self.events, []
            changes, self.status_events = self.status_events, []
            ratio, self.ratio = self.ratio, []
            usage, self.usage = list(self.usage.values()), {}
            counters = dict(self.counters)
            seen = [(t, dev, *self.seen[t]) for t, dev in self._seen_dirty.items()]
            self._seen_dirty = {}
            rej = [(dev, reason, *self.rejections[(dev, reason)]) for dev, reason in self._rej_dirty]
            self._rej_dirty = set()
            cps, self.cp_rows = self.cp_rows, []
        with self._cv:
            for k, v in self._qcount.items():
                if v:
                    counters[k] = counters.get(k, 0) + v
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
                [dict(r, components=_dumps(r["components"]),
                      health=r["health"] if r["health"] is None or isinstance(r["health"], str)
                      else _dumps(r["health"])) for r in rows])
            c.executemany(
                "INSERT INTO alarms VALUES (:device, :key, :code, :unit_code, :severity, :active, :since, :cleared, "
                ":ts, :message_zh, :message_en, :source, :updated) ON CONFLICT(device, key) DO UPDATE SET "
                "code=excluded.code, unit_code=excluded.unit_code, severity=excluded.severity, active=excluded.active, "
                "since=excluded.since, cleared=excluded.cleared, ts=excluded.ts, message_zh=excluded.message_zh, "
                "message_en=excluded.message_en, source=excluded.source, updated=excluded.updated", alarm_rows)
            c.executemany("INSERT INTO alarm_events(device, unit_code, key, code, severity, event, ts, received) "
                          "VALUES (?,?,?,?,?,?,?,?)", events)
            c.executemany("INSERT INTO status_events(device, unit_code, kind, state, bdseq, source, ts, at, received) "
                          "VALUES (?,?,?,?,?,?,?,?,?)", changes)
            for rep in ratio:  # a report replaces everything the station said before
                c.execute("DELETE FROM ratio_reports WHERE device = ?", [rep["device"]])
                for r in rep["rows"]:
                    c.execute("INSERT INTO ratio_reports(device, unit_code, unit_name, recorders, officers, serials, at, "
                              "received, min_ratio_pct, min_rooms, threshold_source, policy_version, policy_key_id) "
                              "VALUES (:device, :unit_code, :unit_name, :recorders, :officers, :serials, :at, :received, "
                              ":min_ratio_pct, :min_rooms, :threshold_source, :policy_version, :policy_key_id)", r)
                    c.execute("INSERT INTO ratio_history(device, unit_code, recorders, officers, serials, received, "
                              "min_ratio_pct, min_rooms, threshold_source, policy_version, policy_key_id) VALUES "
                              "(:device, :unit_code, :recorders, :officers, :serials, :received, :min_ratio_pct, "
                              ":min_rooms, :threshold_source, :policy_version, :policy_key_id)", r)
            c.executemany(
                "INSERT INTO usage_daily VALUES (:device, :day, :unit_code, :kind, :items_total0, :items_archived0, "
                ":recorded_s0, :items_total, :items_archived, :recorded_s, :pending_annotation, :samples) "
                "ON CONFLICT(device, day) DO UPDATE SET items_total=excluded.items_total, "
                "items_archived=excluded.items_archived, recorded_s=excluded.recorded_s, "
                "pending_annotation=excluded.pending_annotation, samples=usage_daily.samples + excluded.samples", usage)
            c.executemany("INSERT INTO signed_seen VALUES (?, ?, ?, ?) ON CONFLICT(topic) DO UPDATE SET "
                          "device=excluded.device, key_id=excluded.key_id, ord=excluded.ord",
                          [(t, dev, kid, json.dumps(list(order))) for t, dev, kid, order in seen])
            c.executemany("INSERT INTO rejections VALUES (?, ?, ?, ?, ?) ON CONFLICT(device, reason) DO UPDATE SET "
                          "count=excluded.count, last_at=excluded.last_at, last_detail=excluded.last_detail", rej)
            self._flush_witness(c, cps)
            c.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
                          list(counters.items()))

    # --- applying verified messages ------------------------------------------------------------
    #: the signed time of the message being applied (set by Ingest._handle from the envelope's ts)
    _signed_at: float | None = None

    def _device(self, dev: str, now: float) -> dict:
        d = self.devices.get(dev)
        if d is None:
            # first known from a retained message (a monitor started after the fact): the device was
            # last heard when it signed that message, not when this monitor started
            at = min(now, self._signed_at or now)
            d = self.devices[dev] = {
                "id": dev, "unit_code": self.enrolment.get(dev).unit, "unit_name": None, "kind": None, "version": None, "state": "unknown",
                "bdseq": None, "first_seen": at, "last_seen": at, "status_ts": None, "health": None,
                "health_ts": None, "components": {}, "unit_conflicts": 0, "last_conflict": None}
            self.count("devices_new")
        return d

    def _day(self, now: float) -> str:
        sec = int(now)
        if sec != self._day_cache[0]:
            self._day_cache = (sec, time.strftime("%Y-%m-%d", time.localtime(sec)))
        return self._day_cache[1]

    def _unit_ok(self, d: dict, unit: str | None, unit_name: str | None, topic: str) -> bool:
        """The unit is the enrolled one; a signed message naming another unit (a device configured
        for a unit it is not enrolled for) is refused and shown as a unit conflict."""
        enrolled = self.enrolment.get(d["id"]).unit
        d["unit_code"] = enrolled  # an enrolment moved with `archive enroll --force` moves the device
        if not unit or unit == enrolled:
            if unit and unit_name and d["unit_name"] != unit_name:
                d["unit_name"] = unit_name
            return True
        d["unit_conflicts"] += 1
        d["last_conflict"] = unit
        self.dirty.add(d["id"])
        self.reject("unit_mismatch", topic, f"{d['id']} is enrolled for unit {enrolled}, claims {unit}", d["id"])
        return False

    def _seen(self, d: dict, retained: bool, now: float) -> None:
        if not retained:
            d["last_seen"] = now
        elif self._signed_at is not None and self._signed_at > d["last_seen"]:
            d["last_seen"] = self._signed_at  # retained: heard from when it signed the message
        self.dirty.add(d["id"])
        self.count("accepted")

    def _status(self, dev: str, st: dict, retained: bool, now: float, topic: str) -> str:
        d = self._device(dev, now)
        if not self._unit_ok(d, st["unit_code"], st["unit_name"], topic):
            return "unit_mismatch"
        # order (epoch, bdseq, online < offline) was checked by _handle: a stale death is "replayed"
        # since when online/offline: live, its arrival; retained (a monitor started later), when it was signed
        at = now if not retained else min(now, self._signed_at or now)
        if (d["state"], d["bdseq"]) != (st["state"], st["bdseq"]):  # a new state or a new birth: history
            self._prompt.set()  # shown within prompt_s, not at the next flush
            self.status_events.append((dev, d["unit_code"], st["kind"] or d["kind"], st["state"], st["bdseq"],
                                       "status", _iso(self._signed_at), at, now))
        d.update(state=st["state"], bdseq=st["bdseq"], status_ts=at)
        for k in ("kind", "version"):  # a death names them too: a monitor that sees only it still knows a room
            if st[k] and (st["state"] == "online" or d[k] is None):
                d[k] = st[k]
        self._seen(d, retained, now)
        return "accepted"

    def _health(self, dev: str, h: dict, retained: bool, now: float, topic: str) -> str:
        if h["device"] != dev:
            return self.reject("device_mismatch", topic, f"payload names {h['device']}", dev, now)
        d = self._device(dev, now)
        if not self._unit_ok(d, h["unit_code"], h["unit_name"], topic):
            return "unit_mismatch"
        if d["state"] != "online":  # alive without a birth seen (e.g. the monitor missed it): online from now
            self._prompt.set()  # shown within prompt_s, not at the next flush
            self.status_events.append((dev, d["unit_code"], h["kind"], "online", d["bdseq"], "health", h["ts"],
                                       now if not retained else min(now, self._signed_at or now), now))
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
            self._prompt.set()
            self.events.append((dev, d["unit_code"], a["key"], a["code"], a["severity"],
                                "raised" if a["active"] else "cleared", a["ts"], now))
        self.alarms[k] = {"active": a["active"]}
        self.alarm_rows[k] = {"device": dev, "key": a["key"], "code": a["code"], "unit_code": d["unit_code"],
                              "severity": a["severity"], "active": int(a["active"]), "since": a["since"],
                              "cleared": a["cleared"], "ts": a["ts"], "message_zh": a["message_zh"],
                              "message_en": a["message_en"], "source": a["source"], "updated": now}
        self._seen(d, retained, now)
        return "accepted"

    #: alarm keys of the archive's chain alarms (``archive.CODE``), source ``archive``
    ARCHIVE_KEY = "archive."

    def apply_archive_alarms(self, rows: list[dict], now: float) -> None:
        """Raise the archive's chain alarms given (device, unit, code, since, detail, severity,
        title 中文 / English) and clear those of ours no longer given."""
        at = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        with self.lock:
            want = {(r["device"], self.ARCHIVE_KEY + r["code"]): r for r in rows}
            for k, st in list(self.alarms.items()):
                if k[1].startswith(self.ARCHIVE_KEY) and st["active"] and k not in want:
                    dev = k[0]
                    unit = (self.devices.get(dev) or {}).get("unit_code")
                    self.alarms[k] = {"active": False}
                    self.events.append((dev, unit, k[1], k[1][len(self.ARCHIVE_KEY):], None, "cleared", at, now))
                    self.alarm_rows[k] = {"device": dev, "key": k[1], "code": k[1][len(self.ARCHIVE_KEY):],
                                          "unit_code": unit, "severity": "info", "active": 0, "since": None,
                                          "cleared": at, "ts": at, "message_zh": None, "message_en": None,
                                          "source": "archive", "updated": now}
            for k, r in want.items():
                zh, _, en = r["title"].partition(" / ")
                if not (self.alarms.get(k) or {}).get("active"):
                    self.events.append((r["device"], r["unit"], k[1], r["code"], r["severity"], "raised", r["since"], now))
                self.alarms[k] = {"active": True}
                self.alarm_rows[k] = {"device": r["device"], "key": k[1], "code": r["code"], "unit_code": r["unit"],
                                      "severity": r["severity"], "active": 1, "since": r["since"], "cleared": None,
                                      "ts": r["since"], "message_zh": f"{zh}：{r['detail']}",
                                      "message_en": f"{en or zh}: {r['detail']}", "source": "archive", "updated": now}

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
            if u["unit_code"] != d["unit_code"]:  # a station speaks for the unit it is enrolled for only
                self.count("ratio_rows_other_unit")
                continue
            serials = json.dumps(sorted(set(u["serials"]))) if u["serials"] is not None else None
            rows.append({"device": dev, "unit_code": u["unit_code"], "unit_name": u["unit_name"],
                         "recorders": u["recorders"], "officers": u["officers"], "serials": serials, "at": r["at"],
                         "received": now, "min_ratio_pct": r.get("min_ratio_pct"), "min_rooms": r.get("min_rooms"),
                         "threshold_source": r.get("threshold_source"), "policy_version": r.get("policy_version"),
                         "policy_key_id": r.get("policy_key_id")})
        sig = tuple((x["unit_code"], x["recorders"], x["officers"], x["serials"], x["min_ratio_pct"], x["min_rooms"],
                     x["threshold_source"], x["policy_version"]) for x in sorted(rows, key=lambda x: x["unit_code"]))
        if self._last_ratio.get(dev) != sig:  # a retained re-delivery adds no history
            self._last_ratio[dev] = sig
            self.ratio.append({"device": dev, "rows": rows})
        self._seen(d, retained, now)
        return "accepted"
