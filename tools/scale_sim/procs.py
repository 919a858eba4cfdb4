"""The processes of a scale-simulation run: a private Mosquitto on a free port of 127.0.0.1, waiting
for a port, stopping a process, reading its CPU seconds from ``/proc``; :class:`SimError` is the
one-line error every part of the simulation raises for a bad argument or a missing tool."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class SimError(Exception):
    """A bad argument or an environment problem: one line for the user."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (its threads included)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Broker:
    """One private mosquitto on 127.0.0.1 (persistence off)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None):
        self.dir = workdir
        self.port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if not exe:
            raise SimError("mosquitto not found (apt-get install mosquitto) / 未找到 mosquitto")
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join([
            "persistence false", "log_dest stderr", "log_type error",
            "log_type warning", "log_type notice", "set_tcp_nodelay true", "max_queued_messages 10000", *self.extra,
            f"listener {self.port} 127.0.0.1", "allow_anonymous true", ""]))
        with open(self.dir / "mosquitto.log", "ab") as log_fh:  # mosquitto drops root: its own file would fail
            self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=log_fh)
        if not wait_port(self.port, self.proc):
            tail = (self.dir / "mosquitto.log").read_text(errors="replace")[-500:] if (self.dir / "mosquitto.log").exists() else ""
            stop_process(self.proc)
            raise SimError(f"mosquitto did not start on port {self.port}: {tail}")
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
