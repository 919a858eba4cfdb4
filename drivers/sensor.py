"""Room temperature and humidity from an RS-485 Modbus RTU transmitter (pymodbus client).

The interview-room picture must show temperature and humidity (同步录音录像). The common
Chinese RS-485 温湿度变送器 answer Modbus RTU; this driver reads them with pymodbus's
serial client over pyserial and never hand-rolls the protocol.

Register map (the usual one; configurable ``slave``, ``function``, ``address``):

    ========  ===========================  =====================================
    register  meaning                      encoding
    ========  ===========================  =====================================
    0x0000    relative humidity, %RH ×10   unsigned 16-bit (523 = 52.3 %RH)
    0x0001    temperature, °C ×10          signed 16-bit, two's complement
                                           (0xFFCB = -5.3 °C)
    ========  ===========================  =====================================

Both registers are read with one request: function 03 (read holding registers, default)
or 04 (read input registers), slave id 1, 4800 baud 8N1 by default (the factory settings
of most such transmitters; 9600 is the other common one).

A :class:`Sensor` polls every ``interval`` seconds in its own thread. Silence, garbage and
CRC errors on the line are counted, never raised; ``reading()`` returns ``None`` once the
last good reading is older than ``stale_after`` seconds.

    sensor = Sensor("/dev/ttyUSB0", slave=1, interval=2.0).start()
    r = sensor.reading()        # Reading(temp_c_x10=235, humidity_x10=523, ts=...) or None
    sensor.status().errors
    sensor.stop()
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

log = logging.getLogger(__name__)

HUMIDITY_REGISTER = 0
TEMPERATURE_REGISTER = 1


@dataclass(frozen=True)
class Reading:
    """One good reading; integers in tenths (no floats in records), ``ts`` epoch seconds."""

    temp_c_x10: int
    humidity_x10: int
    ts: float

    @property
    def text(self) -> str:
        """Overlay text, e.g. ``23.5°C 52.3%RH``."""
        t = self.temp_c_x10
        return f"{'-' if t < 0 else ''}{abs(t) // 10}.{abs(t) % 10}°C " \
               f"{self.humidity_x10 // 10}.{self.humidity_x10 % 10}%RH"


@dataclass(frozen=True)
class SensorStatus:
    """A snapshot of the sensor's health."""

    port: str
    online: bool                 # a good reading within ``stale_after``
    polls: int
    errors: int                  # failed polls of any kind
    garbage_errors: int          # bytes arrived but no valid frame (noise, bad CRC)
    timeouts: int                # nothing came back
    last_error: str | None
    last_ok: float | None        # epoch seconds of the last good reading


def to_signed16(value: int) -> int:
    return value - 0x10000 if value & 0x8000 else value


class Sensor:
    """Polls one Modbus RTU temperature/humidity transmitter on a serial port."""

    def __init__(self, port: str, *, slave: int = 1, baudrate: int = 4800,
                 parity: str = "N", stopbits: int = 1, function: int = 3, address: int = 0,
                 interval: float = 2.0, timeout: float = 0.5, retries: int = 0,
                 stale_after: float | None = None) -> None:
        if function not in (3, 4):
            raise ValueError("function must be 3 (holding) or 4 (input registers)")
        self.port, self.slave, self.function, self.address = port, slave, function, address
        self.interval, self.timeout = interval, timeout
        self.stale_after = stale_after if stale_after is not None \
            else 3 * interval + timeout * (retries + 1)
        self._client_args = dict(baudrate=baudrate, parity=parity, stopbits=stopbits,
                                 timeout=timeout, retries=retries)
        self._client: ModbusSerialClient | None = None
        self._rx = 0                               # bytes received during the current poll
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading: Reading | None = None
        self._polls = self._errors = self._garbage = self._timeouts = 0
        self._last_error: str | None = None

    def start(self) -> Sensor:
        """Start polling in a thread (the first poll happens at once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"sensor-{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling, join the thread and close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Close the serial port (for ``poll_once`` use without ``start``; stop() does it)."""
        self._close()

    def __enter__(self) -> Sensor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reading(self) -> Reading | None:
        """The last good reading, or None if there is none newer than ``stale_after``."""
        with self._lock:
            r = self._reading
        if r is None or time.time() - r.ts > self.stale_after:
            return None
        return r

    def status(self) -> SensorStatus:
        """A consistent snapshot of counters and state."""
        with self._lock:
            r = self._reading
            online = r is not None and time.time() - r.ts <= self.stale_after
            return SensorStatus(self.port, online, self._polls,
                                self._errors, self._garbage, self._timeouts,
                                self._last_error, r.ts if r else None)

    def poll_once(self) -> Reading | None:
        """One request/response (used by the thread; callable directly when not started)."""
        with self._lock:
            self._polls += 1
        try:
            reading = self._request()
        except Exception as exc:            # serial and Modbus errors alike: count, go on
            self._fail(exc)
            return None
        with self._lock:
            self._reading, self._last_error = reading, None
        return reading

    # -- internals ----------------------------------------------------------------------
    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx = max(self._rx, len(data))
        return data

    def _request(self) -> Reading:
        if self._client is None:
            self._client = ModbusSerialClient(self.port, trace_packet=self._trace,
                                              name=f"sensor {self.port}",
                                              **self._client_args)
        if not self._client.connect():
            self._close()
            raise ConnectionError("cannot open")
        self._rx = 0
        read = self._client.read_holding_registers if self.function == 3 \
            else self._client.read_input_registers
        rr = read(self.address, count=2, device_id=self.slave)
        if rr.isError():
            raise ModbusException(f"device answered with exception {rr}")
        regs = rr.registers
        if len(regs) != 2:
            raise ModbusException(f"expected 2 registers, got {len(regs)}")
        return Reading(temp_c_x10=to_signed16(regs[TEMPERATURE_REGISTER]),
                       humidity_x10=regs[HUMIDITY_REGISTER], ts=time.time())

    def _fail(self, exc: Exception) -> None:
        port_error = isinstance(exc, (ConnectionError, ConnectionException, OSError))
        garbage = self._rx > 0 and not port_error
        if garbage:
            msg = f"garbage or bad CRC on the line ({self._rx} bytes, no valid frame)"
        elif port_error:
            msg = f"serial port {self.port}: {exc}"
        elif isinstance(exc, ModbusIOException):
            msg = f"no response from slave {self.slave} within {self.timeout:g} s"
        else:
            msg = f"bad response: {exc}"
        with self._lock:
            self._errors += 1
            self._garbage += garbage
            self._timeouts += isinstance(exc, ModbusIOException) and not garbage \
                and not port_error
            first = self._last_error is None
            self._last_error = msg
        (log.warning if first else log.debug)("sensor %s: %s", self.port, msg)
        if port_error or (self._client is not None and not self._client.connected):
            self._close()                   # reopen the port on the next poll

    def _close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                log.debug("sensor %s: close failed", self.port, exc_info=True)
            self._client = None

    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stop.is_set():
            self.poll_once()                # bounded by timeout × (retries + 1)
            next_poll = max(next_poll + self.interval, time.monotonic())
            self._stop.wait(next_poll - time.monotonic())
        self._close()
