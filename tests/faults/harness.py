"""Fault-injection harness: a private broker, an archive receiver and edge agents as real
processes in temp dirs, faults injected on purpose, and the invariants checked afterwards.

    cl = Cluster(tmp_path).start()                 # mosquitto + `edge-agent archive serve`
    node = cl.add_node("dock-0001").start()        # `edge-agent run` (keys made and enrolled)
    ids = node.ingest(4, 1_000_000)                 # sealed items (in this process, the agent's code)
    cl.wait_transfer_started()
    node.kill(); node.start()                       # kill -9 mid-transfer, restart
    cl.wait_archived(60)
    cl.check().assert_ok()                          # exactly once, verifies, nothing lost, no corrupt

Faults offered: kill -9 of the agent (``Node.kill``), of a CLI ingest (``Node.ingest_cli(wait=False)``
or a crash point, ``EDGE_AGENT_CRASH_AT``), of the archive (``Cluster.kill_archive``), of the broker
(``Cluster.kill_broker`` / ``restart_broker(downtime=)``); a full disk (``Tmpfs``); a clock jump of
the agent's processes (``Clock``: libfaketime with a timestamp file re-read every second); network
loss between namespaces (``NetLink``: veth pair, agent in its own namespace); corrupt chunks, forged
items and items damaged at the edge (``Cluster.inject_*``).

Invariants (``Cluster.check``): every item produced at the edge (sealed: it has a chain position)
is in the archive exactly once (database row and directory), with the edge's manifest hash, and
verifies (``verify_chain`` over the archive with the enrolled keys); the edge still holds every
item it produced (its copy verifies) and its chain has no fork or hole; nothing sealed is stranded
outside the ledger; no corrupt or forged item was accepted.

Every process started here is killed at ``Cluster.close()`` (kill -9, then waited for).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from agent import config as config_mod
from agent.common.errors import EdgeError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_chain, verify_item
from agent.store.ingest import ingest
from agent.store.store import Store
from agent.wire import protocol as P
from agent.wire.topics import Topics
from tests.support.broker import Mosquitto, free_port

EDGE = str(Path(sys.executable).with_name("edge-agent"))
UNIT = "330100000000"
PREFIX = "edge"
META = {
    "case_number": "杭司罚〔2026〕第0456号",
    "collector": {"name": "李四", "id": "33010002"},
    "place": "杭州市西湖区文三路",
    "proof": "现场检查过程",
}
CAPTURED_AT = "2026-11-27T08:00:00+08:00"
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1")
ARCHIVED = ("archived", "purged")


class HarnessError(AssertionError):
    pass


def wait_for(pred: Callable[[], object], timeout: float, what: str, procs: Iterable["Proc"] = (),
             step: float = 0.1):
    """pred() until truthy (returned) or ``timeout``: then AssertionError with the log tails."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    logs = "\n".join(f"--- {p.log.name} ---\n" + p.tail(25) for p in procs)
    raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


# --- processes ---------------------------------------------------------------------------------
class Proc:
    """One real process (own session, output in a log file); ``prefix`` wraps the command line
    (e.g. ``ip netns exec NS``)."""

    def __init__(self, argv: list[str], log: Path, *, env: dict | None = None, prefix: Iterable[str] = ()):
        self.log = log
        self.argv = [*prefix, *argv]
        e = dict(os.environ)
        e.update(env or {})
        self.fh = open(log, "ab")
        self.fh.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
        self.fh.flush()
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.fh, stderr=subprocess.STDOUT,
                                  env=e, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole session (``ip netns exec`` execs, so the pid is the agent's)."""
        if self.alive():
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()
        return self.p.returncode

    def wait(self, timeout: float) -> int:
        rc = self.p.wait(timeout)
        self._close()
        return rc

    def _close(self) -> None:
        if not self.fh.closed:
            self.fh.close()

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-n:])


def edge_cli(args: list[str], *, config: Path | None = None, env: dict | None = None, prefix: Iterable[str] = (),
             timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*prefix, EDGE, *(["--config", str(config)] if config else []), *args]
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise HarnessError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


# --- fault fixtures: disk, clock, network ------------------------------------------------------
class Tmpfs:
    """A small tmpfs mounted at ``path`` (root only): a disk that fills up."""

    def __init__(self, path: Path, size_mb: int):
        self.path = path
        self.size_mb = size_mb
        path.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {path}: {p.stderr.strip()}")
        self.mounted = True

    @staticmethod
    def unavailable() -> str | None:
        if os.geteuid() != 0:
            return "mounting a tmpfs needs root"
        if not shutil.which("mount"):
            return "no mount command"
        return None

    def fill(self, leave_bytes: int, name: str = "ballast") -> Path:
        """Write a ballast file until only ``leave_bytes`` remain free."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        n = max(0, free - leave_bytes)
        p = self.path / name
        with open(p, "ab") as f:
            block = b"\0" * (1 << 20)
            while n > 0:
                try:
                    f.write(block[:min(n, len(block))])
                except OSError:
                    break
                n -= len(block)
        return p

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
            self.mounted = False


_SITECUSTOMIZE = '''"""Written by tests/faults/harness.py for processes run under libfaketime.

