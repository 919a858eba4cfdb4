"""Benchmark: can the central monitor keep up with the fleet, verifying every signature?

    python -m tools.bench.monitor_load [--devices 1000] [--loads 1,5] [--seconds 20] [--json [PATH]]
    python -m tools.bench.monitor_load --only verify,flood     # the two signed-state figures only

Every message is a signed envelope (agent/wire/envelope.py) from a device enrolled in a private
archive root the monitor reads (``--enrolment``); keys are the simulator's (tools/fleet_sim.py).

Three measurements:

* ``verify``: signed health messages verified and applied per second on one core: the monitor's
  own ``Ingest.handle`` (envelope, Ed25519 against the enrolled key, replay check, parse, apply)
  in this process over pre-sealed messages from 200 devices, including the batched SQLite flush;
  messages per wall second and per CPU second (target >= 5,000), next to bare Ed25519 verify.
Every broker here is Mosquitto as shipped (tools/bench/shipped_broker.py: identities and ACL from
the enrolment, anonymous off); each simulated device logs in as itself, the monitor as ``monitor``.

* ``flood``: a private Mosquitto and ``edge-agent monitor``; while one connection floods as fast
  as it can with forgeries in the name of enrolled device A (well-formed envelopes, wrong
  signatures) and another with genuine messages of a stolen device F, devices B and A send
  genuine health every ``--interval`` seconds. Measured: how long after publishing B's (and A's)
  health the monitor applied it (its ``health_ts``, max over the rounds; target: within one
  interval), the flood rate, what was refused and why.
* ``load`` (as before): ``--devices`` simulated devices at each load factor L Hz through the broker;

  a private Mosquitto, ``edge-agent monitor`` (subprocess, SQLite in a temp dir), the simulator
  in this process publishing health at L Hz per device over 4 connections. After a warm-up, over
  a steady window we measure

* publish rate (messages/s the simulator sent, and the scheduled rate devices x L) and ingest rate
  (messages/s the monitor counted between two of its flushes, from its ``counters`` table); the
  ratio is ingest / scheduled (target >= 0.99 at 5x on 2 cores);
* after the simulator stops: messages received in total ÷ published (nothing lost) and the time
  the monitor needed to drain its backlog;
* CPU of the monitor (percent of one core, user + system) and its peak RSS.

``--json`` writes one record for the ``make bench`` aggregator (stdout, or PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.bench.shipped_broker import ShippedBroker  # noqa: E402
from tools.fleet_sim import FleetSim, SimDevice, enrol, make_fleet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDGE = str(Path(sys.executable).with_name("edge-agent"))
TARGET = 0.99
VERIFY_TARGET = 5000.0   # signed health messages verified per second on one core


def counter(db: Path, name: str = "received") -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchone()
        finally:
            conn.close()
        return row[0] if row else 0
    except sqlite3.Error:
        return 0


def _broker(work: Path, unbound_port: bool = False) -> ShippedBroker:
    """Mosquitto as shipped: identities and ACL of the devices enrolled in ``work/archive``."""
    return ShippedBroker(work, work / "archive", unbound_port=unbound_port).start()


def _monitor(work: Path, broker: ShippedBroker, root: Path, log, connections: int = 8) -> subprocess.Popen:
    mon = subprocess.Popen([EDGE, "--config", str(broker.credential_file("monitor")), "monitor",
                            "--db", str(work / "monitor.db"), "--broker", f"127.0.0.1:{broker.port}",
                            "--no-tui", "--lost-after", "60", "--enrolment", str(root),
                            "--connections", str(connections)], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while "monitor: ready" not in (work / "monitor.log").read_text(errors="replace"):
        if time.monotonic() > deadline or mon.poll() is not None:
            raise RuntimeError("monitor did not start: " + (work / "monitor.log").read_text()[-1000:])
        time.sleep(0.1)
    return mon


def run_load(devices: int, load: float, seconds: float, warmup: float, work: Path, connections: int = 8,
             presign: bool = True) -> dict:
    fleet = make_fleet(devices, max(1, devices // 20), "bench")
    enrol(work / "archive", fleet)
    broker = _broker(work)
    db = work / "monitor.db"
    mon_log = open(work / "monitor.log", "wb")
    mon = None
    try:
        mon = _monitor(work, broker, work / "archive", mon_log, connections)
        proc = psutil.Process(mon.pid)
        total = warmup + seconds
        # the simulator runs in this process (its own threads); the monitor is a separate process
        # each device logs in as itself (the ACL lets it publish only in its own subtree)
        sim_obj = FleetSim("127.0.0.1", broker.port, fleet, rate=load, credentials=broker.credentials)
        sim_obj.connect()
        # every health message sealed before the clock starts (genuine: each device's key, next seq
        # and scheduled time), so the cores go to the monitor, not to the simulator's signing
        start = sim_obj.presign(total) if presign else time.time()
        holder: dict = {}
        sim = threading.Thread(target=lambda: holder.update(sim_obj.run(total)), name="fleet-sim")
        sim.start()
        time.sleep(max(0.0, start - time.time()) + warmup)
        c0, f0, p0, t0 = counter(db), counter(db, "_flushed_at_ms"), sim_obj.published["health"], time.monotonic()
        cpu0, sys0 = proc.cpu_times(), psutil.cpu_times()
        rss = proc.memory_info().rss
        while time.monotonic() - t0 < seconds and sim.is_alive():
            time.sleep(0.5)
            rss = max(rss, proc.memory_info().rss)
        c1, f1, p1, t1 = counter(db), counter(db, "_flushed_at_ms"), sim_obj.published["health"], time.monotonic()
        cpu1, sys1 = proc.cpu_times(), psutil.cpu_times()
        sim.join(total + 60)
        sim_obj.stop()
        sim = None
        published = sum(sim_obj.published.values())
        # drain: wait until the monitor has counted everything (or stops progressing)
        d0 = time.monotonic()
        last, still = counter(db), 0
        while True:
            time.sleep(0.5)
            now = counter(db)
            if now >= published or (now == last and (still := still + 1) >= 20) or time.monotonic() - d0 > 180:
                break
            if now != last:
                still = 0
            last = now
        drain = time.monotonic() - d0
        received = counter(db)
        window = t1 - t0
        pub_rate = (p1 - p0) / window
        ing_rate = (c1 - c0) / ((f1 - f0) / 1000)  # counts between two flushes, over their own interval
        cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / window * 100
        # the simulator publishes in rounds (all devices at each tick): over a window a few seconds
        # long the sampled publish count is quantised by a whole round; the scheduled rate is exact
        # as long as the simulator keeps its schedule (checked: sim_kept_up)
        nominal = devices * load
        busy = sum(sys1) - sum(sys0)
        steal = (getattr(sys1, "steal", 0) - getattr(sys0, "steal", 0)) / busy * 100 if busy else 0.0
        return {"load": load, "devices": devices, "publish_msg_per_s": round(pub_rate, 1),
                "scheduled_msg_per_s": nominal, "sim_kept_up": pub_rate >= 0.95 * nominal,
                "ingest_msg_per_s": round(ing_rate, 1), "ratio": round(ing_rate / nominal, 3),
                "published_total": published, "received_total": received,
                "delivered_share": round(received / published, 4) if published else None,
                "drain_s": round(drain, 1), "monitor_cpu_pct_of_one_core": round(cpu, 1),
                "monitor_rss_mib": round(rss / 2**20, 1), "monitor_connections": connections,
                "monitor_cpu_s_per_1000_msg": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system)
                                                    / max(1, c1 - c0) * 1000, 3),
                "window_s": round(window, 1), "presigned": presign, "sim_late_start_s": holder.get("late_start_s"),
                "rejected": {k: v for k, v in _counters(db).items() if k.startswith("rejected")},
                "load_average": [round(x, 1) for x in os.getloadavg()], "cpu_steal_pct": round(steal, 1)}
    finally:
        for p in (mon,):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        broker.stop()
        mon_log.close()


def verify_rate(messages: int = 20000, devices: int = 200, work: Path | None = None) -> dict:
    """Signed health messages verified and applied per second by the monitor's ``Ingest.handle``
    on one core (this thread), the batched SQLite flush included; bare Ed25519 verify for scale."""
    from agent.monitor.enrolment import Enrolment
    from agent.monitor.ingest import Ingest, IngestSettings
    from agent.monitor.state import MonitorDB
    from agent.wire import envelope as pl

    fleet = make_fleet(devices, max(1, devices // 20), "verify")
    msgs = []
    for i in range(messages):
        d = fleet[i % devices]
        t = f"edge/dev/{d.id}/health"
        msgs.append((t, d.seal(t, d.health())))
    with tempfile.TemporaryDirectory(prefix="monitor-verify-") as tmp:
        db = MonitorDB(Path(work or tmp) / "verify.db")
        ing = Ingest(db, IngestSettings(rate=1e9, burst=1e9),
                     Enrolment.of((d.id, d.unit_code, d.key.public_key()) for d in fleet))
        results: dict[str, int] = {}
        c0, w0 = time.process_time(), time.perf_counter()
        for n, (t, p) in enumerate(msgs, 1):
            r = ing.handle(t, p)
            results[r] = results.get(r, 0) + 1
            if n % 5000 == 0:  # the flusher writes once a second; at >= 5,000 msg/s that is every ~5,000
                ing.flush()
        ing.flush()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        db.close()
    env = pl.open_envelope(msgs[0][1])
    pub = fleet[0].key.public_key()
    data, sig = env.signed_bytes(), __import__("base64").b64decode(env.sig)
    n = 5000
    t0 = time.process_time()
    for _ in range(n):
        pub.verify(sig, data)
    bare = n / (time.process_time() - t0)
    from agent.evidence import keys as keys_mod

    raw = keys_mod.public_raw(pub)
    t0 = time.process_time()
    for _ in range(n):
        keys_mod.verify_raw(raw, data, env.sig)
    bare_sodium = n / (time.process_time() - t0)
    return {"messages": messages, "devices": devices, "results": results, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2), "verified_per_s": round(messages / wall), "verified_per_cpu_s": round(messages / cpu),
            "bare_ed25519_verify_per_cpu_s": round(bare), "bare_libsodium_verify_per_cpu_s": round(bare_sodium),
            "target_per_s": VERIFY_TARGET,
            "ok": results.get("accepted") == messages and messages / cpu >= VERIFY_TARGET,
            "load_average": [round(x, 1) for x in os.getloadavg()]}


def _health_row(db: Path, dev: str) -> tuple[int | None, float | None]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("SELECT health, health_ts FROM devices WHERE id = ?", [dev]).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None, None
    if not row or not row[0]:
        return None, None
    return json.loads(row[0]).get("uptime_s"), row[1]


def _flooder(port: int, kind: str, stop, counter, rate: float = 0.0, cred: dict | None = None) -> None:
    """One flooding connection (its own process, so the genuine devices' client is not starved):
    ``forged``: well-formed envelopes in flood-a's name with random signatures and ever-new
    sequence numbers (each costs the monitor a full Ed25519 verify); ``stolen``: flood-f's
    genuine messages, sealed as fast as this process can sign (verified, then rate-limited).
    ``rate`` > 0 paces the flood to that many messages per second. ``cred``: the broker identity
    the flooder holds (the ACL lets it publish only in that device's subtree: the forger holds
    A's broker password, not A's signing key; the stolen device F holds both of its own)."""
    import base64

    import paho.mqtt.client as mqtt

    d = SimDevice(f"flood-{'a' if kind == 'forged' else 'f'}", "33019999", "压测单位", "dock")
    topic = f"edge/dev/{d.id}/health"
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{kind}", protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    if cred:
        c.username_pw_set(cred["username"], cred["password"])
    c.connect("127.0.0.1", port)
    c.loop_start()
    template = json.loads(d.seal(topic, d.health()))
    body, n, t0 = d.health(), 0, time.monotonic()
    while not stop.is_set():
        if kind == "forged":
            env = dict(template, epoch=2**53 - 1, seq=2**53 - 1 - n, sig=base64.b64encode(os.urandom(64)).decode())
            payload = json.dumps(env).encode()
        else:
            payload = d.seal(topic, body)
        c.publish(topic, payload, qos=0)
        n += 1
        if n % 100 == 0:
            with counter.get_lock():
                counter.value += 100
            if rate > 0:
                ahead = n / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
    c.disconnect()
    c.loop_stop()


def flood_isolation(work: Path, interval: float = 2.0, rounds: int = 8, flood_rate: float = 0.0,
                    connections: int = 8) -> dict:
    """Forgeries in A's name and a stolen device F's genuine flood, each from its own process as
    fast as it can; B and A send genuine health every ``interval``: the monitor's delay for them."""
    import multiprocessing as mp

    import paho.mqtt.client as mqtt

    a, b, f = (SimDevice(f"flood-{x}", "33019999", "压测单位", "dock") for x in "abf")
    enrol(work / "archive", [a, b, f])
    # the forger holds A's broker password beside the genuine A: on the shipped listener (one login,
    # one session) each would end the other's connection, so it floods through a listener without
    # that binding (same identities and ACL), as on a broker configured before it
    broker = _broker(work, unbound_port=True)
    port = broker.port
    mon_log = open(work / "monitor.log", "wb")
    mon = None
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    counters_ = {k: ctx.Value("q", 0) for k in ("forged", "stolen")}
    procs = []
    try:
        mon = _monitor(work, broker, work / "archive", mon_log, connections)
        proc = psutil.Process(mon.pid)
        goods = {}
        for d in (a, b):  # each genuine device on its own connection, logged in as itself
            goods[d.id] = broker.paho(d.id, f"genuine-{d.id}")
            goods[d.id].connect("127.0.0.1", port)
            goods[d.id].loop_start()
        for d in (a, b):  # the monitor knows both devices before the attack, as in service
            topic = f"edge/dev/{d.id}/health"
            goods[d.id].publish(topic, d.seal(topic, d.health()), qos=1).wait_for_publish(10)
        deadline = time.monotonic() + 30
        while any(_health_row(work / "monitor.db", d.id)[0] is None for d in (a, b)):
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor did not apply the first genuine health of A and B")
            time.sleep(0.1)
        procs = [ctx.Process(target=_flooder, args=(broker.unbound_port if k == "forged" else port, k, stop,
                                                    counters_[k], flood_rate,
                                                    broker.credentials(a.id if k == "forged" else f.id)), daemon=True)
                 for k in counters_]
        for p in procs:
            p.start()
        time.sleep(3.0)  # the flood is on before the first genuine message
        cpu0, t0 = proc.cpu_times(), time.monotonic()
        s0 = {k: v.value for k, v in counters_.items()}
        lat: dict[str, list[float]] = {"b": [], "a": []}
        missed: dict[str, int] = {"b": 0, "a": 0}
        for k in range(1, rounds + 1):
            t_round = time.monotonic()
            pubs = {}
            for name, d in (("b", b), ("a", a)):
                h = d.health()
                h["uptime_s"] = 1_000_000 + k  # the marker this round's message carries
                topic = f"edge/dev/{d.id}/health"
                pubs[name] = time.time()
                goods[d.id].publish(topic, d.seal(topic, h), qos=1)
            pending = {"b": b.id, "a": a.id}
            deadline = time.monotonic() + max(interval, 2.0) + 1.5  # + the monitor's flush interval (1 s)
            while pending and time.monotonic() < deadline:
                time.sleep(0.05)
                for name, dev in list(pending.items()):
                    up, ts = _health_row(work / "monitor.db", dev)
                    if up is not None and up >= 1_000_000 + k:
                        lat[name].append(ts - pubs[name])  # applied by the monitor's worker at health_ts
                        del pending[name]
            for name in pending:
                missed[name] += 1
            left = interval - (time.monotonic() - t_round)
            if left > 0:
                time.sleep(left)
        window = time.monotonic() - t0
        cpu1 = proc.cpu_times()
        flood_rate_seen = {n: round((v.value - s0[n]) / window) for n, v in counters_.items()}
        stop.set()
        for p in procs:
            p.join(10)
        for g in goods.values():
            g.disconnect()
            g.loop_stop()
        time.sleep(1.5)  # one more flush
        counters = _counters(work / "monitor.db")

        def summary(xs: list[float], miss: int) -> dict:
            xs = sorted(xs)
            return {"max": round(xs[-1], 3) if xs else None, "median": round(xs[len(xs) // 2], 3) if xs else None,
                    "missed": miss}

        return {"interval_s": interval, "rounds": rounds, "flood_paced_at": flood_rate or "as fast as possible",
                "flood_published_msg_per_s": flood_rate_seen,
                "victim_b_latency_s": summary(lat["b"], missed["b"]),
                "forged_a_latency_s": summary(lat["a"], missed["a"]),
                "monitor_cpu_pct_of_one_core": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system) / window * 100, 1),
                "counters": {k: v for k, v in counters.items() if k.startswith(("rejected", "accepted", "received", "queued"))},
                "ok": missed["b"] == 0 and missed["a"] == 0 and max(lat["b"] + lat["a"]) <= interval,
                "load_average": [round(x, 1) for x in os.getloadavg()]}
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        if mon is not None and mon.poll() is None:
            mon.terminate()
            try:
                mon.wait(20)
            except subprocess.TimeoutExpired:
                mon.kill()
        broker.stop()
        mon_log.close()


def _counters(db: Path) -> dict:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT name, value FROM counters")}
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--loads", default="1,5", help="load factors (messages per second per device)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per load")
    ap.add_argument("--warmup", type=float, default=8.0, help="seconds before the window (the connect burst drains)")
    ap.add_argument("--json", nargs="?", const="-", help="write a JSON record (to stdout or PATH)")
    ap.add_argument("--only", default="verify,flood,load", help="which measurements: verify, flood, load")
    ap.add_argument("--interval", type=float, default=2.0, help="flood: seconds between genuine health messages")
    ap.add_argument("--rounds", type=int, default=8, help="flood: genuine health rounds measured")
    ap.add_argument("--flood-rate", type=float, default=0.0,
                    help="flood: messages/s per flooding connection (0: as fast as it can)")
    ap.add_argument("--connections", type=int, default=8,
                    help="load: the monitor's MQTT connections (edge-agent monitor --connections)")
    ap.add_argument("--no-presign", dest="presign", action="store_false",
                    help="load: sign each message when it is published (default: all sealed before the window)")
    a = ap.parse_args(argv)
    if not 1 <= a.devices <= 5000:
        ap.error("--devices: 1..5000")
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    if only - {"verify", "flood", "load"}:
        ap.error(f"--only: verify, flood, load (got {a.only})")
    loads = [float(x) for x in a.loads.split(",") if x.strip()] if "load" in only else []
    table = sys.stderr if a.json == "-" else sys.stdout
    verify = flood = None
    if "verify" in only:
        verify = verify_rate()
        print(f"verify: {verify['verified_per_s']} signed health msg/s ({verify['verified_per_cpu_s']} per CPU-s; "
              f"bare Ed25519 {verify['bare_ed25519_verify_per_cpu_s']}/CPU-s (OpenSSL), "
              f"{verify['bare_libsodium_verify_per_cpu_s']}/CPU-s (libsodium, what the monitor uses); "
              f"target {VERIFY_TARGET:g})", file=table)
    if "flood" in only:
        with tempfile.TemporaryDirectory(prefix="monitor-flood-") as tmp:
            flood = flood_isolation(Path(tmp), a.interval, a.rounds, a.flood_rate, a.connections)
        print(f"flood: {flood['flood_published_msg_per_s']} msg/s flooding; genuine B applied after max "
              f"{flood['victim_b_latency_s']['max']} s, A (forged in its name) max {flood['forged_a_latency_s']['max']} s "
              f"(interval {a.interval:g} s); monitor {flood['monitor_cpu_pct_of_one_core']} % of one core", file=table)
    results = []
    for load in loads:
        with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
            results.append(run_load(a.devices, load, a.seconds, a.warmup, Path(tmp), a.connections, a.presign))
    record = {"bench": "monitor_load", "target_ratio": TARGET, "cpus": os.cpu_count(),
              "machine": platform.machine(), "python": platform.python_version(), "results": results,
              "verify": verify, "flood": flood,
              "ok": all(r["ratio"] >= TARGET and r["delivered_share"] >= TARGET and r["sim_kept_up"] for r in results)
              and (verify is None or verify["ok"]) and (flood is None or flood["ok"])}
    print(f"{'load':>5} {'publish/s':>10} {'ingest/s':>9} {'ratio':>6} {'delivered':>9} {'drain s':>7} "
          f"{'CPU %':>6} {'CPU-s/1000':>10} {'RSS MiB':>8}  load avg  steal %", file=table)
    for r in results:
        print(f"{r['load']:>4g}x {r['publish_msg_per_s']:>10} {r['ingest_msg_per_s']:>9} {r['ratio']:>6} "
              f"{r['delivered_share']:>9} {r['drain_s']:>7} {r['monitor_cpu_pct_of_one_core']:>6} "
              f"{r['monitor_cpu_s_per_1000_msg']:>10} "
              f"{r['monitor_rss_mib']:>8}  {r['load_average'][0]:>8}  {r['cpu_steal_pct']:>7}", file=table)
    if a.json:
        text = json.dumps(record, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
