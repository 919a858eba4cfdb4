"""Real, paced microphone input without a sound card: PulseAudio's module-sine-source.

    reason = ensure_pulseaudio()          # None when usable (starts the daemon if needed)
    with SineSource(frequency=440) as src:
        monkeypatch.setenv("PULSE_SOURCE", src.name)   # this process records from it
        ...
        src.unplug()                      # the microphone goes away, for this process

The daemon is started as in the shared recipe (``pulseaudio -D --exit-idle-time=-1``) and
``~/.asoundrc`` routes ALSA's default device to PulseAudio; it is written only if absent.
The source is chosen per process with ``PULSE_SOURCE`` so the server's default (which other
tests may use) is left alone. module-sine-source plays at amplitude 0.5: a 440 Hz tone peaks
near 16,400 and has an RMS level of about -9 dBFS. It delivers audio in 2 s blocks, ahead of
the clock, so measure pacing from block to block (see tests/drivers/test_microphone.py).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

ASOUNDRC = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"
_ids = itertools.count(1)


def _pactl(*args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=timeout)


def pulse_running() -> bool:
    try:
        return _pactl("info", timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_pulseaudio() -> str | None:
    """Start PulseAudio if needed; return a reason string if it cannot be used, else None."""
    for tool in ("pulseaudio", "pactl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install pulseaudio)"
    try:
        import pyaudio  # noqa: F401
    except ImportError as exc:
        return f"pyaudio not importable: {exc}"
    rc = Path.home() / ".asoundrc"
    if not rc.exists():
        rc.write_text(ASOUNDRC)
    if not pulse_running():
        subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1"], capture_output=True,
                       timeout=20)
        deadline = time.monotonic() + 10
        while not pulse_running():
            if time.monotonic() > deadline:
                return "pulseaudio did not start"
            time.sleep(0.2)
    return None


class SineSource:
    """A module-sine-source with a unique name, loaded on enter and unloaded on exit."""

    def __init__(self, frequency: int = 440, rate: int = 48000) -> None:
        self.frequency, self.rate = frequency, rate
        self.name = f"edge_test_sine_{os.getpid()}_{next(_ids)}"
        self.module: str | None = None

    def load(self) -> SineSource:
        r = _pactl("load-module", "module-sine-source", f"source_name={self.name}",
                   f"frequency={self.frequency}", f"rate={self.rate}")
        if r.returncode:
            raise RuntimeError(f"pactl load-module failed: {r.stderr.strip()}")
        self.module = r.stdout.strip()
        return self

    def unload(self) -> None:
        if self.module is not None:
            _pactl("unload-module", self.module)
            self.module = None

    def unplug(self) -> bool:
        """Unload the source and end this process's recording streams.

        On unload PulseAudio rescues streams to the default source; on a shared daemon that
        may be another test's sine, so the streams this process had are killed (``pacmd``)
        to make the loss deterministic: the client sees its device vanish. Returns False
        if no stream could be killed (then the client may hear the rescue source).
        """
        self.unload()
        r = _pactl("-f", "json", "list", "source-outputs")
        try:
            outputs = json.loads(r.stdout) if r.returncode == 0 else []
        except ValueError:
            outputs = []
        mine = [str(o["index"]) for o in outputs
                if o.get("properties", {}).get("application.process.id") == str(os.getpid())]
        if not mine or shutil.which("pacmd") is None:
            return False
        return all(subprocess.run(["pacmd", "kill-source-output", i], capture_output=True,
                                  timeout=10).returncode == 0 for i in mine)

    def __enter__(self) -> SineSource:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.unload()
