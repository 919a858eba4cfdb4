"""Fleet simulator: N simulated devices publishing status, health, components, ratio and alarms
through a real MQTT broker, with the payloads of agent/wire/health.py, each sealed like an agent
seals it (agent/wire/envelope.py ``Sealer``: signed envelope, device key).

    python -m tools.fleet_sim --broker 127.0.0.1:1883 --devices 20 --units 4 --rate 1 --duration 30 \
        --enrol /tmp/sim-archive
    edge-agent monitor --broker 127.0.0.1:1883 --enrolment /tmp/sim-archive --db /tmp/m.db

A simulated device's Ed25519 key is derived from its id (SHA-256 of "fleet-sim:" + id): the
simulator, a test and a benchmark can all sign for the same device without sharing files. Never
a way to make a real device's key. ``--enrol ROOT`` enrols the simulated devices (with those keys
and their units) in the archive root ROOT that the monitor reads (``monitor --enrolment ROOT``).

Bounded: at most 5,000 devices and 3,600 s. Two connection modes:

* ``--per-device`` (at most 200 devices): one MQTT connection per device with its own retained
  "offline" last will and bdseq, exactly like an agent; ``--kill-after S`` drops every connection
  without DISCONNECT after S seconds so the broker publishes the wills.
* shared (default): devices multiplexed over ``--connections`` connections (load tests; the
  monitor cannot tell the difference except for the wills).

Unit ``i`` gets docks and one interview room, except the last unit (no room) so a monitor shows a
non-compliant unit; ``--alarm-every S`` raises/clears a random alarm now and then. Prints a JSON
summary (published counts, achieved rate) at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import selectors
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from tools.fleet_devices import (ALARMS, MAX_DEVICES, MAX_DURATION, SimDevice, _dumps, enrol, iso,  # noqa: F401
                                 make_fleet, sim_key)

MAX_PER_DEVICE = 200
DESCRIPTORS_PER_CLIENT = 3  # a connection per device: its socket and paho's wake-up socket pair


def max_per_process() -> int:
    """Devices each logged in as itself that one process can simulate. Their connections are all
    served by one epoll selector thread (no select() and its 1,024-descriptor limit), so the bound
    is the process's open-file limit (raised to its hard limit here), 3 descriptors a client."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_DEVICES
    return max(1, (soft - 200) // DESCRIPTORS_PER_CLIENT)  # 200 for everything else the process opens
class FleetSim:
    def __init__(self, host: str, port: int, devices: list[SimDevice], *, prefix: str = "edge", rate: float = 1.0,
                 per_device: bool = False, connections: int = 4, alarm_every: float = 0.0, officers: int = 40,
                 credentials=None, flap_every: float = 0.0):
        # credentials: a function device id -> {"username", "password"} (a broker with identities and ACL, where
        # each device may publish only in its own subtree): one connection per device, logged in as it
        self.credentials = credentials
        if credentials is not None:
            per_device = True
            limit = max_per_process()
            if len(devices) > limit:
                raise ValueError(f"{len(devices)} devices each logged in as itself: at most {limit} in one "
                                 "process (its open-file limit, 3 descriptors a device); split them with --slice "
                                 "I/N over processes "
                                 "(tools/bench/fleet.py does)")
        elif per_device and len(devices) > MAX_PER_DEVICE:
            raise ValueError(f"--per-device: at most {MAX_PER_DEVICE} devices")
        if not 0 < rate <= 50:
            raise ValueError("--rate: 0 < rate <= 50 messages per second per device")
        self.host, self.port, self.p = host, port, prefix
        self.devices = devices
        self.rate = rate
        self.per_device = per_device
        self.alarm_every = alarm_every
        self.flap_every = flap_every
        self.officers = officers
        self.published = {"status": 0, "health": 0, "component": 0, "alarm": 0, "ratio": 0}
        self.flaps = 0
        self.clients: dict[str, mqtt.Client] = {}
        self._shared: list[mqtt.Client] = []
        self._stop = threading.Event()
        self._presigned: list | None = None  # health payloads per round, sealed ahead (presign())
        self._start_at = 0.0
        self.connections = max(1, min(connections, len(devices)))
        # one connection per device: one network thread for all of them (paho's own loop thread
        # uses select(), which cannot watch file descriptors above 1023: about 300 clients)
        self._sel = selectors.DefaultSelector()
        self._net_clients: list[mqtt.Client] = []
        self._net_lock = threading.Lock()
        self._net_stop = threading.Event()
        self._net: threading.Thread | None = None

    def _client(self, cid: str, will: tuple[str, bytes] | None) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.max_queued_messages_set(0)
        if self.credentials is not None:
            cred = self.credentials(cid)
            c.username_pw_set(cred["username"], cred["password"])
        up = threading.Event()
        c.on_connect = lambda *_a: up.set()
        if will:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.connect(self.host, self.port, keepalive=30)
        if not self.per_device:
            c.loop_start()
            return c
        # publishes only queue (paho writes at once from the caller's thread otherwise): the
        # network thread is the one writer of every socket
        c.on_socket_register_write = lambda *_a: None
        with self._net_lock:
            self._sel.register(c.socket(), selectors.EVENT_READ, c)
            self._net_clients.append(c)
            if self._net is None:
                self._net = threading.Thread(target=self._net_run, name="fleet-sim-net", daemon=True)
                self._net.start()
        if not up.wait(60):  # a QoS 0 publish before CONNACK would be dropped
            raise RuntimeError(f"{cid}: no CONNACK within 60 s")
        return c

    def _net_run(self) -> None:
        """Reads every per-device connection (CONNACK, PUBACK, PINGRESP), writes what a publish
        could not send at once, keeps the connections alive."""
        last_misc = time.monotonic()
        while not self._net_stop.is_set():
            with self._net_lock:
                ready = self._sel.select(0.01) if self._net_clients else []
                clients = list(self._net_clients)
            for key, _ev in ready:
                if key.data.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    with self._net_lock:
                        try:
                            self._sel.unregister(key.fileobj)
                        except (KeyError, ValueError):
                            pass
            for c in clients:
                if c.want_write():
                    c.loop_write()
            if time.monotonic() - last_misc >= 1.0:
                last_misc = time.monotonic()
                for c in clients:
                    c.loop_misc()
            if not ready:
                time.sleep(0.005)

    def client_of(self, d: SimDevice) -> mqtt.Client:
        if self.per_device:
            return self.clients[d.id]
        return self._shared[hash(d.id) % len(self._shared)]

    def pub(self, d: SimDevice, kind: str, sub: str | None, payload: dict, qos: int, retain: bool) -> None:
        topic = f"{self.p}/dev/{d.id}/{kind}" + (f"/{sub}" if sub else "")
        self.client_of(d).publish(topic, d.seal(topic, _dumps(payload)), qos=qos, retain=retain)
        self.published[kind] += 1

    def connect(self) -> None:
        if self.per_device:
            def one(d: SimDevice) -> None:
                d.bdseq += 1
                st = f"{self.p}/dev/{d.id}/status"
                will = (st, d.seal(st, d.status("offline")))  # sealed at connect, like an agent's
                self.clients[d.id] = self._client(f"{d.id}", will)

            with ThreadPoolExecutor(max_workers=32) as ex:  # connects side by side, each until its CONNACK
                list(ex.map(one, self.devices))
        else:
            self._shared = [self._client(f"fleet-sim-{i}-{random.getrandbits(24):06x}", None)
                            for i in range(self.connections)]
        for d in self.devices:
            self.pub(d, "status", None, d.status("online"), 1, True)
            for name, state in d.components().items():
                if name.startswith("bay-"):  # as agent/dock/station.py publishes a bay (BayState)
                    body = {"name": name, "state": "idle", "label": "空闲 / Idle", "kind": "serial", "docked": False,
                            "since": iso(), "battery": None, "bytes_done": 0, "bytes_total": 0}
                else:
                    body = {"name": name, "state": state, "ts": iso(), "device": d.id, "detail": {"sim": True}}
                self.pub(d, "component", name, body, 1, True)
            if d.kind == "dock":
                self.pub(d, "ratio", None, d.ratio(self.officers, 6), 1, True)

    def presign(self, duration: float, start_at: float | None = None) -> float:
        """Seal now every health message :meth:`run` will publish in ``duration`` seconds, each for
        the time it is scheduled to go out (round n at ``start_at`` + n / rate): genuine messages
        (the device's key, its next seq, its scheduled time) whose signing is done before a
        benchmark's timed window, so that the cores go to the system under test. :meth:`run` then
        waits until ``start_at`` (Unix time; default: now plus an estimate of the signing) and only
        publishes. Returns ``start_at``."""
        rounds = max(1, int(min(duration, MAX_DURATION) * self.rate + 0.999))
        if start_at is None:
            start_at = time.time() + 2.0 + rounds * len(self.devices) * 150e-6
        period = 1.0 / self.rate
        topics = [f"{self.p}/dev/{d.id}/health" for d in self.devices]
        out = []
        for n in range(rounds):
            at = start_at + n * period
            ts = iso(at)
            out.append([d.seal(t, _dumps(d.health(at)), ts) for d, t in zip(self.devices, topics)])
        self._presigned, self._start_at = out, start_at
        return start_at

    def run(self, duration: float) -> dict:
        duration = min(duration, MAX_DURATION)
        period = 1.0 / self.rate
        pre, late = self._presigned, None
        if pre is not None:  # sealed ahead: start at the time they were sealed for
            wait = self._start_at - time.time()
            if wait > 0:
                self._stop.wait(wait)
            late = round(max(0.0, -wait), 2)
            duration = min(duration, len(pre) * period)
            topics = [f"{self.p}/dev/{d.id}/health" for d in self.devices]
            conns = [self.client_of(d) for d in self.devices]
        t0 = time.monotonic()
        n = 0
        next_alarm = t0 + self.alarm_every if self.alarm_every else None
        next_flap = t0 + self.flap_every if self.flap_every else None
        while not self._stop.is_set():
            tick = t0 + n * period
            now = time.monotonic()
            if now - t0 >= duration:
                break
            if tick > now:
                time.sleep(tick - now)
            if pre is not None:
                if n >= len(pre):
                    break
                for c, t, payload in zip(conns, topics, pre[n]):
                    c.publish(t, payload, qos=0)
                self.published["health"] += len(pre[n])
                pre[n] = None  # published: its memory goes
            else:
                for d in self.devices:
                    self.pub(d, "health", None, d.health(), 0, False)
            n += 1
            if next_alarm and time.monotonic() >= next_alarm:
                next_alarm += self.alarm_every
                self.toggle_alarm(random.choice(self.devices))
            if next_flap and time.monotonic() >= next_flap:
                next_flap += self.flap_every
                self.flap(random.choice(self.devices))
        elapsed = time.monotonic() - t0
        return {"devices": len(self.devices), "rate_hz": self.rate, "rounds": n, "elapsed_s": round(elapsed, 2),
                "status_changes": self.flaps, "presigned": pre is not None, "late_start_s": late,
                "published": dict(self.published), "health_msg_per_s": round(self.published["health"] / elapsed, 1)}

    def flap(self, d: SimDevice) -> None:
        """A status change: the device goes offline (its signed death) and is born again (bdseq + 1),
        as an agent that restarts does."""
        self.pub(d, "status", None, d.status("offline"), 1, True)
        d.bdseq += 1
        self.pub(d, "status", None, d.status("online"), 1, True)
        self.flaps += 1

    def toggle_alarm(self, d: SimDevice) -> None:
        if d.alarm:
            self.pub(d, "alarm", d.alarm_key(), d.alarm_payload(False, d._since), 1, True)
            d.alarm = None
        else:
            d.alarm = random.choice(ALARMS)
            d._since = iso()
            self.pub(d, "alarm", d.alarm_key(), d.alarm_payload(True, d._since), 1, True)

    def stop(self, clean: bool = True) -> None:
        """clean: publish retained offline and DISCONNECT; else drop the sockets (wills fire)."""
        self._stop.set()
        if self.per_device:
            def one(d: SimDevice) -> None:
                c = self.clients[d.id]
                if clean:
                    st = f"{self.p}/dev/{d.id}/status"
                    c.publish(st, d.seal(st, dict(d.status("offline"), reason="clean stop")), qos=1,
                              retain=True).wait_for_publish(5)
                    c.disconnect()
                    c.loop_stop()
                else:  # no DISCONNECT: drop the socket (the broker sends the will)
                    sock = c.socket()
                    if sock is not None:
                        with self._net_lock:
                            try:
                                self._sel.unregister(sock)
                            except (KeyError, ValueError):
                                pass
                        sock.close()

            with ThreadPoolExecutor(max_workers=32) as ex:
                list(ex.map(one, self.devices))
            if clean:
                self.published["status"] += len(self.devices)  # each device's retained offline
                deadline = time.monotonic() + 10
                while any(c.want_write() for c in self._net_clients) and time.monotonic() < deadline:
                    time.sleep(0.02)  # the DISCONNECTs go out
            self._net_stop.set()
            if self._net is not None:
                self._net.join(5)
        else:
            for c in self._shared:
                if clean:
                    c.disconnect()
                c.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default="127.0.0.1:1883", help="HOST:PORT")
    ap.add_argument("--prefix", default="edge")
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1.0, help="health messages per second per device")
    ap.add_argument("--duration", type=float, default=10.0, help=f"seconds (at most {MAX_DURATION:g})")
    ap.add_argument("--per-device", action="store_true", help="one connection (and last will) per device")
    ap.add_argument("--connections", type=int, default=4, help="shared mode: number of connections")
    ap.add_argument("--alarm-every", type=float, default=0.0, help="toggle a random alarm every S seconds")
    ap.add_argument("--flap-every", type=float, default=0.0,
                    help="every S seconds a random device goes offline and is born again (a status change)")
    ap.add_argument("--officers", type=int, default=40, help="officers per unit in the docks' ratio reports")
    ap.add_argument("--kill-after", action="store_true", help="end without DISCONNECT (the wills fire)")
    ap.add_argument("--slice", metavar="I/N", help="simulate only devices I, I+N, I+2N ... of the fleet (one of N "
                                                   "processes: paho's select() loop handles at most ~1,000 sockets a process)")
    ap.add_argument("--credentials-dir", metavar="DIR",
                    help="log each device in as itself with DIR/DEVICE.toml ([mqtt] username, password), as "
                         "`archive broker-config` writes them; implies one connection per device")
    ap.add_argument("--presign", action="store_true",
                    help="seal every health message before publishing starts, each for its scheduled time "
                         "(benchmarks: the signing is not in the timed window); prints 'presigned' to stderr")
    ap.add_argument("--start-at", type=float, metavar="UNIX_TIME",
                    help="with --presign: when the first round goes out (default: once sealed)")
    ap.add_argument("--enrol", metavar="ROOT", help="enrol the simulated devices in this archive root first "
                                                    "(the monitor's --enrolment)")
    a = ap.parse_args(argv)
    host, _, port = a.broker.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"--broker {a.broker!r}: expected HOST:PORT")
    if not 0 < a.duration <= MAX_DURATION:
        ap.error(f"--duration: 0 < seconds <= {MAX_DURATION:g}")
    devices = make_fleet(a.devices, a.units) if 1 <= a.devices <= MAX_DEVICES else []
    if a.slice:
        i, _, n = a.slice.partition("/")
        if not (i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
            ap.error(f"--slice {a.slice!r}: expected I/N with 0 <= I < N")
        devices = devices[int(i)::int(n)]
    creds = None
    if a.credentials_dir:
        from agent import config as config_mod

        def creds(dev: str) -> dict:
            m = config_mod.load(Path(a.credentials_dir) / f"{dev}.toml").mqtt
            return {"username": m.username, "password": m.password}
    try:
        if not devices:
            raise ValueError(f"--devices {a.devices}: 1..{MAX_DEVICES}" if not a.slice else "--slice: no device")
        sim = FleetSim(host, int(port), devices, prefix=a.prefix, rate=a.rate,
                       per_device=a.per_device, connections=a.connections, alarm_every=a.alarm_every,
                       officers=a.officers, flap_every=a.flap_every, credentials=creds)
    except ValueError as exc:
        ap.error(str(exc))
    if a.enrol:
        enrol(a.enrol, sim.devices)
    sim.connect()
    if a.presign:
        t = time.monotonic()
        start = sim.presign(a.duration, a.start_at)
        print(f"presigned {sum(len(r) for r in sim._presigned)} messages in {time.monotonic() - t:.1f} s; "
              f"first round at {start:.2f} (in {start - time.time():.1f} s)", file=sys.stderr, flush=True)
    try:
        out = sim.run(a.duration)
    except KeyboardInterrupt:
        out = {"interrupted": True, "published": sim.published}
    sim.stop(clean=not a.kill_after)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
