"""Helpers for the health and monitor tests: an MQTT capture client, the AsyncAPI schemas, a
contract-following uplink for in-process agents, and a monitor subprocess."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml

from tests.support.retained import retained  # noqa: F401  (tests import it from here too)

ROOT = Path(__file__).resolve().parents[2]
EDGE = str(Path(sys.executable).with_name("edge-agent"))
ARTIFACTS = ROOT / "artifacts"


@functools.lru_cache(maxsize=1)
def _asyncapi_doc() -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"), Loader=loader)


def asyncapi_schemas() -> dict[str, dict]:
    return copy.deepcopy(_asyncapi_doc()["components"]["schemas"])


def envelope_of(payload: bytes) -> dict | None:
    """The signed envelope a device-state payload is (agent/wire/envelope.py), else None."""
    try:
        d = json.loads(payload) if payload else None
    except ValueError:
        return None
    return d if isinstance(d, dict) and "sig" in d and isinstance(d.get("body"), str) else None


def body_of(payload: bytes):
    """The message inside a signed envelope (the body's JSON), or the payload's JSON if unsigned."""
    env = envelope_of(payload)
    if env is not None:
        return json.loads(env["body"])
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        return None


def verify_signed(topic: str, payload: bytes, public) -> dict:
    """Check ``payload`` is an envelope for ``topic`` signed by ``public``; returns the body."""
    from agent.wire import envelope as pl

    env = pl.open_envelope(payload)
    assert env.topic == topic, (env.topic, topic)
    assert pl.verify(env, public), f"{topic}: signature does not verify"
    return json.loads(env.body)


def empty_enrolment(path: Path) -> Path:
    """An archive root with no device enrolled (a monitor then refuses everything)."""
    from agent.archive.storage import ArchiveStore

    ArchiveStore(path, create=True).db.close()
    return path


def schema_for(topic: str) -> str | None:
    parts = topic.split("/")
    if len(parts) >= 4 and parts[1] == "dev":
        kind = parts[3]
        if kind in ("status", "health", "ratio") and len(parts) == 4:
            return kind
        if kind in ("alarm", "component") and len(parts) == 5:
            return kind
    return None


_CAPTURES = itertools.count()


class Capture:
    """Subscribes to a filter and keeps every message (topic, payload bytes, retain flag)."""

    def __init__(self, port: int, topic: str = "#", host: str = "127.0.0.1"):
        self.msgs: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"capture-{os.getpid()}-{id(self)}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self._sub = threading.Event()
        self.c.on_subscribe = lambda *a: self._sub.set()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        from tests.support.broker import login

        # on a shipped broker: a monitor login of its own (it reads what the monitor may read)
        creds = login(port, f"monitor.{20 + next(_CAPTURES) % 40}", "monitor")
        if creds:
            self.c.username_pw_set(creds["username"], creds["password"])
        self.c.connect(host, port)
        self.c.loop_start()
        assert self._sub.wait(10), "capture could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.msgs.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, pred, timeout: float = 30.0, start: int = 0):
        """The first message (from index ``start``) for which pred(topic, body_or_None) is true (the
        body of a signed envelope)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            seen = start
            while True:
                for topic, payload, retain in self.msgs[seen:]:
                    obj = body_of(payload)  # signed envelopes are unwrapped
                    if pred(topic, obj):
                        return topic, obj
                seen = len(self.msgs)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching message in {timeout} s; got topics "
                                         f"{sorted({t for t, _, _ in self.msgs})[:30]}")
                self.cond.wait(left)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def publish(port: int, topic: str, payload, *, retain: bool = False, qos: int = 1) -> None:
    """One message; on a shipped broker as the identity that owns ``topic`` (the device of
    ``edge/dev/D/...``): a sender with that device's broker password, the signature is the test's."""
    from tests.support.broker import login_for_topic

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{os.getpid()}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv5)
    creds = login_for_topic(port, topic)
    if creds:
        c.username_pw_set(creds["username"], creds["password"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    data = payload if isinstance(payload, (bytes, str)) else json.dumps(payload, ensure_ascii=False)
    c.publish(topic, data, qos=qos, retain=retain).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


class ContractUplink:
    """A minimal uplink that follows the shared contract (publish/subscribe/connected/stats/rebirth,
    retained values remembered and republished): lets the health component run in-process against
    a real broker without the full uplink (agent/uplink) of another issue."""

    name = "uplink"

    def __init__(self, port: int, device: str, prefix: str = "edge", sealer=None):
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.sealer = sealer
        self.sent = 0
        self.rebirths = 0
        from tests.support.broker import login

        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        creds = login(port, device)  # on a shipped broker: the device's own identity
        if creds:
            self.c.username_pw_set(creds["username"], creds["password"])
        self.status_topic = f"{prefix}/dev/{device}/status"
        self.c.will_set(self.status_topic, self._seal(self.status_topic, {"state": "offline", "bdseq": 1}),
                        qos=1, retain=True)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.publish(self.status_topic, self._seal(self.status_topic, {"state": "online", "bdseq": 1,
                                                                        "device": device}), retain=True)

    def _seal(self, topic, body):
        return self.sealer.seal(topic, body) if self.sealer is not None else json.dumps(body).encode()

    @property
    def connected(self) -> bool:
        return self.c.is_connected()

    def publish(self, topic, payload, *, qos=1, retain=False):
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        if retain:
            self.retained[topic] = (data, qos)
        self.c.publish(topic, data, qos=qos, retain=retain)
        self.sent += 1

    def subscribe(self, topic_filter, callback):
        raise NotImplementedError

    def rebirth(self):
        self.rebirths += 1
        for t, (data, qos) in list(self.retained.items()):
            self.c.publish(t, data, qos=qos, retain=True)

    def stats(self):
        return {"connected": self.connected, "reconnects": 0, "errors": 0, "bytes_sent": 0, "bytes_per_s": 0.0,
                "items_archived": 0, "last_error": None, "archive_reachable": False}

    def start(self):
        pass

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()

    def status(self):
        return {"state": "ok" if self.connected else "offline", "sent": self.sent}


class MonitorProc:
    """``edge-agent monitor`` as a subprocess (no TUI), ready when it prints its ready line."""

    def __init__(self, db: Path, port: int, *, web: int | None = None, lost_after: int = 120, extra=(), env=None,
                 enrolment: Path | None = None):
        if enrolment is None:
            enrolment = empty_enrolment(Path(str(db) + "-archive"))
        self.enrolment = enrolment
        from tests.support.uplink import credentials

        auth = credentials(db.parent, port, "monitor", "monitor")  # the shipped broker: the monitor's logins
        args = [EDGE, *auth, "monitor", "--db", str(db), "--broker", f"127.0.0.1:{port}", "--no-tui",
                "--lost-after", str(lost_after), "--enrolment", str(enrolment), *extra]
        if web is not None:
            args += ["--web", str(web)]
        self.log = Path(str(db) + ".log")
        self.logf = open(self.log, "ab")
        e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.p = subprocess.Popen(args, stdout=self.logf, stderr=self.logf, env=e, start_new_session=True)
        self.web_url = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            if "monitor: ready" in text:
                line = [ln for ln in text.splitlines() if "monitor: ready" in ln][-1]
                if " web " in line:
                    self.web_url = line.split(" web ", 1)[1].strip()
                break
            if self.p.poll() is not None:
                raise AssertionError(f"monitor exited: {text[-2000:]}")
            time.sleep(0.05)
        else:
            raise AssertionError("monitor did not become ready")

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(20)
        self.logf.close()
        return self.p.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace")
