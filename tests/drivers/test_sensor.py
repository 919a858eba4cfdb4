"""Sensor driver (pymodbus client) against the Modbus RTU simulator on a real pty."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from drivers.sensor import Reading, Sensor
from tools.sensor_sim import SensorSim

ROOT = Path(__file__).resolve().parents[2]
# where the simulator answers and no timeout is expected: generous, so a loaded machine cannot fail it
ANSWER_TIMEOUT = 5.0


def wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def link(tmp_path):
    return tmp_path / "ttySENSOR"


def test_reads_fixed_and_drifting_values(link):
    with SensorSim(link, temp_c_x10=-53, humidity_x10=815) as sim:
        sensor = Sensor(str(link), interval=0.1, timeout=ANSWER_TIMEOUT).start()
        try:
            assert wait_for(lambda: sensor.reading() is not None, 3), sensor.status()
            r = sensor.reading()
            assert (r.temp_c_x10, r.humidity_x10) == (-53, 815)      # signed temperature
            assert r.text == "-5.3°C 81.5%RH" and abs(time.time() - r.ts) < 1
            sim.set_values(None, None)                               # slow drift again
            assert wait_for(lambda: sensor.reading().humidity_x10 != 815, 2)
            r, (t, h) = sensor.reading(), sim.values()
            assert 220 <= r.temp_c_x10 <= 250 and 480 <= r.humidity_x10 <= 560, r
            assert abs(r.temp_c_x10 - t) <= 1 and abs(r.humidity_x10 - h) <= 1
            st = sensor.status()
            assert st.online and st.errors == 0 and st.polls >= 2 and st.last_error is None
        finally:
            sensor.stop()
    assert Reading(235, 520, 0).text == "23.5°C 52.0%RH"


def test_input_registers_and_slave_id(link):
    with SensorSim(link, slave=7, temp_c_x10=301, humidity_x10=402):
        good = Sensor(str(link), slave=7, function=4, timeout=ANSWER_TIMEOUT)
        assert (good.poll_once().temp_c_x10, good.reading().humidity_x10) == (301, 402)
        good.close()
        other = Sensor(str(link), slave=2, timeout=0.2)              # nobody answers id 2
        assert other.poll_once() is None
        st = other.status()
        assert st.timeouts == 1 and st.garbage_errors == 0 and "slave 2" in st.last_error
        other.close()


def test_line_faults_are_counted_not_raised(link):
    with SensorSim(link, temp_c_x10=240, humidity_x10=500) as sim:
        sensor = Sensor(str(link), interval=0.1, timeout=0.2, stale_after=0.8).start()
        try:
            assert wait_for(lambda: sensor.reading() is not None, 3)
            for fault in ("garbage", "badcrc"):
                before = sensor.status().garbage_errors
                sim.fault = fault
                assert wait_for(lambda: sensor.status().garbage_errors >= before + 2, 3), \
                    sensor.status()
                assert "garbage" in sensor.status().last_error
            sim.fault = "silent"
            before = sensor.status().timeouts
            assert wait_for(lambda: sensor.status().timeouts >= before + 2, 3)
            assert wait_for(lambda: sensor.reading() is None, 2)      # stale: no value shown
            st = sensor.status()
            assert not st.online and st.errors >= st.garbage_errors + 2 >= 6, st
            sim.fault = "none"
            assert wait_for(lambda: sensor.reading() is not None, 3)
            assert sensor.status().online and sensor.status().last_error is None
            assert sensor._thread.is_alive()
        finally:
            sensor.stop()


def test_port_missing_then_simulator_appears_and_restarts(link):
    sensor = Sensor(str(link), interval=0.1, timeout=0.2).start()
    try:
        assert wait_for(lambda: sensor.status().errors >= 2, 3)
        assert "serial port" in sensor.status().last_error and sensor.reading() is None
        sim = SensorSim(link, temp_c_x10=200, humidity_x10=450).start()
        assert wait_for(lambda: sensor.reading() is not None, 3), sensor.status()
        sim.stop()                                                   # unplugged
        errors = sensor.status().errors
        assert wait_for(lambda: sensor.status().errors > errors, 3)
        sim = SensorSim(link, temp_c_x10=210, humidity_x10=460).start()
        assert wait_for(lambda: getattr(sensor.reading(), "temp_c_x10", 0) == 210, 3), \
            sensor.status()
        sim.stop()
    finally:
        sensor.stop()


def test_cli(link):
    proc = subprocess.Popen([sys.executable, "-m", "tools.sensor_sim", "--link", str(link),
                             "--temp", "199", "--humidity", "601"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith(f"ready {link}")
        sensor = Sensor(str(link), timeout=ANSWER_TIMEOUT)
        r = sensor.poll_once()
        assert r is not None and (r.temp_c_x10, r.humidity_x10) == (199, 601)
        sensor.close()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(5) == 0
        proc.stdout.close()
    assert not link.exists()
