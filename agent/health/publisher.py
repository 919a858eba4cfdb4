"""The health component: every ``health.interval_s`` it collects metrics, evaluates the alarms the
agent owns, publishes ``P/dev/D/health`` (QoS 0), the retained ``P/dev/D/component/NAME`` of each
component whose status changed, and keeps the alarm topics (agent/health/alarms.py).

Commands registered in ``agent.commands``:
  ``rebirth``  republish all retained state (status, components, alarms) and a health report now;
  ``health``   return the last health payload.

The uplink is reached only through its contract (``publish``/``rebirth``/``stats``); when the agent
runs without an uplink the component still evaluates alarms and keeps the last report.

It also implements the producers' ports (agent/common/ports.py): ``AlarmPort`` (``raise_alarm``,
``clear_alarm``: the alarm registry) and ``ReportPort`` (``component_state`` -> retained
``P/dev/D/component/NAME``, ``equipment_ratio`` -> retained ``P/dev/D/ratio``). The runtime hands
this component to the producer as both; the producer never publishes itself.

Every message is sealed with the device's Ed25519 key (agent/wire/envelope.py ``Sealer``: a signed
envelope bound to the topic, with an epoch that grows at every start and a sequence number).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import threading
import time

from agent.store import policy_rules
from agent.wire.topics import Topics
from . import metrics
from .alarms import AlarmRegistry
from agent.wire.envelope import Sealer
from agent.wire.health import jsonable, safe_key

log = logging.getLogger(__name__)

#: status keys that change every round by nature: a change in them alone does not republish
_VOLATILE = frozenset({"updated", "updated_ts", "ts", "time", "now", "uptime_s", "bytes_per_s", "bytes_sent"})


def _instance(text: str) -> str:
    """An alarm instance from officer and recorder ids (letters, digits, '_', '.', '-' only)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:100]


def _h(seconds: int) -> str:
    return f"{seconds // 3600} h" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds} s"


def _h_zh(seconds: int) -> str:
    return f"{seconds // 3600} 小时" if seconds >= 3600 and seconds % 3600 == 0 else f"{seconds} 秒"


