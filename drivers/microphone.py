"""Interview-room microphone: a gap-free audio timeline from PyAudio, or a paced demo source.

Every source here runs its own named thread that pushes int16 samples into a bounded buffer;
the consumer calls ``read(n)`` and always gets exactly ``n`` samples. When the device is
missing, lost or stalled the thread pushes zeros paced by the wall clock instead, so the
recording never has a hole (同步录音录像 must be uninterrupted); the device is reopened with
exponential backoff and jitter. A fresh PortAudio instance is made for every open, so a
microphone plugged in later is found.

    mic = Microphone(rate=48000, device=None).start()   # None = default input device
    pcm = mic.read(48000)          # numpy int16, shape (n,) mono or (n, channels)
    mic.status().level_dbfs, mic.status().silent
    mic.stop()

``ToneMicrophone`` (a sine) and ``FileMicrophone`` (a WAV file, looped) produce the same
paced timeline without a sound card, for demos and tests.
"""
from __future__ import annotations

import logging
import math
import threading
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.camera import backoff_delay

log = logging.getLogger(__name__)
FLOOR_DBFS = -120.0


@dataclass(frozen=True)
class MicStatus:
    """A snapshot of an audio source's health."""

    name: str
    device: str | None           # name of the opened input device
    online: bool                 # samples are coming from the device right now
    level_dbfs: float            # RMS level of the last full second (FLOOR_DBFS for zeros)
    silent: bool                 # level below the threshold for ``silence_seconds``
    samples: int                 # samples (per channel) pushed into the timeline
    filled: int                  # of which zeros inserted because the device gave nothing
    overflow: int                # samples discarded because nobody read them in time
    reopens: int                 # successful opens after the first one
    last_error: str | None


