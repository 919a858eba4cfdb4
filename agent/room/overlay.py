"""Burned-in overlay for interview-room recordings (同步录音录像叠加信息).

Every frame carries the case number (案件编号), the room (地点), the collector (采集人, name
and certificate number), the date and time to the second with UTC offset, temperature and
humidity, and a REC indicator (red dot + "REC 录制中").

Cost model: the overlay changes at most once per second (the clock), so it is rendered with
Pillow into an RGBA image only when its text changes (an LRU cache keyed by the text and the
frame size), and the per-frame work is a fixed-point numpy blend over the overlay's bounding
box only, with the alpha pre-scaled when the overlay is rendered. Pixels outside the box are
never written.

Frames are BGR ``uint8`` (h, w, 3); :meth:`OverlayRenderer.apply_i420` blends the same
overlay straight into a yuv420p buffer (h*3/2, w) for decoded streams, which saves the two
full-frame colour conversions.

Also here: :func:`signal_lost_frame`, the "信号中断 SIGNAL LOST" placeholder with the time,
used for a camera that is lost so that the recording keeps running without gaps.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from agent.common.errors import ConfigError

from .fonts import load_font

log = logging.getLogger(__name__)

#: Line keys, in the default order. ``OverlayLayout.lines`` selects and orders them.
LINE_KEYS: tuple[str, ...] = ("rec", "case", "room", "collector", "time", "env")
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")

#: Font em size as a fraction of frame height: 37 px at 1080 lines (CJK glyphs ~33 px,
#: digits ~27 px tall), 21 px at 576 lines.
FONT_FRACTION = 0.034
MIN_FONT_PX = 12

BGR = tuple[int, int, int]


def format_wall(ts: dt.datetime) -> str:
    """``2026-11-27 09:15:02 +08:00``: to the second, with the UTC offset. ``ts`` must be aware."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("overlay time must be timezone-aware")
    off = ts.utcoffset()
    assert off is not None
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{ts:%Y-%m-%d %H:%M:%S} {sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_env(temperature_c: float | None, humidity_pct: float | None) -> str:
    """``23.5℃ 45.0%RH``; ``--`` for an unknown value."""
    t = "--" if temperature_c is None else f"{temperature_c:.1f}"
    h = "--" if humidity_pct is None else f"{humidity_pct:.1f}"
    return f"{t}℃ {h}%RH"


@dataclass
class OverlayInfo:
    """What the overlay shows besides the clock."""

    case_number: str
    room_name: str
    collector_name: str
    collector_cert: str
    temperature_c: float | None = None
    humidity_pct: float | None = None
    recording: bool = True


@dataclass
class OverlayLayout:
    """Where and how the overlay is drawn.

    ``corner`` places the box with a margin (fraction of frame height); ``position`` (x, y
    of the box's top-left pixel, rounded down to even for I420 chroma) overrides it. ``font_scale`` multiplies the default size
    (37 px at 1080p). ``lines`` picks and orders the lines from :data:`LINE_KEYS`.
    """

    corner: str = "top-left"
    position: tuple[int, int] | None = None
    font_scale: float = 1.0
    lines: tuple[str, ...] = LINE_KEYS
    labels: bool = True
    margin: float = 0.02
    box_bgr: BGR = (0, 0, 0)
    box_opacity: int = 150
    text_bgr: BGR = (255, 255, 255)
    rec_bgr: BGR = (0, 0, 235)
    font_path: str | None = None
    font_index: int | None = None

    def validate(self) -> None:
        if self.corner not in CORNERS:
            raise ConfigError(f"叠加位置无效 / overlay.corner: {self.corner!r} is not one of {', '.join(CORNERS)}")
        unknown = [k for k in self.lines if k not in LINE_KEYS]
        if unknown:
            raise ConfigError(f"叠加行无效 / overlay.lines: unknown {unknown}; choose from {', '.join(LINE_KEYS)}")
        if not 0.25 <= self.font_scale <= 4.0:
            raise ConfigError(f"叠加字号比例无效 / overlay.font_scale: {self.font_scale} not in 0.25..4")
        if not 0 <= self.box_opacity <= 255:
            raise ConfigError(f"overlay.box_opacity: {self.box_opacity} not in 0..255")
        if not 0 <= self.margin < 0.5:
            raise ConfigError(f"overlay.margin: {self.margin} not in 0..0.5")


def overlay_lines(info: OverlayInfo, wall_ts: dt.datetime, layout: OverlayLayout) -> tuple[str, ...]:
    """The text of each selected line (the REC line's red dot is drawn, not a character)."""
    lab = layout.labels
    text = {
        "rec": "REC 录制中" if info.recording else "",
        "case": (f"案件编号 {info.case_number}" if lab else info.case_number),
        "room": (f"地点 {info.room_name}" if lab else info.room_name),
        "collector": (
            f"采集人 {info.collector_name} 执法证 {info.collector_cert}" if lab
            else f"{info.collector_name} {info.collector_cert}"
        ),
        "time": format_wall(wall_ts),
        "env": (f"温湿度 {format_env(info.temperature_c, info.humidity_pct)}" if lab
                else format_env(info.temperature_c, info.humidity_pct)),
    }
    return tuple(f"{key}\x00{text[key]}" for key in layout.lines if text[key])


def font_px(frame_height: int, scale: float = 1.0) -> int:
    return max(MIN_FONT_PX, round(frame_height * FONT_FRACTION * scale))


@dataclass
class RenderedOverlay:
    """An overlay ready to blend: box at (x, y), size (w, h) in frame pixels.

    ``premul`` = colour * a and ``inv`` = 256 - a (uint16, a = alpha scaled to 0..256), so a
    blend is ``(frame * inv + premul) >> 8``: exact for a = 0 and a = 255.
    """

    x: int
    y: int
    w: int
    h: int
    rgba: np.ndarray  # (h, w, 4) uint8, RGBA as rendered (for tests and previews)
    premul: np.ndarray = field(repr=False)
    inv: np.ndarray = field(repr=False)
    text_px: int = 0
    _work: np.ndarray | None = field(default=None, repr=False)
    _i420: tuple | None = field(default=None, repr=False)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in frame pixels, x1/y1 exclusive."""
        return self.x, self.y, self.x + self.w, self.y + self.h

    def blend_into(self, frame: np.ndarray) -> np.ndarray:
        """Blend into a BGR uint8 frame in place over the bounding box only; returns frame."""
        fh, fw = frame.shape[:2]
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.w, fw), min(self.y + self.h, fh)
        if x1 <= x0 or y1 <= y0:
            return frame
        sx, sy = x0 - self.x, y0 - self.y
        region = frame[y0:y1, x0:x1]
        inv = self.inv[sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
        pre = self.premul[sy:sy + (y1 - y0), sx:sx + (x1 - x0)]
        if self._work is None or self._work.shape != region.shape:
            self._work = np.empty(region.shape, np.uint16)
        work = self._work
        np.multiply(region, inv, out=work, dtype=np.uint16)
        work += pre
        work >>= 8
        region[...] = work
        return frame


    def _i420_planes(self) -> tuple:
        """(premul, inv) for Y at full resolution and for U, V at half (2x2 averaged)."""
        if self._i420 is None:
            rgb = self.rgba[:, :, :3].astype(np.float32)
            r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
            # BT.601 limited range, as OpenCV's BGR<->I420 and ffmpeg's default for yuv420p
            y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
            u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
            v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
            a = (256 - self.inv[:, :, 0]).astype(np.float32)  # 0..256

            def half(x: np.ndarray) -> np.ndarray:
                return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4

            ac = half(a)
            planes = []
            for plane, alpha in ((y * a, a), (half(u * a), ac), (half(v * a), ac)):
                planes.append((np.rint(plane).astype(np.uint16), np.rint(256 - alpha).astype(np.uint16)))
            self._i420 = tuple(planes)
        return self._i420

    def blend_into_i420(self, buf: np.ndarray, width: int, height: int) -> np.ndarray:
        """Blend into a contiguous I420 (yuv420p) frame ``buf`` of shape (height*3/2, width).

        Same result as converting to BGR, :meth:`blend_into`, and back, without the two
        full-frame conversions. The box is on even coordinates, so chroma aligns.
        """
        if buf.shape != (height * 3 // 2, width) or not buf.flags.c_contiguous:
            raise ValueError(f"expected a contiguous I420 buffer ({height * 3 // 2}, {width}), got {buf.shape}")
        if self.x < 0 or self.y < 0 or self.x + self.w > width or self.y + self.h > height:
            raise ValueError("overlay box does not fit the frame")
        flat = buf.reshape(-1)
        cw, ch = width // 2, height // 2
        yplane = flat[: width * height].reshape(height, width)
        uplane = flat[width * height: width * height + cw * ch].reshape(ch, cw)
        vplane = flat[width * height + cw * ch: width * height + 2 * cw * ch].reshape(ch, cw)
        (py, iy), (pu, iu), (pv, iv) = self._i420_planes()
        x, y, cx, cy = self.x, self.y, self.x // 2, self.y // 2
        for plane, pre, inv, ox, oy in ((yplane, py, iy, x, y), (uplane, pu, iu, cx, cy), (vplane, pv, iv, cx, cy)):
            region = plane[oy:oy + inv.shape[0], ox:ox + inv.shape[1]]
            work = np.multiply(region, inv, dtype=np.uint16)
            work += pre
            work >>= 8
            region[...] = work
        return buf


def _prepare(rgba: np.ndarray, x: int, y: int, text_px: int) -> RenderedOverlay:
    alpha = rgba[:, :, 3].astype(np.uint16)
    a256 = (alpha * 256 + 127) // 255  # 0..256
    bgr = rgba[:, :, 2::-1].astype(np.uint16)
    premul = bgr * a256[:, :, None]
    inv = np.repeat((256 - a256)[:, :, None], 3, axis=2)
    h, w = rgba.shape[:2]
    return RenderedOverlay(x, y, w, h, rgba, np.ascontiguousarray(premul), np.ascontiguousarray(inv), text_px)


def _rgba(bgr: BGR, a: int = 255) -> tuple[int, int, int, int]:
    return (bgr[2], bgr[1], bgr[0], a)


class OverlayRenderer:
    """Renders the overlay when its text changes, blends it into every frame.

    >>> r = OverlayRenderer()
    >>> r.apply(frame_bgr, info, wall_ts)   # in place, returns the frame
    """

    def __init__(self, layout: OverlayLayout | None = None, cache_size: int = 4):
        self.layout = layout or OverlayLayout()
        self.layout.validate()
        self._cache: OrderedDict[tuple, RenderedOverlay] = OrderedDict()
        self._cache_size = cache_size
        self.renders = 0  # how many times Pillow ran (≈ once per second)

    def render(self, info: OverlayInfo, wall_ts: dt.datetime, frame_size: tuple[int, int]) -> RenderedOverlay:
        """The overlay for a frame of ``frame_size`` = (width, height); cached by content."""
        lines = overlay_lines(info, wall_ts, self.layout)
        key = (lines, tuple(frame_size))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        rendered = self._render(lines, frame_size)
        self._cache[key] = rendered
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.renders += 1
        return rendered

    def apply(self, frame: np.ndarray, info: OverlayInfo, wall_ts: dt.datetime) -> np.ndarray:
        """Blend into a BGR frame (h, w, 3) in place; returns the frame."""
        h, w = frame.shape[:2]
        return self.render(info, wall_ts, (w, h)).blend_into(frame)

    def apply_i420(self, buf: np.ndarray, width: int, height: int, info: OverlayInfo,
                   wall_ts: dt.datetime) -> np.ndarray:
        """Blend into an I420 frame (height*3/2, width) in place: for decoded camera streams
        that are already yuv420p, saving two colour conversions per frame."""
        return self.render(info, wall_ts, (width, height)).blend_into_i420(buf, width, height)

    def _render(self, lines: tuple[str, ...], frame_size: tuple[int, int]) -> RenderedOverlay:
        lay = self.layout
        fw, fh = frame_size
        size = font_px(fh, lay.font_scale)
        font = load_font(size, lay.font_path, lay.font_index)
        ascent, descent = font.getmetrics()
        line_h = round((ascent + descent) * 1.08)
        pad = max(4, round(size * 0.4))
        dot = round(size * 0.7)
        widths = []
        for entry in lines:
            key, text = entry.split("\x00", 1)
            width = font.getlength(text)
            if key == "rec":
                width += dot + round(size * 0.35)
            widths.append(width)
        bw = int(max(widths, default=0)) + 2 * pad
        bh = line_h * len(lines) + 2 * pad - round((ascent + descent) * 0.08)
        bw, bh = bw + bw % 2, bh + bh % 2  # even, so the box aligns with I420 chroma
        img = Image.new("RGBA", (bw, bh), _rgba(lay.box_bgr, lay.box_opacity))
        draw = ImageDraw.Draw(img)
        y = pad
        for entry in lines:
            key, text = entry.split("\x00", 1)
            x = pad
            if key == "rec":
                cy = y + (ascent + descent) // 2
                draw.ellipse((x, cy - dot // 2, x + dot, cy - dot // 2 + dot), fill=_rgba(lay.rec_bgr))
                x += dot + round(size * 0.35)
                draw.text((x, y), text, font=font, fill=_rgba(lay.rec_bgr))
            else:
                draw.text((x, y), text, font=font, fill=_rgba(lay.text_bgr))
            y += line_h
        margin = round(fh * lay.margin)
        if lay.position is not None:
            ox, oy = lay.position
        else:
            ox = margin if lay.corner.endswith("left") else fw - bw - margin
            oy = margin if lay.corner.startswith("top") else fh - bh - margin
        return _prepare(np.asarray(img), int(ox) // 2 * 2, int(oy) // 2 * 2, size)


# --------------------------------------------------------------------------- placeholder

SIGNAL_LOST_TEXT = "信号中断 SIGNAL LOST"


@functools.lru_cache(maxsize=8)
def _signal_lost(width: int, height: int, time_text: str, label: str,
                 font_path: str | None, font_index: int | None) -> np.ndarray:
    img = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(img)
    big = load_font(max(MIN_FONT_PX, round(height * 0.08)), font_path, font_index)
    small = load_font(font_px(height), font_path, font_index)
    rows = [(SIGNAL_LOST_TEXT, big, (255, 210, 0))]
    if label:
        rows.append((label, small, (230, 230, 230)))
    rows.append((time_text, small, (230, 230, 230)))
    heights = [sum(f.getmetrics()) for _, f, _ in rows]
    gap = round(height * 0.02)
    y = (height - sum(heights) - gap * (len(rows) - 1)) // 2
    for (text, font, colour), h in zip(rows, heights):
        w = font.getlength(text)
        draw.text(((width - w) / 2, y), text, font=font, fill=colour)
        y += h + gap
    frame = np.asarray(img)[:, :, ::-1].copy()
    frame.setflags(write=False)
    return frame


def signal_lost_frame(width: int, height: int, wall_ts: dt.datetime, label: str = "",
                      font_path: str | None = None, font_index: int | None = None) -> np.ndarray:
    """A BGR frame "信号中断 SIGNAL LOST" with ``label`` (e.g. the camera) and the time.

    Rendered at most once per second and size (cached); the caller gets its own copy.
    """
    return _signal_lost(int(width), int(height), format_wall(wall_ts), label, font_path, font_index).copy()
