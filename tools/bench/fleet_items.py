"""Small items during the fleet benchmark's monitor window (tools/bench/fleet.py, issue 17): the
1,000-device monitor load and the archive receivers at the same time, on the same broker.

Reuses tools/scale_sim whole, no second uplink: the item devices are scale_sim's devices (their
own data directory, ledger and key, items sealed by the library, ``agent.store.ingest``), each
uploading with the agent's real transfer (tools/scale_sim/publisher.py) logged in as itself, to K
real ``edge-agent archive serve --share`` receivers, receiver k enrolled as ``rx-k`` with a key and
a broker identity of its own (`archive receiver add`); after each run every item is checked stored
exactly once, verifying, and held archived on its device with a receipt signed by the receiver that
stored it (tools/scale_sim/check.py).

One archive root holds every enrolment: the item devices and receivers (scale_sim's template) and
the fleet_sim devices and probes (their simulator keys), so the shipped broker (`archive
broker-config` from that root) gives each of them an identity and the monitor verifies them all.
The item devices are identities of their own beside the fleet's: the shipped broker binds one
login to one session, so a fleet_sim device cannot also upload over a second connection.

    prep = ItemFleet(work / "items", devices=50, items=6, item_kib=128, receivers=3)
    prep.prepare(fleet + probes)                 # sealed items, receivers, every enrolment
    root = prep.restore()                        # before each run: the monitor's and broker's root
    monitor_run(..., root, ..., during=prep.during(k=1, db=None))

``during(k, db)`` returns the hook fleet.monitor_run calls at the start of its measured window with
the running broker (``start``) and after it (``join``: the archive figures of the run).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


class ItemFleet:
    def __init__(self, base: Path, devices: int, items: int, item_kib: int, receivers: int, workers: int | None = None):
        from tools.scale_sim import DEVICES_PER_WORKER, MAX_DEVICES

        if not 1 <= devices <= MAX_DEVICES:
            raise ValueError(f"--archive-devices {devices}: 1..{MAX_DEVICES}")
        self.base, self.devices, self.items, self.item_kib = Path(base), devices, items, item_kib
        self.receivers = receivers
        self.workers = workers or min(64, max(2, -(-devices // DEVICES_PER_WORKER)))
        self.fleet: dict | None = None

    @property
    def root(self) -> Path:
        return self.base / "archive"

    def prepare(self, sim_devices) -> dict:
        """Seal the items (scale_sim.fleet.make_fleet: receivers rx-1..K enrolled, each item device
        enrolled and pinning their keys) and enrol the fleet_sim devices in the same template."""
        from tools.fleet_devices import enrol
        from tools.scale_sim.fleet import make_fleet

        self.base.mkdir(parents=True, exist_ok=True)
        self.fleet = make_fleet(self.base, self.devices, self.items, self.item_kib * 1024, receivers=self.receivers)
        enrol(self.base / "archive-template", list(sim_devices))
        return self.fleet

    def restore(self) -> Path:
        """The fleet and the archive as before any upload; returns the root (monitor, broker, receivers)."""
        from tools.scale_sim.fleet import restore

        return restore(self.base)

    def during(self, k: int, db: str | None = None, timeout: float = 600) -> "Uploads":
        assert self.fleet is not None, "prepare() first"
        return Uploads(self, k, db, timeout)


class Uploads:
    """The item devices' uploads to K receivers, in a thread, through the broker the monitor run started."""

    def __init__(self, prep: ItemFleet, k: int, db: str | None, timeout: float):
        self.prep, self.k, self.db, self.timeout = prep, k, db, timeout
        self._thread: threading.Thread | None = None
        self._result: dict | None = None
        self._error: BaseException | None = None

    def start(self, broker) -> None:
        from tools.scale_sim.run import run_once

        def go() -> None:
            try:
                self._result = run_once(self.prep.base, self.prep.fleet, self.k, self.prep.workers, self.timeout,
                                        label=f"k{self.k}-{'pg' if self.db else 'sqlite'}", db=self.db,
                                        dev_opts={"ramp_s": min(5.0, self.prep.devices / 100)}, broker=broker)
            except BaseException as exc:  # noqa: BLE001 - raised again in join()
                self._error = exc

        self._thread = threading.Thread(target=go, name="fleet-items", daemon=True)
        self._thread.start()

    def join(self, window_end: float) -> dict:
        """Waits for the uploads and the check; their figures, with how much of the upload fell in
        the monitor's window (``window_end``: time.monotonic() when it closed)."""
        assert self._thread is not None
        self._thread.join(self.timeout + 300)
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("the item uploads did not finish")
        r = self._result
        u0, u1 = r["upload_monotonic"]  # the publishers' start and the last item stored
        keep = ("receivers", "items", "stored", "mb", "wall_s", "items_s", "mb_s", "steady_items_s", "steady_mb_s",
                "receiver_cpu_s_total", "mb_per_receiver_cpu_s", "retransmits", "items_per_receiver",
                "device_item_latency_s", "pg", "ok", "at_utc", "load_average")
        out = {x: r.get(x) for x in keep}
        out.update(index="postgresql" if self.db else "sqlite", devices=self.prep.devices,
                   items_per_device=self.prep.items, item_kib=self.prep.item_kib,
                   receipts=r["check"].get("receipts"), receipt_keys=r["check"].get("receipt_keys"),
                   problems=r["check"].get("problems", [])[:5],
                   within_window=u1 <= window_end,
                   window_overlap=round(max(0.0, min(window_end, u1) - u0) / (u1 - u0), 2) if u1 > u0 else None)
        return out


