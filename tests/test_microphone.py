"""Microphone driver against real paced audio (PulseAudio sine source) and without any device."""
from __future__ import annotations

import time
import wave

import numpy as np
import pytest

from drivers.microphone import FLOOR_DBFS, FileMicrophone, Microphone, ToneMicrophone
from tests.support.pulse import SineSource, ensure_pulseaudio

RATE = 48000
SINE_DBFS = -9.0          # module-sine-source: amplitude 0.5 -> RMS 20*log10(0.5/sqrt(2))


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def pulse():
    if reason := ensure_pulseaudio():
        pytest.skip(reason)


def read_timed(src, seconds: float, block: int = 4800) -> tuple[np.ndarray, float]:
    """Drain what is buffered, then read ``seconds`` of audio; returns (samples, elapsed).
    For smoothly paced sources (the tone), not for PulseAudio's 2 s sine blocks."""
    src.read(src.available())
    t0 = time.monotonic()
    out = np.concatenate([src.read(block) for _ in range(int(seconds * RATE) // block)])
    return out, time.monotonic() - t0


def delivery_rate(src, seconds: float) -> tuple[float, list[tuple[float, int]]]:
    """Samples per second between the instants the timeline grew (the sine source delivers
    in 2 s blocks, so the rate is measured from block to block, not over a fixed window)."""
    marks: list[tuple[float, int]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n = src.status().samples
        if not marks or n != marks[-1][1]:
            marks.append((time.monotonic(), n))
        src.read(src.available())
        time.sleep(0.005)
    deliveries = [m for m, nxt in zip(marks, marks[1:] + [(1e18, 0)]) if nxt[0] - m[0] > 0.1]
    (t1, n1), (t2, n2) = deliveries[1], deliveries[-1]     # one block may show up in pieces
    assert t2 - t1 >= 1.5, marks
    return (n2 - n1) / (t2 - t1), marks


def test_sine_source_is_paced_and_measured(pulse, monkeypatch):
    with SineSource(440, RATE) as sine:
        monkeypatch.setenv("PULSE_SOURCE", sine.name)
        mic = Microphone(rate=RATE, silence_seconds=1.0).start()
        try:
            assert wait_for(lambda: mic.status().online, 10), mic.status()
            t_start = time.monotonic()
            rate, marks = delivery_rate(mic, 4.3)
            assert abs(rate - RATE) < 0.03 * RATE, marks            # 48 kHz, real time
            elapsed = time.monotonic() - mic._t0
            assert mic.status().samples <= (elapsed + 2.5) * RATE   # not read flat out
            assert marks[-1][0] - t_start > 3.0
            pcm = mic.read(RATE // 2, timeout=3)
            assert len(pcm) == RATE // 2 and pcm.dtype == np.int16
            assert 15000 <= int(pcm.max()) <= 17500
            rms = 20 * np.log10(np.sqrt(np.mean(pcm.astype(float) ** 2)) / 32768)
            st = mic.status()
            assert abs(rms - SINE_DBFS) < 1.0 and abs(st.level_dbfs - SINE_DBFS) < 1.0, st
            assert st.online and not st.silent and st.last_error is None and st.overflow == 0
            assert st.filled < RATE // 2                  # only the moment before the open
        finally:
            mic.stop()


def test_source_unloaded_gives_continuous_silence(pulse, monkeypatch):
    sine = SineSource(440, RATE).load()
    monkeypatch.setenv("PULSE_SOURCE", sine.name)
    mic = Microphone(rate=RATE, silence_seconds=1.0, backoff_max=1.0).start()
    try:
        assert wait_for(lambda: mic.status().online and mic.status().samples > RATE, 10)
        sine.unload()                                             # the microphone goes away
        t0 = time.monotonic()
        pcm = np.concatenate([mic.read(RATE // 2) for _ in range(8)])  # 4 s: no gap, no hang
        assert len(pcm) == 4 * RATE and time.monotonic() - t0 < 5
        assert not pcm[-RATE:].any()                              # the last second is silence
        assert wait_for(lambda: mic.status().silent, 4), mic.status()
        st = mic.status()
        elapsed = time.monotonic() - mic._t0
        assert (elapsed - 0.5) * RATE <= st.samples <= (elapsed + 2.5) * RATE, (elapsed, st)
        # PulseAudio moves the stream to another source (silence) or ends it (offline).
        assert st.level_dbfs < -60 and (st.silent or not st.online), st
    finally:
        mic.stop()
        sine.unload()


def test_missing_source_at_start_then_plugged_in(pulse, monkeypatch):
    sine = SineSource(440, RATE)
    monkeypatch.setenv("PULSE_SOURCE", sine.name)           # not loaded yet: open fails
    mic = Microphone(rate=RATE, backoff_base=0.2, backoff_max=0.5, silence_seconds=1.0).start()
    try:
        pcm = mic.read(RATE // 2)
        assert not pcm.any() and len(pcm) == RATE // 2
        st = mic.status()
        assert not st.online and st.last_error and st.filled >= RATE // 2, st
        sine.load()
        assert wait_for(lambda: mic.status().online, 5), mic.status()
        assert wait_for(lambda: mic.status().level_dbfs > -12, 4), mic.status()
        assert int(mic.read(mic.available()).max()) > 15000
        assert mic.status().last_error is None
    finally:
        mic.stop()
        sine.unload()


def test_no_input_device_produces_paced_silence():
    mic = Microphone(device="no-such-microphone-xyz", rate=RATE, silence_seconds=0.5).start()
    try:
        t0 = time.monotonic()
        pcm = mic.read(RATE // 2)
        elapsed = time.monotonic() - t0
        assert len(pcm) == RATE // 2 and not pcm.any() and 0.3 <= elapsed <= 0.9, elapsed
        assert wait_for(lambda: mic.status().silent, 3)
        st = mic.status()
        assert not st.online and "not found" in st.last_error and st.level_dbfs == FLOOR_DBFS
    finally:
        mic.stop()


def test_tone_and_file_sources(tmp_path):
    tone = ToneMicrophone(1000, level=-6.0, rate=RATE).start()
    try:
        pcm, elapsed = read_timed(tone, 1.0)
        assert 0.85 <= elapsed <= 1.3 and len(pcm) == RATE
        assert abs(int(pcm.max()) - 16423) < 50                # -6 dBFS peak
        assert wait_for(lambda: tone.status().level_dbfs > -10, 2)
        assert abs(tone.status().level_dbfs - (-9.0)) < 0.5
    finally:
        tone.stop()
    ramp = (np.arange(4800) - 2400).astype(np.int16)            # 0.2 s at 24 kHz
    path = tmp_path / "ramp.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(24000)
        w.writeframes(ramp.tobytes())
    fm = FileMicrophone(path).start()
    try:
        assert fm.rate == 24000
        out = fm.read(12000)                                    # 2.5 loops
        assert np.array_equal(out[:4800], ramp) and np.array_equal(out[4800:9600], ramp)
        assert fm.status().device == str(path) and fm.status().online
    finally:
        fm.stop()
