"""A private Mosquitto broker per test (or per session).

    with Mosquitto(tmp_path) as mq:          # plain listener on a free 127.0.0.1 port
        client.connect("127.0.0.1", mq.port)

    Mosquitto(tmp_path, tls=pki, extra_config=["max_queued_messages 10"]).start()
    mq.restart()          # same port(s); mq.kill() = SIGKILL (no clean shutdown, no persistence save)

The broker logs to ``mq.log_path`` (all log types, connection messages); on a failed start the
log tail is put into the exception. Persistence is off unless ``persistence_dir`` is given.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    pass


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
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
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
