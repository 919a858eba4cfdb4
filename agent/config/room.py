"""``[room]``: the interview room's cameras, picture, overlay and sensor (docs/room.md)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .base import ConfigModel

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
OVERLAY_LINES = ("rec", "case", "room", "collector", "time", "env")


class RoomConfig(ConfigModel):
    name: str = Field("第一询问室 / Interview room 1", description="Room name, burned into the picture and recorded as metadata.")
    cameras: list[str] = Field(["/dev/video0"],
                               description="Camera sources, main (frontal) first, then panorama: /dev/videoN, rtsp://URL, "
                                           "or file:PATH (played at real-time pace, looped).")
    layout: Literal["pip", "side", "single"] = Field("pip", description="Picture: pip (panorama inset in the main picture), "
                                                                        "side (side by side) or single.")
    inset_corner: Corner = Field("bottom-right", description="Corner of the panorama inset (pip).")
    inset_percent: int = Field(30, ge=10, le=50, description="Inset width as a percentage of the picture width (pip).")
    size: str = Field("1920x1080", description="Recorded picture size WIDTHxHEIGHT (at least 704x576).")
    fps: int = Field(30, ge=5, le=60, description="Recorded frames per second (fixed; late frames are repeated).")
    segment_seconds: int = Field(10, ge=2, le=600, description="Length of a segment; each closed segment is sealed and uploaded at once.")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "ultrafast", description="x264 preset (CPU against size).")
    crf: int = Field(23, ge=10, le=40, description="x264 constant quality (lower = better, bigger).")
    microphone: str = Field("default", description="Audio input: default, part of a PortAudio device name, tone (440 Hz demo) "
                                                   "or none (silent track).")
    sensor_port: str = Field("", description="RS-485 temperature/humidity transmitter (Modbus RTU) serial port; empty = none.")
    sensor_slave: int = Field(1, ge=1, le=247, description="Modbus slave id of the sensor.")
    sensor_baudrate: Literal[1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200] = Field(9600, description="Sensor serial speed.")
    overlay_corner: Corner = Field("top-left", description="Corner of the burned-in text box.")
    overlay_lines: list[str] = Field(list(OVERLAY_LINES), description="Overlay lines, in order: rec, case, room, collector, time, env.")
    overlay_scale: int = Field(100, ge=50, le=300, description="Overlay text size in percent (100 = 37 px glyph box at 1080 lines).")
    camera_lost_s: int = Field(2, ge=1, le=60,
                               description="A camera with no new frame for this many seconds is lost (placeholder, gap, alarm).")

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, value: list[str]) -> list[str]:
        if not 1 <= len(value) <= 2:
            raise ValueError("须给 1 或 2 个摄像头 / give 1 or 2 camera sources (main = frontal shot, then panorama)")
        for v in value:
            if not v.strip():
                raise ValueError(f"摄像头来源无效 / camera source {v!r}: expected a device path, rtsp://URL or file:PATH")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        m = re.fullmatch(r"(\d{3,4})x(\d{3,4})", value)
        if not m:
            raise ValueError("格式应为 宽x高 / expected WIDTHxHEIGHT, e.g. 1920x1080")
        w, h = int(m.group(1)), int(m.group(2))
        if w < 704 or h < 576:
            raise ValueError("低于最小 704x576 / below the minimum 704x576 (GA/T interview-room recording)")
        if w % 2 or h % 2 or w > 3840 or h > 2160:
            raise ValueError("宽高须为偶数且不超过 3840x2160 / width and height must be even and at most 3840x2160")
        return value

    @field_validator("overlay_lines")
    @classmethod
    def _lines(cls, value: list[str]) -> list[str]:
        if not value or any(v not in OVERLAY_LINES for v in value):
            raise ValueError(f"叠加行无效 / choose lines from {', '.join(OVERLAY_LINES)} (at least one)")
        return value
