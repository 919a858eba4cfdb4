"""The room's devices: cameras, microphone and the temperature / humidity sensor, opened from
the ``[room]`` settings (drivers/camera, drivers/microphone, drivers/sensor)."""

from __future__ import annotations

AUDIO_RATE = 48000


def open_camera(source: str, name: str):
    from drivers.camera import Camera

    if source.startswith("file:"):
        return Camera(source[5:], name=name, loop=True)
    src: str | int = int(source) if source.isdigit() else source
    return Camera(src, name=name)


def open_microphone(spec: str):
    from drivers import microphone as m

    if spec == "none":
        return None
    if spec == "tone":
        return m.ToneMicrophone(rate=AUDIO_RATE, name="tone")
    return m.Microphone(device=None if spec == "default" else spec, rate=AUDIO_RATE, name="microphone")


class SensorPoller:
    """Temperature / humidity for the overlay and the status, from :class:`drivers.sensor.Sensor`
    (Modbus RTU, its own polling thread; garbage and silence are counted, never raised)."""

    def __init__(self, port: str, slave: int, baudrate: int) -> None:
        from drivers.sensor import Sensor

        self.port = port
        self.sensor = Sensor(port, slave=slave, baudrate=baudrate, interval=1.0)

    def start(self) -> "SensorPoller":
        self.sensor.start()
        return self

    def stop(self) -> None:
        self.sensor.stop()

    def latest(self) -> tuple[float | None, float | None]:
        r = self.sensor.reading()
        if r is None:
            return None, None
        return r.temp_c_x10 / 10, r.humidity_x10 / 10

    def status(self) -> dict:
        st = self.sensor.status()
        t, h = self.latest()
        return {"port": self.port, "ok": st.online, "temperature_c": t, "humidity_pct": h, "polls": st.polls,
                "errors": st.errors, "garbage": st.garbage_errors, "timeouts": st.timeouts,
                "last_error": st.last_error}

    @property
    def last_error(self) -> str | None:
        return self.sensor.status().last_error
