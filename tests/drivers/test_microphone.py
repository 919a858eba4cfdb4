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


def delivery_rate(src, span: float = 3.9, limit: float = 10.0) -> tuple[float, list, np.ndarray]:
    """Samples per second between the instants the timeline grew. The sine source delivers
    2 s blocks (sometimes seen in two pieces), so the rate is taken from the first to the
    last delivery that spans at least ``span`` seconds, not over a fixed window."""
    marks: list[tuple[float, int]] = []
    deliveries: list[tuple[float, int]] = []
    pcm = []
    end = time.monotonic() + limit
    while time.monotonic() < end:
        n = src.status().samples
        if not marks or n != marks[-1][1]:
            marks.append((time.monotonic(), n))
        pcm.append(src.read(src.available()))
        # a delivery = the last mark of a burst (no further growth within 0.1 s)
        deliveries = [m for m, nxt in zip(marks, marks[1:] + [(time.monotonic(), 0)])
                      if nxt[0] - m[0] > 0.1][1:]          # the first mark is not a delivery
        if len(deliveries) >= 2 and deliveries[-1][0] - deliveries[0][0] >= span:
            break
        time.sleep(0.005)
    assert len(deliveries) >= 2 and deliveries[-1][0] - deliveries[0][0] >= span, marks
    (t1, n1), (t2, n2) = deliveries[0], deliveries[-1]
    return (n2 - n1) / (t2 - t1), marks, np.concatenate(pcm)


def test_sine_source_is_paced_and_measured(pulse, monkeypatch):
    with SineSource(440, RATE) as sine:
        monkeypatch.setenv("PULSE_SOURCE", sine.name)
        mic = Microphone(rate=RATE, silence_seconds=1.0).start()
        try:
            assert wait_for(lambda: mic.status().level_dbfs > -20, 10), mic.status()
            filled = mic.status().filled          # zeros for the time before audio arrived
            rate, marks, pcm = delivery_rate(mic)
            assert abs(rate - RATE) < 0.05 * RATE, marks            # 48 kHz, real time
            elapsed = time.monotonic() - mic._t0
            assert mic.status().samples <= (elapsed + 2.5) * RATE   # not read flat out
            pcm = pcm[-RATE:]
            assert len(pcm) == RATE and pcm.dtype == np.int16
            assert 15000 <= int(pcm.max()) <= 17500
            rms = 20 * np.log10(np.sqrt(np.mean(pcm.astype(float) ** 2)) / 32768)
            st = mic.status()
            assert abs(rms - SINE_DBFS) < 1.0 and abs(st.level_dbfs - SINE_DBFS) < 1.0, st
            assert st.online and not st.silent and st.last_error is None and st.overflow == 0
            assert st.filled == filled                    # none while the device delivers
        finally:
            mic.stop()


def test_source_unloaded_gives_continuous_silence(pulse, monkeypatch):
    sine = SineSource(440, RATE).load()
    monkeypatch.setenv("PULSE_SOURCE", sine.name)
    mic = Microphone(rate=RATE, silence_seconds=1.0, stall_timeout=2.5, backoff_max=1.0).start()
    try:
        assert wait_for(lambda: mic.status().level_dbfs > -20, 10), mic.status()
        killed = sine.unplug()                                    # the microphone goes away
        t0 = time.monotonic()
        blocks = [mic.read(RATE // 2)]
        while len(blocks) < 20 and not (not blocks[-1].any() and mic.status().silent and
                                        (mic.status().last_error or not killed)):
            blocks.append(mic.read(RATE // 2))        # no gap, no hang: always full blocks
        assert time.monotonic() - t0 < 10
        assert any(b.any() for b in blocks)           # what was buffered is not lost
        assert not blocks[-1].any() and not mic.read(RATE // 2).any()     # silence goes on
        st = mic.status()
        assert st.silent and st.level_dbfs < -60, st
        if killed:                                    # the stream ended: device lost
            assert not st.online and st.last_error and st.filled > RATE, st
        elapsed = time.monotonic() - mic._t0
        assert (elapsed - 1.5) * RATE <= st.samples <= (elapsed + 2.5) * RATE, (elapsed, st)
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
        pcm = mic.read(RATE // 2)                      # includes PortAudio's start-up
        assert len(pcm) == RATE // 2 and not pcm.any()
        mic.read(mic.available())
        t0 = time.monotonic()
        pcm = mic.read(RATE // 2)
        elapsed = time.monotonic() - t0
        assert len(pcm) == RATE // 2 and not pcm.any() and 0.3 <= elapsed <= 1.5, elapsed
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
