"""A private Mosquitto broker per test (or per session).

    with Mosquitto(tmp_path) as mq:          # plain listener on a free 127.0.0.1 port
        client.connect("127.0.0.1", mq.port)

    Mosquitto(tmp_path, tls=pki, extra_config=["max_queued_messages 10"]).start()
    mq.restart()          # same port(s); mq.kill() = SIGKILL (no clean shutdown, no persistence save)

The broker logs to ``mq.log_path`` (all log types, connection messages); on a failed start the
log tail is put into the exception. Persistence is off unless ``persistence_dir`` is given.

The shipped configuration (``shipped=True``; the default ``broker`` fixture): anonymous off, the
ACL and password file of ``agent.wire.broker_auth`` (topic prefix ``edge``), and one login = one
session (``use_username_as_clientid true`` on every listener, as the generated mosquitto.conf).
Identities are added on demand, each with a password of its own:

    user, password = mq.identity("dock-0001")             # a device (the ACL's %u patterns)
    mq.identity("rx-2", "archive"); mq.identity("monitor.3", "monitor"); mq.identity("ops", "ops")
    login(port, "dock-0001")  # {"username":..., "password":...} if the broker on port is shipped, else {}

A new identity is written to the password file (and ACL), the broker is sent SIGHUP, and the call
returns once a CONNECT with the new login is accepted (a deadline, not a sleep).
"""
from __future__ import annotations

import getpass
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tools.procwait import wait_handles

HOST = "127.0.0.1"

#: the running brokers of this process by plain port: harnesses given only a port find the
#: broker there and, if it runs the shipped configuration, log in with an identity of their own
BY_PORT: dict[int, "Mosquitto"] = {}


def login(port: int | None, name: str, role: str = "device", unit: str | None = None) -> dict[str, str]:
    """``{"username", "password"}`` of ``name`` on the shipped broker listening on ``port`` (the
    identity is created if new); ``{}`` if that broker admits anonymous clients."""
    mq = BY_PORT.get(port) if port is not None else None
    if mq is None or mq.identities is None:
        return {}
    user, password = mq.identity(name, role, unit=unit)
    return {"username": user, "password": password}


def login_for_topic(port: int | None, topic: str) -> dict[str, str]:
    """The login that may publish ``topic`` on the shipped broker at ``port``: a device's topic
    (``edge/dev/D/...``, ``edge/xfer/D/...``) with device D's own identity, an archive topic with
    an archive identity of its own (``archive-pub``); ``{}`` on an open broker. Note: one login =
    one session, so this ends a live connection of device D (use it where D is simulated)."""
    mq = BY_PORT.get(port) if port is not None else None
    if mq is None or mq.identities is None:
        return {}
    parts = topic.split("/")
    if len(parts) >= 3 and parts[1] in ("dev", "xfer"):
        return login(port, parts[2])
    if len(parts) >= 2 and parts[1] in ("archive", "ack", "unit"):
        return login(port, "archive-pub", "archive")
    raise BrokerError(f"no identity may publish {topic!r} under the shipped ACL")


def fleet_credentials(port: int, device_ids) -> "Callable[[str], dict[str, str]] | None":
    """For ``tools.fleet_sim.FleetSim(credentials=...)``: each simulated device logs in as itself on
    the shipped broker at ``port`` (identities made in one reload); None on an open broker."""
    mq = BY_PORT.get(port)
    if mq is None or mq.identities is None:
        return None
    made = mq.identities_for(device_ids)
    return lambda dev: {"username": made[dev][0], "password": made[dev][1]} if dev in made else login(port, dev)