class AudioSource:
    """Base: bounded buffer, ``read``, level and silence tracking. Subclasses fill ``_run``."""

    def __init__(self, *, name: str = "mic", rate: int = 48000, channels: int = 1,
                 buffer_seconds: float = 10.0, silence_dbfs: float = -60.0,
                 silence_seconds: float = 5.0) -> None:
        self.name, self.rate, self.channels = name, rate, channels
        self.silence_dbfs, self.silence_seconds = silence_dbfs, silence_seconds
        self._max = int(buffer_seconds * rate) * channels
        self._chunks: deque[np.ndarray] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._samples = self._filled = self._overflow = self._opens = 0
        self._online = False
        self._device: str | None = None
        self._last_error: str | None = None
        self._sumsq, self._count = 0.0, 0
        self._level = FLOOR_DBFS
        self._quiet_for = 0.0
        self._t0 = time.monotonic()              # the timeline's origin (set by start())

    def start(self) -> AudioSource:
        """Start the thread; returns at once (the device is opened in the thread)."""
        if self._thread is None:
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._guarded_run, daemon=True,
                                            name=f"{type(self).__name__.lower()}-{self.name}")
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the thread; wakes any blocked ``read``."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> AudioSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def available(self) -> int:
        """Samples (per channel) buffered and ready to read without waiting."""
        with self._cond:
            return self._buffered // self.channels

    def read(self, n_samples: int, timeout: float | None = None) -> np.ndarray:
        """Exactly ``n_samples`` samples, waiting until the timeline has produced them.

        The thread itself inserts zeros for a lost device, so only a stopped or wedged
        thread makes ``read`` pad the rest with zeros after ``timeout`` (default: span + 5 s).
        """
        want = n_samples * self.channels
        deadline = time.monotonic() + (n_samples / self.rate + 5.0 if timeout is None
                                       else timeout)
        with self._cond:
            while self._buffered < want and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            out = np.zeros(want, dtype=np.int16)
            got = 0
            while got < want and self._chunks:
                take = min(len(self._chunks[0]), want - got)
                out[got:got + take] = self._chunks[0][:take]
                self._chunks[0] = self._chunks[0][take:]
                if not len(self._chunks[0]):
                    self._chunks.popleft()
                got += take
            self._buffered -= got
        return out if self.channels == 1 else out.reshape(-1, self.channels)

    def status(self) -> MicStatus:
        with self._cond:
            return MicStatus(self.name, self._device, self._online, round(self._level, 1),
                             self._quiet_for >= self.silence_seconds, self._samples,
                             self._filled, self._overflow, max(0, self._opens - 1),
                             self._last_error)

    # -- for subclasses -----------------------------------------------------------------
    def _push(self, data: np.ndarray, filled: bool = False) -> None:
        data = np.ascontiguousarray(data, dtype=np.int16).reshape(-1)
        n = len(data) // self.channels
        with self._cond:
            self._chunks.append(data)
            self._buffered += len(data)
            while self._buffered > self._max:              # bounded: drop the oldest
                cut = min(len(self._chunks[0]), self._buffered - self._max)
                self._chunks[0] = self._chunks[0][cut:]
                if not len(self._chunks[0]):
                    self._chunks.popleft()
                self._buffered -= cut
                self._overflow += cut // self.channels
            self._samples += n
            self._filled += n if filled else 0
            self._sumsq += float(np.square(data, dtype=np.float64).sum())
            self._count += len(data)
            if self._count >= self.rate * self.channels:     # one second of audio measured
                ms = self._sumsq / self._count / 32768.0 ** 2
                self._level = max(FLOOR_DBFS, 10 * math.log10(ms)) if ms else FLOOR_DBFS
                quiet = self._level < self.silence_dbfs
                self._quiet_for = self._quiet_for + self._count / (self.rate * self.channels) \
                    if quiet else 0.0
                self._sumsq, self._count = 0.0, 0
            self._cond.notify_all()

    def _fill_gap(self, until: float) -> None:
        """Push zeros until the timeline has as many samples as the wall clock says it
        should (``rate`` per second since start), keeping pace until ``until``."""
        while True:
            now = time.monotonic()
            due = int((min(now, until) - self._t0) * self.rate) - self._samples
            if due > 0:
                self._push(np.zeros(due * self.channels, np.int16), filled=True)
            if now >= until or self._stop.wait(min(0.02, until - now)):
                return

    def _set_error(self, error: str | None, online: bool) -> None:
        with self._cond:
            was, before = self._online, self._last_error
            self._online, self._last_error = online, error
        if not online and (was or error != before):      # log changes, not every retry
            log.warning("audio %s offline: %s", self.name, error)

    def _guarded_run(self) -> None:
        try:
            self._run()
        except Exception as exc:            # never crash the room; keep the timeline going
            log.exception("audio %s: source thread failed", self.name)
            self._set_error(f"source failed: {exc}", False)
            while not self._stop.is_set():
                self._fill_gap(time.monotonic() + 0.5)
        finally:
            with self._cond:
                self._online = False
                self._cond.notify_all()

    def _run(self) -> None:
        raise NotImplementedError


