"""The processes of a scale-simulation run: Mosquitto as shipped on a free port of 127.0.0.1,
stopping a process, reading its CPU seconds from ``/proc``; :class:`SimError` is the
one-line error every part of the simulation raises for a bad argument or a missing tool."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


class SimError(Exception):
    """A bad argument or an environment problem: one line for the user."""


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


def start_broker(work: Path, root: Path, prefix: str, attempts: int = 3, in_process: bool = True):
    """Mosquitto as the project ships it (tools/bench/shipped_broker.py): `edge-agent archive
    broker-config` from the enrolment of ``root`` (a password-file identity for every device and
    every enrolled receiver, the ACL, anonymous access off), on a free port of 127.0.0.1; its log
    (connections with the user each client logged in as) in work/mosquitto.log. broker-config is
    the click command called in this process (the same code without an interpreter start-up)."""
    from tools.bench.shipped_broker import ShippedBroker

    if not (shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto")):
        raise SimError("mosquitto not found (apt-get install mosquitto) / 未找到 mosquitto")
    for attempt in range(attempts):  # the free port picked may be taken by another process before mosquitto binds it
        try:
            return ShippedBroker(work, root, prefix=prefix, in_process=in_process).start()
        except SystemExit as exc:
            if attempt == attempts - 1:
                raise SimError(str(exc)) from None
    raise AssertionError("unreachable")
