"""Simulated RS-485 temperature/humidity transmitter: a Modbus RTU slave on a pseudo-terminal.

It answers the register map documented in :mod:`drivers.sensor` (register 0 humidity ×10,
register 1 temperature ×10 signed; functions 03 and 04) with slowly varying, plausible
values, and can misbehave on demand. The slave side uses pymodbus's RTU framer and PDU
classes; the pty's slave end is symlinked to ``link`` so the driver opens a stable path.

    sim = SensorSim("/tmp/ttySENSOR", slave=1).start()
    Sensor("/tmp/ttySENSOR").start()
    sim.set_values(temp_c_x10=-53, humidity_x10=815)   # fixed values instead of drifting
    sim.fault = "garbage"        # "none" | "garbage" | "silent" | "badcrc"
    sim.stop()

CLI (runs until Ctrl-C)::

    python -m tools.sensor_sim --link /tmp/ttySENSOR [--slave 1] [--fault garbage]
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import random
import select
import signal
import threading
import time
import tty
from pathlib import Path

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse
from pymodbus.pdu.register_message import (ReadHoldingRegistersResponse,
                                           ReadInputRegistersResponse)

log = logging.getLogger(__name__)
FAULTS = ("none", "garbage", "silent", "badcrc")


class SensorSim:
    """A Modbus RTU temperature/humidity slave on a pty, with fault injection."""

    def __init__(self, link: str | Path, *, slave: int = 1, fault: str = "none",
                 temp_c_x10: int | None = None, humidity_x10: int | None = None,
                 period: float = 600.0) -> None:
        self.link = Path(link)
        self.slave = slave
        self.fault = fault
        self.period = period                  # seconds for one slow swing of the values
        self._fixed: tuple[int, int] | None = None
        if temp_c_x10 is not None or humidity_x10 is not None:
            self.set_values(235 if temp_c_x10 is None else temp_c_x10,
                            520 if humidity_x10 is None else humidity_x10)
        self.requests = self.replies = 0
        self._framer = FramerRTU(DecodePDU(is_server=True))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master = self._slave_fd = -1
        self.pty_path = ""
        self._t0 = time.monotonic()

    @property
    def fault(self) -> str:
        return self._fault

    @fault.setter
    def fault(self, value: str) -> None:
        if value not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}")
        self._fault = value

    def set_values(self, temp_c_x10: int | None, humidity_x10: int | None) -> None:
        """Answer these fixed values from now on (``None`` values: drift again)."""
        self._fixed = None if temp_c_x10 is None else (int(temp_c_x10), int(humidity_x10))

    def values(self) -> tuple[int, int]:
        """(temp_c_x10, humidity_x10) the simulator answers right now."""
        if self._fixed is not None:
            return self._fixed
        phase = 2 * math.pi * (time.monotonic() - self._t0) / self.period
        return round(235 + 15 * math.sin(phase)), round(520 + 40 * math.cos(phase))

    def registers(self) -> dict[int, int]:
        temp, hum = self.values()
        return {0: hum & 0xFFFF, 1: temp & 0xFFFF}

    def start(self) -> SensorSim:
        """Open the pty, publish ``link`` and start answering."""
        self._master, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd)
        self.pty_path = os.ttyname(self._slave_fd)
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(self.pty_path, tmp)
        os.replace(tmp, self.link)            # atomic: the link never dangles half-made
        self._thread = threading.Thread(target=self._run, name=f"sensor-sim-{self.link.name}",
                                        daemon=True)
        self._thread.start()
        log.info("sensor sim on %s -> %s", self.link, self.pty_path)
        return self

    def stop(self) -> None:
        """Stop answering, remove the link and close the pty (the driver sees it vanish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        try:
            if self.link.is_symlink() and os.readlink(self.link) == self.pty_path:
                self.link.unlink()
        except OSError:
            pass
        for fd in (self._master, self._slave_fd):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave_fd = -1

    def __enter__(self) -> SensorSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, request) -> bytes | None:
        fc = request.function_code
        if fc not in (3, 4):
            resp = ExceptionResponse(fc, ExcCodes.ILLEGAL_FUNCTION, device_id=self.slave)
        else:
            regs = self.registers()
            wanted = range(request.address, request.address + request.count)
            if not all(a in regs for a in wanted):
                resp = ExceptionResponse(fc, ExcCodes.ILLEGAL_ADDRESS, device_id=self.slave)
            else:
                cls = ReadHoldingRegistersResponse if fc == 3 else ReadInputRegistersResponse
                resp = cls(registers=[regs[a] for a in wanted], dev_id=self.slave)
        return self._framer.buildFrame(resp)

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.05)
            if not ready:
                buf = b""                     # an RTU frame never pauses mid-way: drop bits
                continue
            try:
                buf += os.read(self._master, 512)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                used, pdu = self._framer.handleFrame(buf, 0, 0)
            except Exception:                 # undecodable request: forget it, like a device
                buf = b""
                continue
            buf = buf[used:]
            if pdu is None or pdu.dev_id != self.slave:
                continue
            self.requests += 1
            frame = self._answer(pdu)
            fault = self._fault
            if fault == "silent" or frame is None:
                continue
            if fault == "garbage":
                frame = bytes(random.randrange(256) for _ in range(random.randint(5, 20)))
            elif fault == "badcrc":
                frame = frame[:-1] + bytes([frame[-1] ^ 0xFF])
            time.sleep(0.005)                 # turnaround time of a real transmitter
            os.write(self._master, frame)
            self.replies += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.sensor_sim", description=__doc__.split(
        "\n")[0])
    ap.add_argument("--link", required=True, help="path to symlink to the pty (the 'port')")
    ap.add_argument("--slave", type=int, default=1, help="Modbus slave id (default 1)")
    ap.add_argument("--fault", choices=FAULTS, default="none")
    ap.add_argument("--temp", type=int, help="fixed temperature, °C ×10 (default: drifting)")
    ap.add_argument("--humidity", type=int, help="fixed humidity, %%RH ×10")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sim = SensorSim(args.link, slave=args.slave, fault=args.fault, temp_c_x10=args.temp,
                    humidity_x10=args.humidity).start()
    print(f"ready {sim.link} -> {sim.pty_path}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