def runs(fleet_mod, a, fleet, probes, work: Path, receivers: list[int], backends: list[str], say) -> list[dict]:
    """fleet.py's concurrent mode: for each backend and each K, one monitor run whose measured
    window carries the item uploads; the monitor's figures with the archive's under ``archive``."""
    from agent.common.pg import create_database, drop_database

    prep = ItemFleet(work / "items", a.archive_devices, a.items, a.item_kib, max(receivers))
    t = time.monotonic()
    prep.prepare(fleet + probes)
    say(f"items: {a.archive_devices} devices x {a.items} items x {a.item_kib} KiB sealed, {max(receivers)} receivers "
        f"and {len(fleet) + len(probes)} fleet devices enrolled in {time.monotonic() - t:.1f} s")
    out = []
    for b in backends:
        for k in receivers:
            root = prep.restore()
            db, arc = str(work / f"monitor-{b}-{k}.db"), None
            if b == "postgresql":
                head, _, name = a.pg.rpartition("/")
                db = f"{head}/{name}_mon_{k}_{int(time.time())}"
                arc = f"{a.pg}_arc"
                create_database(db)
            try:
                r = fleet_mod.monitor_run(b, db, fleet, probes, root, work / f"mon-{b}-{k}", units=a.units,
                                          rate=a.rate, warmup=a.warmup, seconds=a.seconds, alarm_every=a.alarm_every,
                                          flap_every=a.flap_every, probe_every=a.probe_every, flush_s=a.flush_s,
                                          presign=a.presign, say=say, during=prep.during(k, arc))
            finally:
                if b == "postgresql":
                    drop_database(db)
            x = r["archive"]
            say(f"{b}, K={k}: monitor {r['accepted_msg_s']} msg/s, lost {r['lost']}, latency p50 "
                f"{r['latency_s']['p50']} p99 {r['latency_s']['p99']} s; archive {x['stored']}/{x['items']} items, "
                f"{x['items_s']} items/s, {x['mb_s']} MB/s, {x['receipts']} receipts, "
                f"{'OK' if x['ok'] else 'FAILED'}, in the window: {x['window_overlap']}")
            out.append(r)
    return out


def table(rows: list[dict]) -> str:
    """One line per run: the monitor's and the archive's figures side by side (same window)."""
    lines = ["| index | receivers | devices (+ item devices) | accepted msg/s | lost | status-to-view p50 / p99 (s) "
             "| items stored | items/s | MB/s | receiver CPU s | receipts checked | upload in window | ok |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        x, lat = r["archive"], r["latency_s"]
        lines.append(f"| {r['db']} | {x['receivers']} | {r['devices']} (+{x['devices']}) | {r['accepted_msg_s']} | "
                     f"{r['lost']} | {lat['p50']} / {lat['p99']} | {x['stored']}/{x['items']} × {x['item_kib']} KiB | "
                     f"{x['items_s']} | {x['mb_s']} | {x['receiver_cpu_s_total']} | {x['receipts']} | "
                     f"{x['window_overlap']} | {'yes' if x['ok'] and r['lost'] == 0 else 'NO'} |")
    return "\n".join(lines)