class Identities:
    """The password file and ACL of a shipped test broker: ``agent.wire.broker_auth``'s ACL text
    and password hashes, the identities made as tests ask for them."""

    def __init__(self, out: Path, prefix: str = "edge"):
        from agent.wire import broker_auth

        self.ba = broker_auth
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.passwd = self.out / "passwd"
        self.acl = self.out / "acl"
        self.passwords: dict[str, str] = {}
        self.roles: dict[str, str] = {}
        self.units: dict[str, str] = {}
        self.monitor_connections = broker_auth.MONITOR_CONNECTIONS
        self.ops_logins = broker_auth.OPS_LOGINS
        self.brokers: list[Mosquitto] = []   # every broker reading these files
        self.write()

    def _role_of(self, name: str) -> str:
        s = self.ba.DEFAULT_SERVICES
        if name == s["monitor"] or name.startswith(s["monitor"] + "."):
            return "monitor"
        if name == s["ops"] or name.startswith(s["ops"] + "."):
            return "ops"
        if name == s["archive"] or name.endswith("." + self.ba.POLICY):
            return "archive"
        return "device"

    def add(self, name: str, role: str = "device", unit: str | None = None) -> bool:
        """Add ``name`` (True) or find it there (False)."""
        if role not in self.ba.ROLES:
            raise ValueError(f"unknown role {role!r}")
        if name in self.passwords:
            if self.roles[name] != role:
                raise ValueError(f"{name} is already a {self.roles[name]} identity, not {role}")
            if unit and self.units.get(name) != unit:
                self.units[name] = unit
                self.write()
                return True
            return False
        fixed = self._role_of(name)
        if role in ("monitor", "ops") and fixed != role:
            raise ValueError(f"{role} logins are {self.ba.DEFAULT_SERVICES[role]}[.K] (the shipped ACL), not {name!r}")
        if role == "device" and fixed != "device":
            raise ValueError(f"{name!r} is a service login, not a device id")
        if role == "monitor" and name != "monitor":
            k = int(name.rsplit(".", 1)[1])
            self.monitor_connections = max(self.monitor_connections, k + 1)
        if role == "ops" and name != "ops":
            self.ops_logins = max(self.ops_logins, int(name.rsplit(".", 1)[1]) + 1)
        # the monitor's logins (one per connection) and the operators' (one per host) share one password each,
        # as broker-config makes them
        mon, ops = self.ba.DEFAULT_SERVICES["monitor"], self.ba.DEFAULT_SERVICES["ops"]
        first = mon if role == "monitor" else ops if role == "ops" else None
        self.passwords[name] = self.passwords[first] if first in self.passwords \
            else secrets.token_urlsafe(18)
        self.roles[name] = role
        if role == "archive" and not name.endswith("." + self.ba.POLICY):
            # `archive policy publish` logs in as NAME.policy with NAME's password (broker-config)
            self.passwords.setdefault(f"{name}.{self.ba.POLICY}", self.passwords[name])
            self.roles.setdefault(f"{name}.{self.ba.POLICY}", "archive")
        if name == mon:
            for k in range(1, self.monitor_connections):
                self.passwords.setdefault(f"{mon}.{k}", self.passwords[name])
                self.roles.setdefault(f"{mon}.{k}", "monitor")
        if unit:
            self.units[name] = unit
        self.write()
        return True

    def write(self) -> None:
        receivers = sorted(n for n, r in self.roles.items() if r == "archive"
                           and n != self.ba.DEFAULT_SERVICES["archive"] and not n.endswith("." + self.ba.POLICY))
        acl = self.ba.acl_text(self.prefix, units=self.units, receivers=receivers,
                               monitor_connections=self.monitor_connections, ops_logins=self.ops_logins)
        lines = [f"{n}:{self.ba.hash_password(pw)}" for n, pw in sorted(self.passwords.items())]
        self.acl.write_text(acl, encoding="utf-8")
        tmp = self.passwd.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.passwd)


def mqtt_connect_rc(port: int, username: str, password: str, host: str = HOST, timeout: float = 5.0) -> int | None:
    """The CONNACK return code of an MQTT 3.1.1 CONNECT with this login (0: accepted; None: no answer)."""
    def utf(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b
    body = utf(b"MQTT") + bytes([4, 0xC2]) + (10).to_bytes(2, "big") + utf(b"") + utf(username.encode()) \
        + utf(password.encode())
    n, rem = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        rem += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"\x10" + rem + body)
            ack = b""
            while len(ack) < 4:
                chunk = s.recv(4 - len(ack))
                if not chunk:
                    return None
                ack += chunk
            if ack[3] == 0:
                s.sendall(b"\xe0\x00")
            return ack[3]
    except OSError:
        return None


class BrokerError(RuntimeError):
    pass