Python >= 3.11 sleeps with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), which libfaketime
0.9.10 breaks (EINVAL with FAKETIME_DONT_FAKE_MONOTONIC, a hang without it: libfaketime issue
#426). Sleep with select() instead; the wall clock stays faked, the monotonic clock real."""
import select as _select
import time as _time

def _sleep(secs):
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    end = _time.monotonic() + secs
    while True:
        left = end - _time.monotonic()
        if left <= 0:
            return
        _select.select([], [], [], left)

_time.sleep = _sleep
'''


class Clock:
    """The wall clock of the processes started with ``env()``, moved by ``set("+1h")`` while they
    run: libfaketime (Debian's faketime) with a timestamp file re-read every second. Only the wall
    clock jumps (like an NTP step or a wrong RTC), the monotonic clock stays real."""

    def __init__(self, workdir: Path):
        self.lib = next((p for p in FAKETIME_LIBS if os.path.exists(p)), None)
        if self.lib is None:
            raise OSError("libfaketime not installed (apt-get install faketime)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / "faketime.rc"
        (self.dir / "site").mkdir(exist_ok=True)
        (self.dir / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.offset_s = 0
        self.set("+0")

    @staticmethod
    def unavailable() -> str | None:
        if not any(os.path.exists(p) for p in FAKETIME_LIBS):
            return "libfaketime not installed (apt-get install faketime)"
        return None

    def set(self, offset: str) -> None:
        """``+1h``, ``-1h``, ``+0``, ``-30m`` ... relative to the real clock."""
        unit = {"h": 3600, "m": 60, "s": 1, "d": 86400}
        body = offset.strip()
        mult = unit.get(body[-1], 1) if body[-1].isalpha() else 1
        num = body[:-1] if body[-1].isalpha() else body
        self.offset_s = int(float(num) * mult)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.file)

    def env(self) -> dict:
        site = str(self.dir / "site")
        return {"LD_PRELOAD": self.lib, "FAKETIME_TIMESTAMP_FILE": str(self.file), "FAKETIME_CACHE_DURATION": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                "PYTHONPATH": site + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


class NetLink:
    """A veth pair between the root namespace (broker, archive) and a network namespace made for the
    agent. ``down()`` / ``up()`` cut and restore the link; only this pair's traffic is touched."""

    def __init__(self, tag: str | None = None):
        tag = tag or secrets.token_hex(2)
        self.ns = f"ea-{tag}"
        self.host_if, self.agent_if = f"ea{tag}h", f"ea{tag}a"
        used = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
        free = [n for n in range(1, 255) if f"10.213.{n}." not in used]
        if not free:
            raise OSError("no free 10.213.N.0/30 subnet for a test veth pair")
        n = free[int(tag, 16) % len(free)]
        self.host_ip, self.agent_ip = f"10.213.{n}.1", f"10.213.{n}.2"
        self._made: list[list[str]] = []
        try:
            self._ip("netns", "add", self.ns)
            self._made.append(["netns", "del", self.ns])
            self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.agent_if)
            self._made.append(["link", "del", self.host_if])
            self._ip("link", "set", self.agent_if, "netns", self.ns)
            self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            self._ip("link", "set", self.host_if, "up")
            self._ip("-n", self.ns, "addr", "add", f"{self.agent_ip}/30", "dev", self.agent_if)
            self._ip("-n", self.ns, "link", "set", self.agent_if, "up")
            self._ip("-n", self.ns, "link", "set", "lo", "up")
        except OSError:
            self.close()
            raise

    @staticmethod
    def unavailable() -> str | None:
        """None when namespaces can be made here, else the reason (for pytest.skip)."""
        if not shutil.which("ip"):
            return "iproute2 (ip) not installed"
        if os.geteuid() != 0:
            return "network namespaces need root"
        name = f"ea-probe-{secrets.token_hex(2)}"
        p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if p.returncode != 0:
            return f"cannot create a network namespace here: {p.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        return None

    def _ip(self, *args: str) -> None:
        p = subprocess.run(["ip", *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {p.stderr.strip()}")

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def down(self) -> None:
        self._ip("link", "set", self.host_if, "down")

    def up(self) -> None:
        self._ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        for cmd in reversed(self._made):
            subprocess.run(["ip", *cmd], capture_output=True)
        self._made = []


# --- one edge agent ----------------------------------------------------------------------------
class Node:
    """One edge device: config + data dir + keys (enrolled at the archive) and its `edge-agent run`."""

    def __init__(self, cluster: "Cluster", device: str, *, data_dir: Path | None = None, clock: Clock | None = None,
                 netlink: NetLink | None = None, reserve_mb: int = 1, keepalive: int = 10, kind: str = "dock",
                 **values):
        self.cluster = cluster
        self.device = device
        self.dir = cluster.tmp / device
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or (self.dir / "data")
        self.clock = clock
        self.netlink = netlink
        host, port = (netlink.host_ip, cluster.netns_port) if netlink else ("127.0.0.1", cluster.broker.port)
        if "mqtt__username" not in values and cluster.broker.identities is not None:  # the shipped broker
            values["mqtt__username"], values["mqtt__password"] = cluster.broker.identity(device, unit=UNIT)
        data = {
            "device": {"id": device, "unit_code": UNIT, "kind": kind, "location": "杭州市西湖区文三路 采集站"},
            "storage": {"data_dir": str(self.data_dir), "reserve_mb": reserve_mb, "retention_days": 7},
            "mqtt": {"host": host, "port": port, "keepalive": keepalive, "topic_prefix": PREFIX,
                     # the veth address is off the loopback: a lab's plain MQTT, said so explicitly
                     **({"allow_plaintext": True} if netlink else {})},
            "uplink": {"ack_timeout_s": 3, "chunk_size": 128 * 1024, "bandwidth_limit": 4_000_000},
            "evidence": {"block_size": 1 << 20},
            "log": {"format": "text", "level": "info"},
        }
        if kind == "dock":  # no recorder attached: the station scans an empty glob
            data["dock"] = {"bays": [str(self.dir / "no-bay-*")]}
        for dotted, v in values.items():
            s, k = dotted.split("__")
            data.setdefault(s, {})[k] = v
        self.config = self.dir / "agent.toml"
        self.config.write_text(config_mod.render_default(data), encoding="utf-8")
        self.cfg = config_mod.load(self.config)
        store = Store(self.cfg)
        try:
            if not store.key_path.exists():
                keys.generate(store.key_path, store.pub_path)
        finally:
            store.close()
        self.run_proc: Proc | None = None
        self.runs = 0
        self.ingests: list[Proc] = []
        self.corrupt: set[str] = set()  # items damaged on purpose at the edge (must be refused)
        self._src = self.dir / "src"
        self._src.mkdir(exist_ok=True)

    # processes
    def env(self) -> dict:
        return self.clock.env() if self.clock else {}

    @property
    def prefix(self) -> list[str]:
        return self.netlink.prefix if self.netlink else []

    def start(self, extra_env: dict | None = None) -> "Node":
        if self.run_proc and self.run_proc.alive():
            return self
        self.runs += 1
        env = {**self.env(), **(extra_env or {})}
        self.run_proc = Proc([EDGE, "--config", str(self.config), "run"], self.dir / f"run{self.runs}.log",
                             env=env, prefix=self.prefix)
        self.cluster.procs.append(self.run_proc)
        t0 = time.time()

        def started() -> bool:
            try:
                fresh = self.status_file().stat().st_mtime >= t0
            except OSError:
                fresh = False
            return not self.run_proc.alive() or "starting uplink" in self.run_proc.text() or fresh

        wait_for(started, 30, f"{self.device} run started", [self.run_proc])
        crash_point = bool(env.get("EDGE_AGENT_CRASH_AT"))
        if not self.run_proc.alive() and not (crash_point and self.run_proc.p.returncode == -signal.SIGKILL):
            # (a run asked to stop at a crash point may reach it before this look: that is no failure)
            raise HarnessError(f"{self.device}: edge-agent run exited at start:\n{self.run_proc.tail()}")
        return self

    def alive(self) -> bool:
        return bool(self.run_proc and self.run_proc.alive())

    def kill(self) -> None:
        """kill -9 of `edge-agent run` (and of any CLI ingest of this node still running)."""
        if self.run_proc:
            self.run_proc.kill()
        for p in self.ingests:
            p.kill()

    def stop(self) -> None:
        if self.run_proc:
            self.run_proc.stop()

    def restart(self, kill: bool = True) -> "Node":
        self.kill() if kill else self.stop()
        return self.start()

    def logs(self) -> list[Proc]:
        return [p for p in [self.run_proc, *self.ingests[-2:]] if p]

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """`edge-agent --config CONFIG ARGS...` for this node (its clock and namespace)."""
        return edge_cli(list(args), config=self.config, env=self.env(), prefix=self.prefix, timeout=timeout,
                        check=check)

    def room_status(self) -> dict:
        r = self.cli("room", "status", "--json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else {}

    def status_file(self) -> Path:
        return self.data_dir / "uplink-status.json"

    def live_status(self) -> dict:
        try:
            return json.loads(self.status_file().read_text())
        except (OSError, ValueError):
            return {}

    # producing items
    def source(self, size: int) -> Path:
        p = self._src / f"clip-{time.monotonic_ns()}-{secrets.token_hex(3)}.mp4"
        with open(p, "wb") as f:
            left = size
            while left > 0:
                n = min(left, 1 << 20)
                f.write(os.urandom(n))
                left -= n
        return p

    def ingest(self, n: int, size: int | Callable[[], int]) -> list[str]:
        """Seal ``n`` items of random content, in this process (the agent's own ingest code)."""
        ids = []
        store = Store(self.cfg)
        try:
            for _ in range(n):
                p = self.source(size() if callable(size) else size)
                try:
                    m = ingest(store, [p], dict(META, capture_start=CAPTURED_AT, capture_end=CAPTURED_AT))
                finally:
                    p.unlink(missing_ok=True)
                ids.append(m["item_id"])
        finally:
            store.close()
        return ids

    def ingest_cli(self, size: int, *, wait: bool = True, env: dict | None = None,
                   captured_at: str = CAPTURED_AT) -> "Proc | str":
        """`edge-agent ingest` as its own process (under the node's clock and namespace). With
        ``wait`` returns the item id (or raises); else the running Proc (to kill it)."""
        p = self.source(size)
        args = [EDGE, "--config", str(self.config), "ingest", str(p), "--case", META["case_number"],
                "--collector", META["collector"]["name"], "--collector-id", META["collector"]["id"],
                "--place", META["place"], "--proof", META["proof"], "--captured-at", captured_at,
                "--captured-until", captured_at, "-q", "--kind", "other"]
        proc = Proc(args, self.dir / f"ingest-{len(self.ingests) + 1}.log", env={**self.env(), **(env or {})},
                    prefix=self.prefix)
        self.ingests.append(proc)
        self.cluster.procs.append(proc)
        if not wait:
            return proc
        rc = proc.wait(120)
        p.unlink(missing_ok=True)
        out = proc.text().strip().splitlines()
        if rc != 0:
            raise HarnessError(f"ingest failed ({rc}): {out[-1] if out else ''}")
        return out[-1].strip()

    # the ledger
    def rows(self) -> list[dict]:
        db = self.data_dir / "ledger.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM items ORDER BY created_ts")]
        finally:
            con.close()

    def states(self) -> dict[str, str]:
        return {r["id"]: r["state"] for r in self.rows()}

    def produced(self) -> dict[str, dict]:
        """Items this device sealed (with a chain position), except those damaged on purpose."""
        return {r["id"]: r for r in self.rows() if r["device_seq"] is not None and r["id"] not in self.corrupt}

    def keyring(self) -> keys.KeyRing:
        ring = keys.KeyRing()
        ring.add(keys.load_public(self.data_dir / "keys" / "device.pub"), self.device)
        return ring

    def damage_item(self, item_id: str) -> None:
        """Flip one byte of a sealed item's file at the edge (disk rot / tampering before upload)."""
        row = next(r for r in self.rows() if r["id"] == item_id)
        f = next((Path(row["path"]) / mf.FILES_DIR).iterdir())
        with open(f, "r+b") as fh:
            fh.seek(f.stat().st_size // 2)
            b = fh.read(1)
            fh.seek(-1, os.SEEK_CUR)
            fh.write(bytes([b[0] ^ 0xFF]))
        self.corrupt.add(item_id)


# --- checking ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    produced: int = 0
    archived: int = 0
    lost: int = 0
    duplicates: int = 0
    corrupt_injected: int = 0
    corrupt_accepted: int = 0
    corrupt_refused: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    def assert_ok(self) -> "Outcome":
        if self.problems or self.lost or self.corrupt_accepted or self.duplicates:
            raise HarnessError(f"invariants broken ({self.counts()}):\n  " + "\n  ".join(self.problems[:30]))
        return self

    def counts(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "problems"}


class Rogue:
    """A misbehaving client on the broker: publishes corrupt chunks and forged items on a device's
    transfer topics and collects the archive's answers. One per injection (``with Rogue(...)``):
    connected and subscribed (CONNACK and SUBACK awaited) before it publishes."""

    def __init__(self, port: int, dev: str, host: str = "127.0.0.1", timeout: float = 20,
                 login: tuple[str, str] | None = None):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.answers: dict[bytes, P.Answer] = {}
        self.cv = threading.Condition()
        self.topics = Topics(PREFIX)
        self.dev = dev
        self.ack = self.topics.ack(dev)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rogue-{secrets.token_hex(3)}",
                             protocol=mqtt.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *a: self._subscribed.set()
        self.c.on_disconnect = lambda *a: self._subscribed.clear()
        self.reconnects = 0
        if login:  # on the shipped broker: the device's own password (a thief's, with the key)
            self.c.username_pw_set(*login)
        self.c.connect(host, port, keepalive=30)
        self.c.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise HarnessError(f"rogue client: no CONNACK from the broker within {timeout:.0f} s")
        if not self._subscribed.wait(timeout):
            self.close()
            raise HarnessError(f"rogue client: no SUBACK for {self.ack} within {timeout:.0f} s")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        """(Re)subscribe on every CONNACK: holding the device's own login, the rogue and the running
        agent end each other's session (one login, one session) and paho reconnects it clean."""
        if getattr(reason_code, "is_failure", False):
            return
        if self._connected.is_set():
            self.reconnects += 1
        self._connected.set()
        client.subscribe(self.ack, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if not corr or not bytes(corr).startswith(b"rogue-"):
            return
        try:
            ans = P.parse_answer(msg.payload)
        except P.ProtocolError:
            return
        with self.cv:
            self.answers[bytes(corr)] = ans
            self.cv.notify_all()

    def request(self, item: str, kind: str, payload: bytes, user_props: list[tuple[str, str]],
                timeout: float = 30) -> P.Answer:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        # with the device's own login beside its running agent the session may be taken between the
        # request and its answer (the answer then goes nowhere): sent again, a few times, each on
        # the session then held (the archive answers a repeated request the same way)
        deadline = time.monotonic() + timeout
        while True:
            corr = b"rogue-" + secrets.token_hex(6).encode()
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user_props
            props.ResponseTopic = self.ack
            props.CorrelationData = corr
            self._subscribed.wait(max(0.0, deadline - time.monotonic()))
            try:
                self.c.publish(self.topics.xfer(self.dev, item, kind), payload, qos=1,
                               properties=props).wait_for_publish(10)
            except (RuntimeError, ValueError):  # not connected at that moment: once the session is back
                if time.monotonic() >= deadline:
                    raise HarnessError(f"rogue {kind} of {item}: not connected within {timeout:.0f} s") from None
                time.sleep(0.1)
                continue
            with self.cv:
                self.cv.wait_for(lambda: corr in self.answers, min(8.0, max(0.0, deadline - time.monotonic())))
                ans = self.answers.get(corr)
            if ans is not None:
                return ans
            if time.monotonic() >= deadline:
                raise HarnessError(f"no answer from the archive to the rogue {kind} of {item} within {timeout:.0f} s "
                                   f"({self.reconnects} reconnects of the rogue)")

    def close(self) -> None:
        self.c.loop_stop()
        try:
            self.c.disconnect()
        except Exception:
            pass

    def __enter__(self) -> "Rogue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Cluster:
    """A private Mosquitto, one archive receiver (``edge-agent archive serve``) and edge nodes."""

    def __init__(self, tmp: Path, *, netlink: NetLink | None = None, broker_extra: Iterable[str] = (),
                 shipped: bool = True):
        """``shipped``: the broker as shipped (anonymous off, the generated ACL, one login = one
        session; each agent and the archive log in with an identity of their own); False: an
        open broker (anyone publishes anything), for trials that inject as a stranger."""
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.root = self.tmp / "archive"
        self.netlink = netlink
        self.netns_port = free_port() if netlink else None
        extra = list(broker_extra)
        if netlink:  # a second listener on the veth address, for the agent in its namespace
            extra += ["", f"listener {self.netns_port} {netlink.host_ip}",
                      *(["use_username_as_clientid true"] if shipped else [])]
        self.broker = Mosquitto(self.tmp / "mosquitto", extra_config=extra, shipped=shipped)
        self.archive: Proc | None = None
        self.archives = 0
        self.nodes: list[Node] = []
        self.procs: list[Proc] = []
        self.forged: set[str] = set()     # item ids a rogue tried to slip in
        self.corrupt_refused = 0
        self.extra: list = []             # other things to close (Tmpfs, Clock ...)

    # lifecycle
    def start(self) -> "Cluster":
        self.broker.start()
        self.root.mkdir(exist_ok=True)
        self.start_archive()
        return self

    def add_node(self, device: str = "dock-0001", **kw) -> Node:
        node = Node(self, device, netlink=kw.pop("netlink", self.netlink), **kw)
        edge_cli(["archive", "enroll", device, str(node.data_dir / "keys" / "device.pub"), "--unit", UNIT,
                  "--root", str(self.root), "--pin-to", str(node.data_dir)])
        self.nodes.append(node)
        return node

    def start_archive(self, env: dict | None = None) -> Proc:
        self.archives += 1
        name = f"archive{self.archives}"
        auth = []
        if self.broker.identities is not None:  # its own archive identity on the shipped broker
            user, password = self.broker.identity("archive-main", "archive")
            cred = self.tmp / "archive-main.toml"
            cred.write_text(f'[mqtt]\nusername = "{user}"\npassword = "{password}"\n', encoding="utf-8")
            cred.chmod(0o600)
            auth = ["--config", str(cred)]
        p = Proc([EDGE, *auth, "archive", "serve", "--root", str(self.root), "--broker",
                  f"127.0.0.1:{self.broker.port}", "--prefix", PREFIX, "--client-id", "archive-main"],
                 self.tmp / f"{name}.log", env=env)
        self.procs.append(p)
        self.archive = p
        wait_for(lambda: "connected to" in p.text() or not p.alive(), 20, "archive connected", [p])
        if not p.alive():
            raise HarnessError(f"archive serve exited:\n{p.tail()}")
        return p

    def kill_archive(self) -> None:
        if self.archive:
            self.archive.kill()

    def restart_archive(self, downtime: float = 0.0, env: dict | None = None) -> Proc:
        self.kill_archive()
        if downtime:
            time.sleep(downtime)
        return self.start_archive(env)

    def kill_broker(self) -> None:
        self.broker.kill()

    def restart_broker(self, downtime: float = 0.0) -> None:
        self.broker.restart(kill=True, downtime=downtime)

    def close(self) -> None:
        for p in self.procs:
            p.kill()
        self.broker.kill()
        for x in self.extra:
            try:
                x.close()
            except Exception:
                pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def logs(self) -> list[Proc]:
        out = [self.archive] if self.archive else []
        for n in self.nodes:
            out += n.logs()
        return out

    # archive side
    def archive_rows(self) -> list[dict]:
        db = self.root / "archive.db"
        if not db.exists():
            return []
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM items")]
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def held_bytes(self, items: Iterable[str] | None = None) -> int:
        """Bytes the archive holds: ranges of transfers under way + stored items (of ``items`` only,
        when given)."""
        db = self.root / "archive.db"
        ids = list(items) if items is not None else None
        where = f" WHERE item IN ({','.join('?' * len(ids))})" if ids else (" WHERE 0" if ids is not None else "")
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                a = con.execute("SELECT coalesce(sum(end - start), 0) FROM ranges" + where, ids or ()).fetchone()[0]
                b = con.execute("SELECT coalesce(sum(size), 0) FROM items" + where, ids or ()).fetchone()[0]
            finally:
                con.close()
            return a + b
        except sqlite3.Error:
            return 0

    def partial_bytes(self) -> int:
        db = self.root / "archive.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return con.execute("SELECT coalesce(sum(end - start), 0) FROM ranges").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    def archive_copies(self) -> dict[str, int]:
        """item id -> number of directories holding it under ROOT/UNIT (not _tmp/_quarantine)."""
        out: dict[str, int] = {}
        for m in self.root.rglob(mf.MANIFEST):
            rel = m.relative_to(self.root).parts
            if rel[0].startswith("_") or mf.ANNOTATIONS_DIR in rel:
                continue
            out[m.parent.name] = out.get(m.parent.name, 0) + 1
        return out

    def ring(self) -> keys.KeyRing:
        return keys.KeyRing.from_paths(keys_dir=self.root / "keys")

    # waiting
    def wait_transfer_started(self, timeout: float = 30, min_bytes: int = 1) -> None:
        """Until the archive holds part of an item that it has not stored yet (mid-transfer)."""
        wait_for(lambda: self.partial_bytes() >= min_bytes, timeout, "a transfer under way", self.logs(), step=0.02)

    def settled(self) -> bool:
        for n in self.nodes:
            for r in n.rows():
                if r["device_seq"] is None:
                    continue
                if r["id"] in n.corrupt:
                    if r["state"] != "rejected":
                        return False
                elif r["state"] not in ARCHIVED:
                    return False
        return True

    def wait_archived(self, timeout: float = 60) -> None:
        wait_for(self.settled, timeout, "every produced item archived", self.logs(), step=0.2)

    # the invariants
    def check(self) -> Outcome:
        out = Outcome()
        ring = self.ring()
        arch = self.archive_rows()
        by_item: dict[str, list[dict]] = {}
        for r in arch:
            by_item.setdefault(r["item"], []).append(r)
        copies = self.archive_copies()
        produced_all: dict[str, tuple[Node, dict]] = {}
        holes: dict[str, set[int]] = {}
        for n in self.nodes:
            rows = n.rows()
            seqs = sorted(r["device_seq"] for r in rows if r["device_seq"] is not None)
            if seqs != list(range(1, len(seqs) + 1)):
                out.problems.append(f"{n.device}: the edge chain is not 1..{len(seqs)} (fork or hole): {seqs[:20]}")
            holes[n.device] = {r["device_seq"] for r in rows if r["id"] in n.corrupt}
            for r in rows:
                if r["device_seq"] is not None and r["id"] not in n.corrupt:
                    produced_all[r["id"]] = (n, r)
            # sealed on disk but not in the ledger: stranded evidence
            known_sealed = {r["id"] for r in rows if r["device_seq"] is not None}
            for sub in ("items", "incoming"):
                d = n.data_dir / "spool" / sub
                if not d.is_dir():
                    continue
                for item_dir in d.iterdir():
                    if (item_dir / mf.MANIFEST).is_file() and item_dir.name not in known_sealed:
                        out.problems.append(f"{n.device}: {item_dir.name} is sealed on disk but not in the ledger")
                        out.lost += 1
            # the edge still holds what it produced (local copies kept for the retention time)
            try:
                nring = n.keyring()
            except (OSError, EdgeError) as exc:
                out.problems.append(f"{n.device}: device key unreadable: {exc}")
                continue
            for r in rows:
                if r["device_seq"] is None or r["id"] in n.corrupt or r["state"] == "purged":
                    continue
                try:
                    verify_item(Path(r["path"]), nring)
                except (EdgeError, OSError) as exc:
                    out.problems.append(f"{n.device}: edge copy of {r['id']} does not verify: {exc}")
        out.produced = len(produced_all)
        for item, (n, r) in produced_all.items():
            rows_a = by_item.get(item, [])
            ncopy = copies.get(item, 0)
            if not rows_a and not ncopy:
                out.lost += 1
                out.problems.append(f"{n.device}: {item} (seq {r['device_seq']}, state {r['state']}) not in the archive")
                continue
            if len(rows_a) != 1 or ncopy != 1:
                out.duplicates += 1
                out.problems.append(f"{item}: {len(rows_a)} archive rows, {ncopy} directories (want 1 and 1)")
            if rows_a and r["manifest_hash"] and rows_a[0]["manifest_hash"] != r["manifest_hash"]:
                out.problems.append(f"{item}: archive manifest hash differs from the edge's")
            out.archived += 1
        # corrupt / forged / unknown items in the archive
        corrupt = set(self.forged)
        for n in self.nodes:
            corrupt |= n.corrupt
        out.corrupt_injected = len(corrupt)
        out.corrupt_refused = self.corrupt_refused
        for item in set(by_item) | set(copies):
            if item in corrupt:
                out.corrupt_accepted += 1
                out.problems.append(f"{item}: a corrupt item was accepted by the archive")
            elif item not in produced_all:
                out.corrupt_accepted += 1
                out.problems.append(f"{item}: in the archive but never produced at the edge")
        # everything in the archive verifies, and each device's chain holds
        units = self.root / UNIT
        if units.is_dir():
            if not any(holes.values()):
                try:
                    verify_chain(units, ring)
                except (EdgeError, OSError) as exc:
                    out.problems.append(f"verify_chain over the archive: {exc}")
            else:
                out.problems += self._chain_with_holes(units, ring, holes)
        return out

    def _chain_with_holes(self, root: Path, ring: keys.KeyRing, holes: dict[str, set[int]]) -> list[str]:
        """verify_chain's rules, except that positions of items damaged on purpose may be missing."""
        from agent.evidence.verify import find_items

        problems = []
        reps = []
        for d in find_items(root):
            try:
                reps.append(verify_item(d, ring))
            except (EdgeError, OSError) as exc:
                problems.append(f"{d.name}: does not verify in the archive: {exc}")
        by_dev: dict[str, list] = {}
        for r in reps:
            by_dev.setdefault(r.device_id, []).append(r)
        for dev, rs in by_dev.items():
            rs.sort(key=lambda r: r.device_seq)
            allowed = holes.get(dev, set())
            expect = 1
            prev = None
            for r in rs:
                while expect in allowed and expect < r.device_seq:
                    expect += 1
                    prev = None
                if r.device_seq != expect:
                    problems.append(f"device {dev}: seq {expect} missing in the archive (next {r.device_seq})")
                elif prev is not None and r.prev_manifest_hash != prev.manifest_hash:
                    problems.append(f"device {dev}: {r.item_id} does not chain to {prev.item_id}")
                prev, expect = r, r.device_seq + 1
        return problems

    # corrupt input
    def rogue(self, node: Node) -> Rogue:
        login = self.broker.identity(node.device, unit=UNIT) if self.broker.identities is not None else None
        return Rogue(self.broker.port, node.device, login=login)

    def _genuine_item(self, node: Node, size: int) -> tuple[Path, dict, bytes, bytes]:
        """A genuinely signed item of ``node`` (its real key) at a chain position far beyond its
        head, made in a scratch store: what a thief with the key, or a replaying rogue, could send."""
        scratch = self.tmp / f"scratch-{secrets.token_hex(3)}"
        cfg_path = scratch / "agent.toml"
        scratch.mkdir()
        data = {"device": {"id": node.device, "unit_code": UNIT},
                "storage": {"data_dir": str(scratch / "data"), "reserve_mb": 0}}
        cfg_path.write_text(config_mod.render_default(data), encoding="utf-8")
        st = Store(config_mod.load(cfg_path))
        try:
            (st.data_dir / "keys").mkdir(exist_ok=True)
            for name in ("device.key", "device.pub"):
                shutil.copy2(node.data_dir / "keys" / name, st.data_dir / "keys" / name)
            os.chmod(st.data_dir / "keys" / "device.key", 0o600)
            st.ledger.set_meta("head_seq", str(100_000 + secrets.randbelow(100_000)))
            st.ledger.set_meta("head_hash", secrets.token_hex(32))
            src = scratch / "clip.mp4"
            src.write_bytes(os.urandom(size))
            m = ingest(st, [src], dict(META, capture_start=CAPTURED_AT, capture_end=CAPTURED_AT))
            d = st.item_dir(m["item_id"])
            return d, m, (d / mf.MANIFEST).read_bytes(), (d / mf.SIGNATURE).read_bytes()
        finally:
            st.close()

    def inject_corrupt_chunk(self, node: Node) -> P.Answer:
        """A chunk whose bytes do not match its sha256 property: refused with "error"."""
        d, m, mbytes, sig = self._genuine_item(node, 200_000)
        item = m["item_id"]
        self.forged.add(item)
        with self.rogue(node) as rogue:
            a = rogue.request(item, "manifest", mbytes, P.manifest_props(sig))
            if a.status != P.RECEIVING:
                raise HarnessError(f"rogue manifest of {item}: {a.status} {a.reason}")
            f = m["files"][0]
            data = (d / mf.FILES_DIR / f["name"]).read_bytes()[:65536]
            props = P.chunk_props(f["name"], 0, data)
            bad = bytearray(data)
            bad[100] ^= 0x01
            ans = rogue.request(item, "chunk", bytes(bad), props)
        if ans.status in (P.ERROR, P.REJECTED):
            self.corrupt_refused += 1
        return ans

    def inject_forged_manifest(self, node: Node) -> P.Answer:
        """A manifest altered after signing (another case number): refused at once."""
        d, m, mbytes, sig = self._genuine_item(node, 100_000)
        item = m["item_id"]
        self.forged.add(item)
        doc = json.loads(mbytes)
        doc["metadata"]["case_number"] = "杭司罚〔2026〕第9999号"
        forged = json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
        with self.rogue(node) as rogue:
            ans = rogue.request(item, "manifest", forged, P.manifest_props(sig))
        if ans.status == P.REJECTED:
            self.corrupt_refused += 1
        return ans

    def inject_swapped_content(self, node: Node) -> P.Answer:
        """A genuinely signed manifest, then other content (each chunk with a correct sha256 of
        the wrong bytes), then finish: the archive must not store it. A chunk whose bytes are not
        the sealed block is refused on arrival (answered "error" naming the range); returns that
        answer, else finish's ("rejected", or "incomplete")."""
        d, m, mbytes, sig = self._genuine_item(node, 300_000)
        item = m["item_id"]
        self.forged.add(item)
        with self.rogue(node) as rogue:
            a = rogue.request(item, "manifest", mbytes, P.manifest_props(sig))
            if a.status != P.RECEIVING:
                raise HarnessError(f"rogue manifest of {item}: {a.status} {a.reason}")
            files = m["files"]
            refused = None
            for f in files:
                data = bytearray((d / mf.FILES_DIR / f["name"]).read_bytes())
                data[len(data) // 3] ^= 0x55
                for off in range(0, len(data), 65536):
                    piece = bytes(data[off:off + 65536])
                    ans = rogue.request(item, "chunk", piece, P.chunk_props(f["name"], off, piece))
                    if ans.status == P.ERROR:
                        refused = refused or ans
                    elif ans.status != P.OK:
                        raise HarnessError(f"rogue chunk: {ans.status} {ans.reason}")
            ans = rogue.request(item, "finish", P.finish_payload(files, []), [("proto", P.PROTO)])
        # refused either for good (rejected, quarantined) or as content to send again (incomplete)
        if ans.status in (P.REJECTED, P.INCOMPLETE):
            self.corrupt_refused += 1
        return refused or ans

    def quarantined(self) -> list[dict]:
        db = self.root / "archive.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM quarantine ORDER BY id")]
        finally:
            con.close()