class Microphone(AudioSource):
    """A PyAudio input device (``device``: None = default, index, or part of its name).

    Reads whatever the device has ready (never a blocking read), so the thread cannot hang.
    If the device falls more than ``max_lag`` seconds behind the wall clock (it paused, or
    PulseAudio moved the stream) zeros fill the span it did not deliver. No audio at all for
    ``stall_timeout`` seconds counts as a lost device: it is closed, zeros keep the timeline
    going, and it is reopened with backoff. Keep ``stall_timeout`` above the device's burst
    interval (PulseAudio's module-sine-source delivers 2 s blocks).
    """

    def __init__(self, device: int | str | None = None, *, chunk: int = 960,
                 stall_timeout: float = 3.0, max_lag: float = 1.0, backoff_base: float = 0.5,
                 backoff_max: float = 5.0, **kw) -> None:
        super().__init__(**kw)
        self.device, self.chunk, self.stall_timeout = device, chunk, stall_timeout
        self.max_lag = max_lag
        self.backoff_base, self.backoff_max = backoff_base, backoff_max

    def _find(self, pa) -> dict:
        if self.device is None:
            try:
                return pa.get_default_input_device_info()
            except (IOError, OSError):
                raise LookupError("no input device") from None
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            match = i == self.device if isinstance(self.device, int) \
                else str(self.device).lower() in info["name"].lower()
            if match and info.get("maxInputChannels", 0) >= self.channels:
                return info
        raise LookupError(f"input device {self.device!r} not found")

    def _open(self):
        import pyaudio
        pa = pyaudio.PyAudio()
        try:
            info = self._find(pa)
            stream = pa.open(format=pyaudio.paInt16, channels=self.channels, rate=self.rate,
                             input=True, input_device_index=int(info["index"]),
                             frames_per_buffer=self.chunk)
            return pa, stream, str(info["name"])
        except Exception:
            pa.terminate()
            raise

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                pa, stream, dev = self._open()
            except Exception as exc:
                self._set_error(f"cannot open input device: {exc}", False)
                self._fill_gap(time.monotonic() +
                               backoff_delay(attempt, self.backoff_base, self.backoff_max))
                attempt += 1
                continue
            with self._cond:
                self._opens += 1
                self._device, self._online, self._last_error = dev, True, None
            log.info("audio %s: recording from %s", self.name, dev)
            self._fill_gap(time.monotonic())          # the time spent opening
            try:
                error = self._read_loop(stream)
            finally:
                for close in (stream.close, pa.terminate):
                    try:
                        close()
                    except Exception:
                        log.debug("audio %s: close failed", self.name, exc_info=True)
            if self._stop.is_set():
                break
            self._set_error(error, False)
            attempt = 0
            self._fill_gap(time.monotonic() +
                           backoff_delay(attempt, self.backoff_base, self.backoff_max))

    def _read_loop(self, stream) -> str:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                avail = stream.get_read_available()
                if avail > 0:
                    data = stream.read(avail, exception_on_overflow=False)
                    self._push(np.frombuffer(data, dtype=np.int16))
                    last = time.monotonic()
                    continue
            except Exception as exc:
                return f"input device lost: {exc}"
            now = time.monotonic()
            if now - last > self.stall_timeout:
                return f"input device stalled: no audio for {self.stall_timeout:g} s"
            lag = int((now - self._t0) * self.rate) - self._samples
            if lag > self.max_lag * self.rate:         # the device skipped a span: fill it
                log.info("audio %s: device %.1f s behind, filling silence", self.name,
                         lag / self.rate)
                self._push(np.zeros(lag * self.channels, np.int16), filled=True)
            self._stop.wait(0.005)
        return "stopped"


class ToneMicrophone(AudioSource):
    """A sine tone paced by the wall clock (no sound card); ``level`` is the peak in dBFS."""

    def __init__(self, frequency: float = 440.0, level: float = -6.0, **kw) -> None:
        super().__init__(**kw)
        self.frequency, self.amplitude = frequency, 32767 * 10 ** (level / 20)
        self._phase = 0

    def _generate(self, n: int) -> np.ndarray:
        t = (np.arange(n) + self._phase) / self.rate
        self._phase += n
        tone = np.round(self.amplitude * np.sin(2 * np.pi * self.frequency * t))
        return np.repeat(tone.astype(np.int16), self.channels)

    def _label(self) -> str:
        return f"tone {self.frequency:g} Hz"

    def _run(self) -> None:
        self._device, self._online, self._opens = self._label(), True, 1
        while not self._stop.wait(0.02):
            due = int((time.monotonic() - self._t0) * self.rate) - self._samples
            if due > 0:
                self._push(self._generate(due))


class FileMicrophone(ToneMicrophone):
    """A 16-bit PCM WAV file played at real-time pace, looped; rate and channels are the file's."""

    def __init__(self, path: str | Path, **kw) -> None:
        with wave.open(str(path), "rb") as w:
            fmt = {"rate": w.getframerate(), "channels": w.getnchannels()}
            if w.getsampwidth() != 2 or any(kw.get(k, v) != v for k, v in fmt.items()):
                raise ValueError(f"{path}: need 16-bit PCM at {kw.get('rate', 'its')} Hz")
            self._pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        super().__init__(**{**kw, **fmt})
        self.path = Path(path)

    def _generate(self, n: int) -> np.ndarray:
        if not len(self._pcm):
            return np.zeros(n * self.channels, np.int16)
        frames = len(self._pcm) // self.channels
        idx = (np.arange(n) + self._phase) % frames
        self._phase += n
        return self._pcm.reshape(-1, self.channels)[idx].reshape(-1)

    def _label(self) -> str:
        return str(self.path)
