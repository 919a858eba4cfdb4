"""A publisher process (``python -m tools.scale_sim _publish SPEC REPORT``): many simulated devices
uploading with the agent's real transfer, each over its own MQTT connection, until every one has
its items archived; what each achieved goes to REPORT."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import threading
import time
from pathlib import Path

from .fleet import PREFIX, device_config

log = logging.getLogger("scale_sim")


class LiteDevice:
    """A lightweight simulated device: the agent's real transfer (:class:`agent.uplink.transfer.Transfer`:
    manifest, chunks with offset + SHA-256, finish, query, retransmission, ``stored`` answer) over its
    real MQTT connection (:class:`agent.wire.mqtt.Connection`), without the uplink component's
    housekeeping threads (status file every 3 s, chain checkpoint, command dispatch, publish queue).
    Three threads per device instead of six, so that hundreds fit in a few processes."""

    def __init__(self, cfg, store):
        import secrets

        from agent.uplink import settings_from_config
        from agent.wire.mqtt import Connection
        from agent.wire.topics import Topics
        from agent.uplink.transfer import Transfer

        self.cfg, self.store = cfg, store
        self.device = cfg.device.id
        self.topics = Topics(cfg.mqtt.topic_prefix)
        self.ack_topic = self.topics.ack(self.device)
        self.stop_event = threading.Event()
        self.session = secrets.token_hex(4)
        self.conn = Connection(settings_from_config(cfg, self.device), stop_event=self.stop_event,
                               on_connect=self._on_connect, on_message=self._on_message, name=self.device)
        self.transfer = Transfer(self)
        self.errors_local, self.last_error_local = 0, None

    def _on_connect(self, _conn) -> None:
        self.transfer.wake.set()

    def _on_message(self, topic: str, payload: bytes, props) -> None:
        if topic == self.ack_topic:
            self.transfer.on_answer(payload, props)

    def note_error(self, msg: str) -> None:
        self.errors_local += 1
        self.last_error_local = msg
        log.error("%s: %s", self.device, msg)

    def start(self) -> None:
        self.conn.subscribe(self.ack_topic, 1)
        self.conn.start()
        self.transfer.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.transfer.wake.set()
        self.transfer.join(10)
        self.conn.stop()

    def stats(self) -> dict:
        t, c = self.transfer, self.conn
        return {"items_archived": t.items_archived, "retransmits": t.retransmits, "reconnects": c.reconnects,
                "errors": c.errors + self.errors_local, "last_error": self.last_error_local or c.last_error}


def run_publisher(spec_path: Path, report_path: Path) -> int:
    """Run the devices listed in spec_path until each has archived all its items (or SIGTERM)."""
    from agent.runtime import Agent
    from agent.store.store import Store
    from agent.uplink import make_component

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = json.loads(spec_path.read_text())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    devs = []
    for d in spec["devices"]:
        cfg = device_config(Path(d["data_dir"]), d["device"], d["unit"], d["port"], spec.get("bandwidth", 0),
                            d.get("prefix", PREFIX), d["username"], d["password"])  # logged in as itself
        store = Store(cfg)
        if spec.get("full_uplink"):
            up = make_component(Agent(cfg, store=store))
        else:
            up = LiteDevice(cfg, store)
        devs.append({"device": d["device"], "want": d["items"], "bytes": d["bytes"], "up": up, "done": None,
                     "started": None})
    # devices come up spread over the ramp (a fleet never connects in the same millisecond)
    step = spec.get("ramp_s", 0) / max(1, len(devs))
    left = len(devs)
    for d in devs:
        d["started"] = time.monotonic()
        d["up"].start()
        if step:
            stop.wait(step)
    while left and not stop.wait(0.05):
        now = time.monotonic()
        for d in devs:
            if d["done"] is None and d["up"].transfer.items_archived >= d["want"]:
                d["done"] = now
                left -= 1
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = []
    for d in devs:
        st = d["up"].stats()
        lat = list(d["up"].transfer.item_latency)
        dt = (d["done"] - d["started"]) if d["done"] else None
        out.append({"device": d["device"], "archived": st["items_archived"], "wanted": d["want"],
                    "seconds": round(dt, 3) if dt else None,
                    "mb_s": round(d["bytes"] / 1e6 / dt, 3) if dt else None,
                    "item_latency_s": round(sum(lat) / len(lat), 3) if lat else None,
                    "retransmits": st["retransmits"], "reconnects": st["reconnects"], "errors": st["errors"],
                    "last_error": st["last_error"]})
    report_path.write_text(json.dumps({"devices": out, "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
                                       "peak_rss_mb": round(ru.ru_maxrss / 1024, 1)}))
    for d in devs:  # stop every uplink at once: each stop joins its threads
        d["up"].stop_event.set()
        d["up"].transfer.wake.set()
    threads = [threading.Thread(target=d["up"].stop, daemon=True) for d in devs]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 15
    for th in threads:
        th.join(max(0.1, deadline - time.monotonic()))
    os._exit(0)
