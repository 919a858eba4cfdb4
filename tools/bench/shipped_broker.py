"""The broker the benchmarks measure: Mosquitto with the configuration the project ships.

`edge-agent archive broker-config` writes, from an archive root's enrolment, the password file,
the ACL and the ``mosquitto.conf`` snippet that goes to ``/etc/mosquitto/conf.d/`` (anonymous
access off; docs/security.md). A benchmark runs that snippet as it is, included from a main file
that holds only what a Debian ``/etc/mosquitto/mosquitto.conf`` holds (user, persistence off
here, the log file), so what is measured is what is installed:

    broker = ShippedBroker(work, archive_root).start()      # after the devices are enrolled
    cfg["mqtt"].update(broker.credentials("bench-01"))       # username/password of that identity
    edge-agent --config broker.credential_file("archive") archive serve ...
    broker.conn("monitor", "bench-wait")                     # ConnSettings for agent.wire clients
    broker.stop()

The broker logs connections, disconnections (with the reason) and warnings to ``log_path``.

The shipped listener binds each login to one session (``use_username_as_clientid``): two
connections with one login end each other. A benchmark that must model a thief holding a
device's password *beside* that device (the monitor's forged-flood figure) asks for
``unbound_port=True``: a second loopback listener with the same identities and ACL but
Mosquitto's default client ids, as a broker without that line would be (``broker.unbound_port``).
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.procwait import wait_handles

EDGE = str(Path(sys.executable).with_name("edge-agent"))


def edge_agent(args: list[str], in_process: bool = False) -> tuple[int, str]:
    """Run ``edge-agent ARGS``: (exit status, what it printed). ``in_process``: the same click
    command called in this process (no interpreter start-up; for the default tests that start
    brokers many times), else the installed ``edge-agent`` program."""
    if in_process:
        from click.testing import CliRunner

        from agent.cli import main

        r = CliRunner().invoke(main, args, catch_exceptions=False)
        return r.exit_code, r.output
    p = subprocess.run([EDGE, *args], capture_output=True, text=True)
    return p.returncode, p.stderr + p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ShippedBroker:
    def __init__(self, work: Path, root: Path, port: int | None = None, prefix: str = "edge",
                 in_process: bool = False, unbound_port: bool = False) -> None:
        self.in_process = in_process               # broker-config called in this process (edge_agent)
        self.work = Path(work)
        self.root = Path(root)
        self.port = port or free_port()
        self.prefix = prefix
        self.dir = self.work / "broker"            # what `archive broker-config --out` wrote
        self.conf_path = self.work / "mosquitto-main.conf"
        self.log_path = self.work / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.unbound_port = free_port() if unbound_port else None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def generate(self) -> None:
        """`edge-agent archive broker-config` for every device enrolled in ``root`` (again after
        a new enrolment: passwords are kept; then :meth:`reload`)."""
        rc, out = edge_agent(["archive", "broker-config", "--root", str(self.root), "--out", str(self.dir),
                              "--port", str(self.port), "--prefix", self.prefix, "--json"], self.in_process)
        if rc != 0:
            raise SystemExit(f"archive broker-config failed: {out.strip()[-500:]}")
        confd = self.dir / "conf.d"
        confd.mkdir(exist_ok=True)
        shutil.copy(self.dir / "mosquitto.conf", confd / "edge-agent.conf")  # the shipped snippet, unchanged

    def start(self, timeout: float = 10.0) -> "ShippedBroker":
        self.generate()
        self.conf_path.write_text(f"user {getpass.getuser()}\npersistence false\nlog_dest file {self.log_path}\n"
                                  "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
                                  "connection_messages true\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n"
                                  f"include_dir {self.dir / 'conf.d'}\n"
                                  + (f"listener {self.unbound_port} 127.0.0.1\n" if self.unbound_port else ""))
        self.proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(self.conf_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            if wait_handles(self.proc.pid, signal.SIGHUP, max(0.1, deadline - time.monotonic())):
                return self  # a reload (SIGHUP) from now on rereads the files instead of killing it
            break
        self.stop()
        raise SystemExit(f"mosquitto did not start on {self.port}: {self.log_tail()}")

    def reload(self) -> None:
        """After :meth:`generate` with more devices: SIGHUP rereads passwd and ACL."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def credential_file(self, name: str) -> Path:
        """The ``[mqtt]`` fragment (username, password) broker-config wrote for identity ``name``."""
        return self.dir / "credentials" / f"{name}.toml"

    def credentials(self, name: str) -> dict:
        from agent import config as config_mod

        m = config_mod.load(self.credential_file(name)).mqtt
        return {"username": m.username, "password": m.password}

    def conn(self, name: str, client_id: str):
        """:class:`agent.wire.client.ConnSettings` for identity ``name``."""
        from agent.wire.client import ConnSettings

        return ConnSettings("127.0.0.1", self.port, client_id, **self.credentials(name))

    def paho(self, name: str, client_id: str):
        """A bare paho MQTT v5 client logged in as ``name`` (connect it yourself)."""
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        cred = self.credentials(name)
        c.username_pw_set(cred["username"], cred["password"])
        return c

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