def denied(log_text: str) -> list[str]:
    """The broker log's "Denied" lines, less the session claim's deliberate probe: each connection
    with a claim writes once to ``P/session/LOGIN/probe``, where the shipped ACL lets no login
    write, to learn that the broker guards the claims (agent/wire/claim.py)."""
    from agent.wire.claim import is_probe_refusal

    return [ln for ln in log_text.splitlines() if "Denied" in ln and not is_probe_refusal(ln)]


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(port: int, host: str = HOST, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> bool:
    """True once a TCP connect to host:port succeeds; False on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def _tls_paths(tls: Any) -> tuple[Path, Path, Path]:
    """Accept a ``Pki`` (tests.support.pki), a dict or a (cafile, certfile, keyfile) tuple."""
    if tls is None:
        raise ValueError("no TLS material")
    if hasattr(tls, "ca") and hasattr(tls, "server"):
        return Path(tls.ca.cert), Path(tls.server.cert), Path(tls.server.key)
    if isinstance(tls, dict):
        return Path(tls["cafile"]), Path(tls["certfile"]), Path(tls["keyfile"])
    cafile, certfile, keyfile = tls
    return Path(cafile), Path(certfile), Path(keyfile)


class Mosquitto:
    """One ``mosquitto -c <conf>`` process listening on 127.0.0.1.

    Parameters
    - workdir: where conf and log go (a fresh tmp dir is best).
    - tls: Pki / dict / (cafile, certfile, keyfile): adds a TLS listener with
      ``require_certificate true`` on ``tls_port``.
    - plain: also open the plain (non-TLS) listener on ``port`` (default True).
    - identity_as_username: with TLS, ``use_identity_as_username true`` (CN becomes username).
    - extra_config: lines appended to the config (global section, before the listeners),
      e.g. ``["max_queued_messages 5", "max_packet_size 65536"]``.
    - listener_config: lines appended to every listener block.
    - persistence_dir: turn persistence on, storing mosquitto.db there.
    - password_file / acl_file: identities and ACL (e.g. from agent.wire.broker_auth.generate);
      with a password file anonymous access is off unless allow_anonymous=True is given.
    - port / tls_port: fixed ports (default: free ones chosen at first start, then kept).
    - shipped: the shipped configuration (module docstring): anonymous off, the generated ACL and
      password file, the listeners of the generated mosquitto.conf (``use_username_as_clientid
      true``); ``identity()`` adds logins. With ``tls``, the generated TLS listener: identities by
      password, or with ``identity_as_username`` by certificate (``archive broker-config
      --tls-identity certificate``: a client certificate required, its CN the user name, the ACL
      applied to it). Pass another broker's ``Identities`` for the same files on several brokers.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        tls: Any = None,
        plain: bool = True,
        identity_as_username: bool = False,
        extra_config: Iterable[str] = (),
        listener_config: Iterable[str] = (),
        persistence_dir: str | Path | None = None,
        port: int | None = None,
        tls_port: int | None = None,
        allow_anonymous: bool | None = None,
        password_file: str | Path | None = None,
        acl_file: str | Path | None = None,
        binary: str | None = None,
        start_timeout: float = 10.0,
        shipped: "bool | Identities" = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.identities: Identities | None = None
        if shipped:
            if password_file is not None or acl_file is not None or allow_anonymous:
                raise ValueError("shipped=True brings its own password file and ACL, anonymous off")
            # another broker's Identities: the same logins and passwords on both (a fleet's brokers)
            self.identities = shipped if isinstance(shipped, Identities) else Identities(self.workdir / "auth")
            self.identities.brokers.append(self)
            password_file, acl_file = self.identities.passwd, self.identities.acl
        self.host = HOST
        self.tls = tls
        self.plain = plain
        self.identity_as_username = identity_as_username
        self.extra_config = list(extra_config)
        self.listener_config = list(listener_config)
        self.persistence_dir = Path(persistence_dir) if persistence_dir is not None else None
        self.password_file = Path(password_file) if password_file is not None else None
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self.allow_anonymous = (password_file is None) if allow_anonymous is None else allow_anonymous
        self.start_timeout = start_timeout
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.binary):
            raise BrokerError("mosquitto not installed (apt-get install mosquitto; see `make deps`)")
        if not plain and tls is None:
            raise ValueError("a broker needs at least one listener (plain=True or tls=...)")
        self.port: int | None = (port or None) if plain else None
        self.tls_port: int | None = (tls_port or None) if tls is not None else None
        self._fixed_ports = port is not None or tls_port is not None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # -- config -------------------------------------------------------------------------
    def _config(self) -> str:
        lines = [
            "# written by tests/support/broker.py",
            # Mosquitto started as root drops to user 'mosquitto' unless told otherwise; then it
            # could not read our 0600 keys or write the log. Run as whoever we are.
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.persistence_dir is not None:
            self.persistence_dir.mkdir(parents=True, exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
        else:
            lines.append("persistence false")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines += self.extra_config
        if self.identities is not None:
            # the listeners of the generated mosquitto.conf (on 127.0.0.1 and these ports)
            from agent.wire import broker_auth

            if self.plain:
                lines += ["", *broker_auth.plain_listener(self.port, self.host), *self.listener_config]
            if self.tls is not None:
                cafile, certfile, keyfile = _tls_paths(self.tls)
                lines += ["", *broker_auth.tls_listener(
                    self.tls_port, str(cafile), str(certfile), str(keyfile), address=self.host,
                    tls_identity="certificate" if self.identity_as_username else "password"), *self.listener_config]
            return "\n".join(lines) + "\n"
        if self.plain:
            lines += ["", f"listener {self.port} {self.host}", *self.listener_config]
        if self.tls is not None:
            cafile, certfile, keyfile = _tls_paths(self.tls)
            lines += [
                "",
                f"listener {self.tls_port} {self.host}",
                f"cafile {cafile}",
                f"certfile {certfile}",
                f"keyfile {keyfile}",
                "require_certificate true",
            ]
            if self.identity_as_username:
                lines.append("use_identity_as_username true")
            lines += self.listener_config
        return "\n".join(lines) + "\n"

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> "Mosquitto":
        if self.running:
            return self
        attempts = 1 if (self._fixed_ports or self.starts) else 3
        for attempt in range(attempts):
            if self.plain and (self.port is None or attempt):
                self.port = free_port()
            if self.tls is not None and (self.tls_port is None or attempt):
                self.tls_port = free_port()
            if self._spawn():
                self.starts += 1
                if self.port is not None:
                    BY_PORT[self.port] = self
                return self
        raise BrokerError(f"mosquitto did not start; log {self.log_path}:\n{self.log_tail()}")

    def _spawn(self) -> bool:
        self.conf_path.write_text(self._config())
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        for p in self.ports():
            if not wait_port(p, self.host, max(0.1, deadline - time.monotonic()), self.proc):
                self._terminate(signal.SIGKILL)
                return False
        # the port answers a moment before Mosquitto installs its SIGHUP handler; a reload in
        # that moment would kill the broker (seen once in CI: "not admitted 10 s after SIGHUP")
        if not wait_handles(self.proc.pid, signal.SIGHUP, max(0.1, deadline - time.monotonic())):
            self._terminate(signal.SIGKILL)
            return False
        return True

    def ports(self) -> list[int]:
        return [p for p in (self.port, self.tls_port) if p is not None]

    def _terminate(self, sig: int, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.send_signal(sig)
            if sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)  # a paused broker must see the SIGTERM
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Clean shutdown (SIGTERM): persistence, if on, is written."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: what a crash or power loss looks like to clients."""
        self._terminate(signal.SIGKILL)

    def restart(self, *, kill: bool = False, downtime: float = 0.0) -> "Mosquitto":
        """Stop (or kill) and start again on the same port(s)."""
        self.kill() if kill else self.stop()
        if downtime:
            time.sleep(downtime)
        if not self._spawn():
            # the port may linger briefly after a kill; give it a couple of tries
            for _ in range(20):
                time.sleep(0.1)
                if self._spawn():
                    break
            else:
                raise BrokerError(f"mosquitto did not restart on {self.ports()}; log:\n{self.log_tail()}")
        self.starts += 1
        return self

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files (and drops clients they no longer admit)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)

    def identity(self, name: str, role: str = "device", *, unit: str | None = None,
                 timeout: float = 10.0) -> tuple[str, str]:
        """(user name, password) of ``name`` on this shipped broker, made if new: written to the
        password file and ACL, then SIGHUP, returning once the broker accepts the new login."""
        return self.identities_for([name], role, unit=unit, timeout=timeout)[name]

    def identities_for(self, names, role: str = "device", *, unit: str | None = None,
                       timeout: float = 10.0) -> dict[str, tuple[str, str]]:
        """``identity()`` for several names at once (one reload): name -> (user name, password)."""
        if self.identities is None:
            raise BrokerError("this broker admits anonymous clients (shipped=False): no identities")
        names = list(names)
        added = [n for n in names if self.identities.add(n, role, unit)]
        live = [mq for mq in self.identities.brokers if mq.running] if added else []
        for mq in live:
            mq.reload()
        deadline = time.monotonic() + timeout
        probe = added[-1] if added else ""
        for mq in live:
            while mqtt_connect_rc(mq.port or 0, probe, self.identities.passwords[probe]) != 0:
                if time.monotonic() > deadline:
                    raise BrokerError(f"{probe} not admitted {timeout:.0f} s after SIGHUP; log:\n{mq.log_tail()}")
                time.sleep(0.02)
        return {n: (n, self.identities.passwords[n]) for n in names}

    def pause(self) -> None:
        """SIGSTOP: the broker hangs (TCP stays open, nothing is answered)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Mosquitto(port={self.port}, tls_port={self.tls_port}, running={self.running})"
