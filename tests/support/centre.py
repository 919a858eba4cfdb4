"""A centre of several hosts on one machine: brokers, receivers, one PostgreSQL, one storage.

    with Centre(tmp_path, devices=["dock-0001", ...], brokers=1, receivers=3) as c:
        node = c.add_node("dock-0001").start()        # `edge-agent run` (as tests/faults/harness.py)
        c.kill_receiver(0); c.start_receiver(0)        # SIGKILL, restart
        c.wait_archived(120); c.check().assert_ok()    # the harness's invariants, on PostgreSQL

Each receiver is `edge-agent archive serve --db postgresql://... --share archive` as its own
process with its own client id, logged in as the archive's broker identity (password file and
ACL from ``agent.wire.broker_auth.generate``: anonymous off). With ``own_identities`` each
receiver is enrolled as production does it: `archive receiver add RID` (its own signing key),
`archive broker-config` (its own broker user, the ACL of the archive), `archive enroll --pin-to
--broker-dir` for each device (the device pins every receiver's key; the broker files refreshed
and the brokers reloaded), and `archive serve --client-id RID --receiver-key RID.key` logged in
with ``credentials/RID.toml``; its brokers then bind each login to one session on every listener
(``use_username_as_clientid true``, as the generated mosquitto.conf does), so each receiver's and
the monitor's connections must each hold a login of their own. Without ``own_identities`` the
receivers share the ``archive`` login, which only a broker without that binding admits side by
side (the brokers are then started without it). Where network namespaces can be
made (root, iproute2) each receiver runs in its own namespace behind a veth pair: its own host
on the network, reaching its broker on the veth address and PostgreSQL through a TCP relay on
that address (PostgreSQL here listens on 127.0.0.1 only). The storage (the archive root) is one
directory every receiver writes: a shared mount's stand-in. Devices stay in the root namespace.
Several brokers (independent Mosquittos) each get their own receivers; a device's config lists
them in order (``mqtt.host``/``mqtt.port`` first, then ``mqtt.fallback``).
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import uuid
from pathlib import Path

import psycopg

from agent.wire import broker_auth
from tests.faults.harness import (EDGE, PREFIX, UNIT, Cluster, HarnessError, NetLink, Node, Proc, edge_cli,
                                  wait_for)
from tests.support.broker import Mosquitto, free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Relay:
    """TCP relay listen_host:port -> 127.0.0.1:target_port (one thread pair per connection)."""

    def __init__(self, listen_host: str, target_port: int):
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                a.close()
                continue
            b.settimeout(None)
            for s, d in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(s, d), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):  # one side gone (a receiver killed): the other learns it at once
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Receiver:
    """One receiver host: its namespace (or none), its broker, its process."""

    def __init__(self, centre: "Centre", n: int, broker: int, netlink: NetLink | None):
        self.centre, self.n, self.broker, self.netlink = centre, n, broker, netlink
        self.name = f"rx-{broker + 1}-{n + 1}"
        self.proc: Proc | None = None
        self.starts = 0
        self.relay = Relay(netlink.host_ip, 5432) if netlink else None

    def db_url(self) -> str:
        if self.relay is None:
            return self.centre.db
        return self.centre.db.replace("127.0.0.1:5432", f"{self.netlink.host_ip}:{self.relay.port}")

    def broker_addr(self) -> str:
        mq = self.centre.brokers[self.broker]
        if self.netlink:
            return f"{self.netlink.host_ip}:{self.centre.ns_ports[self.broker]}"
        return f"127.0.0.1:{mq.port}"

    def _spawn(self) -> Proc:
        self.starts += 1
        c = self.centre
        cfg, key = c.archive_cfg, []
        if c.own_identities:  # its own broker user and its own signing key
            cfg = c.auth.out / "credentials" / f"{self.name}.toml"
            key = ["--receiver-key", str(c.root / "_archive" / "receivers" / f"{self.name}.key")]
        if self.netlink:  # its broker on the veth address, off the loopback: a lab's plain MQTT, said so
            lab = c.tmp / f"{self.name}-lab.toml"
            lab.write_text(Path(cfg).read_text(encoding="utf-8") + "allow_plaintext = true\n", encoding="utf-8")
            lab.chmod(0o600)
            cfg = lab
        p = Proc([EDGE, "--config", str(cfg), "archive", "serve", "--root", str(c.root), "--db",
                  self.db_url(), "--broker", self.broker_addr(), "--prefix", PREFIX, "--share", "archive",
                  "--client-id", self.name, *key], c.tmp / f"{self.name}.log",
                 prefix=self.netlink.prefix if self.netlink else ())
        c.procs.append(p)
        self.proc = p
        return p

    def start(self) -> Proc:
        try:
            self._mark = len(self.centre.tmp.joinpath(f"{self.name}.log").read_bytes())
        except OSError:
            self._mark = 0
        return self._spawn()

    def connected(self) -> bool:
        """Alive and connected to its broker since its latest start."""
        p = self.proc
        if p is None or not p.alive():
            return False
        try:
            return b"connected to" in p.log.read_bytes()[self._mark:]
        except OSError:
            return False

    def wait_connected(self, timeout: float = 60) -> None:
        p = self.proc
        wait_for(lambda: self.connected() or not p.alive(), timeout, f"{self.name} connected", [p])
        if not p.alive():
            raise HarnessError(f"{self.name} exited:\n{p.tail()}")

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()


class Centre(Cluster):
    """Brokers x receivers against one PostgreSQL and one storage; nodes as in the fault harness."""

    def __init__(self, tmp: Path, *, devices: list[str], brokers: int = 1, receivers: int = 3,
                 namespaces: bool = True, own_identities: bool = False):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.root = self.tmp / "archive"
        self.netlink = None
        self.netns_port = None
        self.archive = None
        self.archives = 0
        self.nodes: list[Node] = []
        self.procs: list[Proc] = []
        self.forged: set[str] = set()
        self.corrupt_refused = 0
        self.extra: list = []
        self.devices = devices
        self.own_identities = own_identities
        self.namespaces = namespaces and NetLink.unavailable() is None
        self.dbname = "edge_centre_" + uuid.uuid4().hex[:10]
        self.db = f"postgresql://postgres@127.0.0.1:5432/{self.dbname}"
        self.auth = broker_auth.generate(self.tmp / "auth", devices, prefix=PREFIX)
        self.passwords = {i.name: i.password for i in self.auth.identities}
        self.archive_cfg = self.auth.credentials["archive"]
        self.links = [[NetLink(secrets.token_hex(2)) if self.namespaces else None for _ in range(receivers)]
                      for _ in range(brokers)]
        self.extra += [nl for row in self.links for nl in row if nl]
        self.ns_ports = [free_port() for _ in range(brokers)]
        self.brokers: list[Mosquitto] = []
        bind = ["use_username_as_clientid true"] if own_identities else []  # one login, one session
        for b in range(brokers):
            listeners = [line for nl in self.links[b] if nl
                         for line in ("", f"listener {self.ns_ports[b]} {nl.host_ip}", *bind)]
            self.brokers.append(Mosquitto(self.tmp / f"mosquitto-{b + 1}", password_file=self.auth.passwd,
                                          acl_file=self.auth.acl, extra_config=listeners, listener_config=bind))
        self.broker = self.brokers[0]
        self.receivers = [Receiver(self, n, b, self.links[b][n]) for b in range(brokers) for n in range(receivers)]

    def start(self) -> "Centre":
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.dbname}")
        edge_cli(["archive", "db", "upgrade", "--db", self.db])
        self.root.mkdir(exist_ok=True)
        if self.own_identities:
            self._enrol_receivers()
        for mq in self.brokers:
            mq.start()
        for r in self.receivers:
            r.start()
        for r in self.receivers:
            r.wait_connected()
        return self

    def _enrol_receivers(self) -> None:
        """`archive receiver add` for each receiver (a process each, side by side), then `archive
        broker-config`: the services' and the receivers' identities (the devices come back with
        their kept passwords when each is enrolled with --broker-dir)."""
        env = {"EDGE_ARCHIVE_DB": self.db}  # the commands without --db read the index from here
        edge_cli(["archive", "receiver", "add", self.receivers[0].name, "--root", str(self.root)], env=env)
        errors: list[Exception] = []

        def add(r: Receiver) -> None:
            try:
                edge_cli(["archive", "receiver", "add", r.name, "--root", str(self.root)], env=env)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(r,)) for r in self.receivers[1:]]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        edge_cli(["archive", "broker-config", "--root", str(self.root), "--out", str(self.auth.out), "--prefix", PREFIX],
                 env=env)

    def add_node(self, device: str = "dock-0001", *, primary: int = 0, **kw) -> Node:
        order = [primary] + [b for b in range(len(self.brokers)) if b != primary]
        first, rest = self.brokers[order[0]], [self.brokers[b] for b in order[1:]]
        kw.setdefault("uplink__bandwidth_limit", 500_000)
        kw.setdefault("evidence__block_size", 256 * 1024)  # chunks of 128 KiB: blocks from pieces too
        values = {"mqtt__port": first.port, "mqtt__username": device, "mqtt__password": self.passwords[device]}
        if rest:
            values["mqtt__fallback"] = [f"127.0.0.1:{mq.port}" for mq in rest]
        node = Node(self, device, **values, **kw)
        edge_cli(["archive", "enroll", device, str(node.data_dir / "keys" / "device.pub"), "--unit", UNIT,
                  "--root", str(self.root), "--db", self.db, "--pin-to", str(node.data_dir),
                  *(["--broker-dir", str(self.auth.out)] if self.own_identities else [])])
        if self.own_identities:
            for mq in self.brokers:  # the refreshed password file and ACL (SIGHUP)
                mq.reload()
        self.nodes.append(node)
        return node

    def start_monitor(self, lost_after: int = 10) -> "Monitor":
        """`edge-agent monitor` logged in as the monitor identity, subscribed to every broker."""
        args = [EDGE, "--config", str(self.auth.credentials["monitor"]), "monitor", "--db", str(self.tmp / "monitor.db"),
                "--no-tui", "--lost-after", str(lost_after), "--enrolment", self.db, "--web", "0"]
        for mq in self.brokers:
            args += ["--broker", f"127.0.0.1:{mq.port}"]
        p = Proc(args, self.tmp / "monitor.log")
        self.procs.append(p)
        line = wait_for(lambda: next((ln for ln in p.text().splitlines() if "monitor: ready" in ln), None)
                        or (not p.alive() and "exited"), 60, "monitor ready", [p])
        if not p.alive():
            raise HarnessError(f"monitor exited:\n{p.tail()}")
        return Monitor(p, line.split(" web ", 1)[1].strip())

    def logs(self) -> list[Proc]:
        out = [r.proc for r in self.receivers if r.proc]
        for n in self.nodes:
            out += n.logs()
        return out

    def kill_receiver(self, i: int) -> None:
        self.receivers[i].kill()

    def close(self) -> None:
        super().close()
        for mq in self.brokers[1:]:
            mq.kill()
        for r in self.receivers:
            if r.relay:
                r.relay.close()
        try:
            with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
        except psycopg.Error:
            pass

    # the index is on PostgreSQL
    def _q(self, sql: str) -> list[dict]:
        try:
            with psycopg.connect(self.db, row_factory=psycopg.rows.dict_row, connect_timeout=10) as con:
                return list(con.execute(sql))
        except psycopg.Error:
            return []

    def archive_rows(self) -> list[dict]:
        return self._q("SELECT * FROM items")

    def partial_bytes(self) -> int:
        rows = self._q('SELECT coalesce(sum("end" - start), 0) AS n FROM ranges')
        return int(rows[0]["n"]) if rows else 0

    def receiving(self) -> int:
        """Transfers begun and not finished (partial transfers in storage)."""
        rows = self._q("SELECT count(*) AS n FROM transfers WHERE state = 'receiving'")
        return int(rows[0]["n"]) if rows else 0

    def held_bytes(self) -> int:
        rows = self._q('SELECT (SELECT coalesce(sum("end" - start), 0) FROM ranges) + '
                       '(SELECT coalesce(sum(size), 0) FROM items) AS n')
        return int(rows[0]["n"]) if rows else 0

    def quarantined(self) -> list[dict]:
        return self._q("SELECT * FROM quarantine ORDER BY id")

    def receipts(self) -> list[tuple[Node, dict, dict]]:
        """(node, ledger row, receipt) of every item a device holds as archived."""
        out = []
        for n in self.nodes:
            for r in n.rows():
                if r["state"] == "archived":
                    out.append((n, r, json.loads(r["receipt"] or "{}")))
        return out


class Monitor:
    """The monitor's web API: the state it shows for each device."""

    def __init__(self, proc: Proc, url: str):
        self.proc, self.url = proc, url

    def devices(self) -> dict[str, dict]:
        import urllib.request

        with urllib.request.urlopen(self.url + "api/devices", timeout=10) as r:
            return {d["id"]: d for d in json.loads(r.read())}

    def states(self) -> dict[str, str]:
        return {k: d["display_state"] for k, d in self.devices().items()}