class HealthComponent:
    name = "health"

    def __init__(self, agent):
        self.agent = agent
        self.hcfg = agent.cfg.health
        self.device = agent.cfg.device.id
        self.topics = Topics(agent.cfg.mqtt.topic_prefix)
        self.alarms = AlarmRegistry.for_store(agent.store, self._publish_alarm)
        self.started = time.monotonic()
        self.seq = 0
        self.last: dict | None = None
        self.last_ts: float | None = None
        self.errors = 0
        self._sealer: Sealer | None = None
        self._seal_lock = threading.Lock()
        self._published_components: dict[str, str] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: the time the policy's upload deadline is measured against (tests move it)
        self.clock = lambda: _dt.datetime.now().astimezone()
        agent.commands["rebirth"] = self.cmd_rebirth
        agent.commands["health"] = self.cmd_health

    # --- publishing through the uplink contract -------------------------------------------------
    def _publish(self, topic: str, payload: dict, *, qos: int = 1, retain: bool = False) -> bool:
        """Seal ``payload`` with the device key (agent/wire/envelope.py Sealer: the monitor shows
        only what the device signed) and hand it to the uplink."""
        up = self.agent.uplink
        if up is None:
            return False
        with self._seal_lock:
            if self._sealer is None:
                self._sealer = Sealer.for_ledger(self.agent.store)
        up.publish(topic, self._sealer.seal(topic, payload), qos=qos, retain=retain)
        return True

    def _publish_alarm(self, key: str, payload: dict) -> None:
        self._publish(self.topics.alarm(self.device, key), payload, qos=1, retain=True)

    # --- the producers' ports (agent/common/ports.py) -------------------------------------------
    def raise_alarm(self, code: str, message_zh: str, message_en: str, *, source: str,
                    instance: str | None = None) -> None:
        """AlarmPort: raise (or update) ``code[.instance]``; published retained by the registry."""
        self.alarms.raise_(code, message_zh, message_en, source=source, instance=instance)

    def clear_alarm(self, code: str, *, source: str, instance: str | None = None) -> None:
        """AlarmPort: clear ``code[.instance]`` if active (published retained ``active: false``)."""
        self.alarms.clear(code, source=source, instance=instance)

    def component_state(self, name: str, state: dict) -> None:
        """ReportPort: the retained state of one part (``P/dev/D/component/NAME``), e.g. a dock bay."""
        if not safe_key(name):
            raise ValueError(f"component name {name!r}: letters, digits, '_', '.', '-' only")
        try:
            self._publish(self.topics.component(self.device, name), state, qos=1, retain=True)
        except Exception:  # the port never raises for delivery; the uplink republishes retained values
            log.exception("publishing component %s failed", name)

    def equipment_ratio(self, payload: dict) -> None:
        """ReportPort: the docking station's equipment ratio report (retained ``P/dev/D/ratio``)."""
        try:
            self._publish(self.topics.ratio(self.device), payload, qos=1, retain=True)
        except Exception:
            log.exception("publishing the equipment ratio failed")

    # --- one round ------------------------------------------------------------------------------
    def tick(self) -> dict:
        """Collect, evaluate alarms, publish; returns the health payload."""
        with self._tick_lock:  # the loop and a rebirth command may both ask for a round
            return self._tick()

    def _tick(self) -> dict:
        body = metrics.collect(self.agent, self.started)
        self.evaluate(body)
        comps = metrics.component_statuses(self.agent)
        for name, c in comps.items():
            rec = {"name": name, "state": c["state"], "ts": body["ts"], "device": self.device, "detail": c["detail"]}
            stable = {k: v for k, v in c["detail"].items() if k not in _VOLATILE} if isinstance(c["detail"], dict) else c["detail"]
            fingerprint = json.dumps([c["state"], stable], sort_keys=True, default=str)
            if self._published_components.get(name) != fingerprint:
                if self._publish(self.topics.component(self.device, name), rec, qos=1, retain=True):
                    self._published_components[name] = fingerprint
        body["components"] = {n: {"state": c["state"]} for n, c in comps.items()}
        self.seq += 1
        body["seq"] = self.seq
        body["alarms"] = [a.key for a in self.alarms.active()]
        self._publish(self.topics.health(self.device), body, qos=0, retain=False)
        self.last, self.last_ts = body, time.time()
        return body

    def evaluate(self, h: dict) -> None:
        """The alarms the agent itself owns, from one health body."""
        c, a = self.hcfg, self.alarms
        disk = h["disk"]
        reserve_mb = disk["reserve_bytes"] // 2**20
        if disk["reserve_bytes"] and disk["free_bytes"] < disk["reserve_bytes"]:
            a.raise_("disk_low", f"磁盘剩余空间低于保留值 {reserve_mb} MiB，已停止接收新资料",
                     f"free disk below the {reserve_mb} MiB reserve; new work is refused", "critical")
        elif disk["reserve_bytes"] and disk["free_bytes"] < disk["reserve_bytes"] * c.disk_warn_factor:
            a.raise_("disk_low", f"磁盘剩余空间低于保留值的 {c.disk_warn_factor} 倍（{reserve_mb * c.disk_warn_factor} MiB）",
                     f"free disk below {c.disk_warn_factor}x the reserve ({reserve_mb * c.disk_warn_factor} MiB)", "warning")
        else:
            a.clear("disk_low")
        buf = h["buffer"]
        a.set((buf["oldest_age_s"] or 0) > c.backlog_alarm_s, "backlog_old",
              f"最早未归档资料已超过 {_h_zh(c.backlog_alarm_s)}", f"oldest unarchived item older than {_h(c.backlog_alarm_s)}")
        a.set((buf["oldest_pending_annotation_age_s"] or 0) > c.pending_alarm_s, "pending_annotation_old",
              f"有资料待补录信息（案件编号等）超过 {_h_zh(c.pending_alarm_s)}",
              f"an item has waited for annotation (case number etc.) more than {_h(c.pending_alarm_s)}")
        clk = h["clock"]
        a.set(c.clock_alarm and clk["synchronized"] is False, "clock_unsynced",
              f"系统时钟未与时间服务器同步（{clk['source']}）", f"system clock not synchronised ({clk['source']})")
        off = clk["offset_ms"]
        a.set(off is not None and abs(off) > c.clock_drift_alarm_ms, "clock_drift",
              f"时钟偏差超过 {c.clock_drift_alarm_ms} 毫秒", f"clock offset above {c.clock_drift_alarm_ms} ms")
        a.set(h["uplink"].get("archive_reachable") is False, "archive_unreachable",
              "归档服务器不可达，资料暂存本地", "archive unreachable; items are kept locally")
        self._policy_rules(buf)
        refused = self.agent.store.refused_as_unknown_device()
        a.set(bool(refused), "unknown_device_rejected",
              "归档服务器拒绝本设备（未登记），资料保留在本地", "the archive refused this device as unknown (not "
              "enrolled); items are kept locally — enrol it at the archive (`edge-agent archive enroll DEVICE_ID PUBKEY "
              "--unit UNIT_CODE`), then run `edge-agent uplink retry`")

    def _policy_rules(self, buf: dict) -> None:
        """The unit policy's upload deadline and quotas (agent/store/policy_rules.py): one
        ``upload_overdue`` alarm per officer and recorder with unarchived items whose capture ended
        (recorder clock corrected by the sealed drift) more than ``upload_deadline_h`` ago, cleared
        when they reach the archive; ``quota_exceeded`` while the backlog is above a quota. Without
        a policy in force neither applies (the backlog alarm above does)."""
        a = self.alarms
        rules = policy_rules.rules_in_force(self.agent.store)
        late = policy_rules.overdue(self.agent.store, rules["upload_deadline_h"], self.clock()) if rules else {}
        keep = set()
        for (officer, recorder), items in sorted(late.items()):
            inst = _instance(f"{officer}.{recorder}")
            keep.add(inst)
            worst = max(i["over_s"] for i in items) / 3600
            name = items[0].get("officer_name") or ""
            a.raise_("upload_overdue",
                     f"警员 {officer} {name}（记录仪 {recorder}）有 {len(items)} 个资料超过上传时限 "
                     f"{rules['upload_deadline_h']} 小时未归档，最长超出 {worst:.1f} 小时",
                     f"officer {officer} {name} (recorder {recorder}): {len(items)} item(s) not archived within the "
                     f"{rules['upload_deadline_h']} h upload deadline, the worst {worst:.1f} h over", instance=inst)
        for al in a.active():
            if al.code == "upload_overdue" and al.key[len("upload_overdue."):] not in keep:
                a.clear("upload_overdue", instance=al.key[len("upload_overdue."):])
        over = policy_rules.quota_exceeded(rules, buf["items"], buf["bytes"]) if rules else None
        q = (rules or {}).get("quotas") or {}
        a.set(over is not None, "quota_exceeded",
              f"未归档资料 {buf['items']} 个 / {buf['bytes'] / 1e9:.1f} GB，超过本单位策略配额"
              f"（{q.get('max_unarchived_items') or '-'} 个 / {q.get('max_unarchived_gb') or '-'} GB）",
              f"{buf['items']} unarchived item(s), {buf['bytes'] / 1e9:.1f} GB: above the unit policy's quota "
              f"({q.get('max_unarchived_items') or '-'} items / {q.get('max_unarchived_gb') or '-'} GB)")

    # --- commands -------------------------------------------------------------------------------
    def cmd_rebirth(self, args: dict, actor: str) -> dict:
        """Republish every retained topic (status, components, alarms) and send health now."""
        log.info("rebirth requested by %s", actor)
        up = self.agent.uplink
        if up is not None and hasattr(up, "rebirth"):
            up.rebirth()
        else:
            self.alarms.republish()
        self._published_components.clear()
        body = self.tick()
        return {"ok": True, "alarms": body["alarms"], "components": sorted(body["components"]), "seq": body["seq"]}

    def cmd_health(self, args: dict, actor: str) -> dict:
        return jsonable(self.last or self.tick())

    # --- component ------------------------------------------------------------------------------
    def _run(self) -> None:
        stop = self.agent.stop_event
        while not (stop.is_set() or self._stop.is_set()):
            try:
                self.tick()
            except Exception:
                self.errors += 1
                log.exception("health round failed")
            self._wake.wait(self.hcfg.interval_s)
            self._wake.clear()

    def start(self) -> None:
        self.started = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict:
        return {"state": "ok" if self.errors == 0 else "warning", "seq": self.seq, "errors": self.errors,
                "last_report": self.last["ts"] if self.last else None, "interval_s": self.hcfg.interval_s,
                "alarms": self.alarms.status()}
