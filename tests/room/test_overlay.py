"""Interview-room overlay and compositor: real fonts, real pixels."""

from __future__ import annotations

import datetime as dt
import os

import cv2
import numpy as np
import pytest
from PIL import ImageFont

from agent.common.errors import ConfigError
from agent.room.compose import ComposeConfig, Compositor, letterbox
from agent.room.fonts import FontNotFoundError, covers_cjk, find_cjk_font, load_font
from agent.room.overlay import (
    OverlayInfo,
    OverlayLayout,
    OverlayRenderer,
    format_env,
    format_wall,
    signal_lost_frame,
)

TZ = dt.timezone(dt.timedelta(hours=8))
TS = dt.datetime(2026, 11, 27, 9, 15, 2, tzinfo=TZ)
INFO = OverlayInfo(
    case_number="杭司罚〔2026〕第0123号", room_name="第一询问室", collector_name="张三",
    collector_cert="33010012345", temperature_c=23.5, humidity_pct=45.0,
)
BG = (60, 120, 180)


def solid(w: int, h: int, bgr=BG) -> np.ndarray:
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = bgr
    return frame


def text_rows(rgba: np.ndarray) -> np.ndarray:
    """Rows of a rendered overlay that hold text (opaque pixels, the box is semi-opaque)."""
    return np.flatnonzero((rgba[:, :, 3] == 255).any(axis=1))


def runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive row runs as (first, last)."""
    out: list[tuple[int, int]] = []
    for r in rows:
        if out and r == out[-1][1] + 1:
            out[-1] = (out[-1][0], r)
        else:
            out.append((r, r))
    return out


# ----------------------------------------------------------------------------- text


def test_formats():
    assert format_wall(TS) == "2026-11-27 09:15:02 +08:00"
    assert format_wall(TS.astimezone(dt.timezone(dt.timedelta(hours=-3, minutes=-30)))).endswith("-03:30")
    assert format_env(23.5, 45.0) == "23.5℃ 45.0%RH"
    assert format_env(None, 45) == "--℃ 45.0%RH"
    assert format_env(None, None) == "--℃ --%RH"
    with pytest.raises(ValueError):
        format_wall(TS.replace(tzinfo=None))


def test_overlay_present_on_contrasting_box_at_1080p():
    frame = solid(1920, 1080)
    renderer = OverlayRenderer()
    ov = renderer.render(INFO, TS, (1920, 1080))
    renderer.apply(frame, INFO, TS)
    x0, y0, x1, y1 = ov.bbox
    box = frame[y0:y1, x0:x1]
    assert (box != np.array(BG, np.uint8)).any(axis=2).mean() > 0.95  # the whole box is drawn
    # Contrast: the box darkens the background, the text is bright.
    assert box.mean() < np.mean(BG) * 0.7
    assert (box.min(axis=2) > 200).sum() > 1000  # white text pixels
    # Six lines, each glyph run at least 24 px tall at 1080p.
    line_runs = [r for r in runs(text_rows(ov.rgba)) if r[1] - r[0] >= 10]
    assert len(line_runs) == 6, line_runs
    heights = [b - a + 1 for a, b in line_runs]
    assert min(heights) >= 24, heights
    # The REC dot is red.
    rec = ov.rgba[line_runs[0][0]:line_runs[0][1] + 1]
    red = (rec[:, :, 0] > 200) & (rec[:, :, 1] < 60) & (rec[:, :, 2] < 60)
    assert red.sum() > 200


@pytest.mark.parametrize("height,minimum", [(576, 13), (1080, 24), (2160, 48)])
def test_glyph_height_scales_with_frame(height, minimum):
    width = height * 16 // 9 // 2 * 2
    ov = OverlayRenderer(OverlayLayout(lines=("case",))).render(INFO, TS, (width, height))
    (a, b), = runs(text_rows(ov.rgba))
    assert b - a + 1 >= minimum


def test_font_scale_and_line_selection():
    small = OverlayRenderer(OverlayLayout(lines=("time", "env"))).render(INFO, TS, (1920, 1080))
    big = OverlayRenderer(OverlayLayout(lines=("time", "env"), font_scale=1.5)).render(INFO, TS, (1920, 1080))
    assert len(runs(text_rows(small.rgba))) == 2
    assert big.h > small.h * 1.3 and big.w > small.w * 1.3
    with pytest.raises(ConfigError):
        OverlayRenderer(OverlayLayout(lines=("case", "weather")))
    with pytest.raises(ConfigError):
        OverlayRenderer(OverlayLayout(corner="middle"))


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_corner_placement(corner):
    ov = OverlayRenderer(OverlayLayout(corner=corner)).render(INFO, TS, (1920, 1080))
    x0, y0, x1, y1 = ov.bbox
    assert (x0 < 960) == corner.endswith("left") and (x1 > 960) == corner.endswith("right")
    assert (y0 < 540) == corner.startswith("top") and (y1 > 540) == corner.startswith("bottom")
    assert 0 <= x0 and x1 <= 1920 and 0 <= y0 and y1 <= 1080


def test_explicit_position():
    ov = OverlayRenderer(OverlayLayout(position=(100, 200))).render(INFO, TS, (1920, 1080))
    assert ov.bbox[:2] == (100, 200)


def test_cjk_glyphs_are_not_tofu():
    spec = find_cjk_font()
    font = load_font(37)
    assert covers_cjk(font)
    cjk = "杭司罚第号询问室录制中"
    box = "□" * len(cjk)
    missing = "\U0010fffd" * len(cjk)
    widths = {s: font.getlength(s) for s in (cjk, box, missing)}
    masks = {s: font.getmask(s) for s in (cjk, box, missing)}
    assert bytes(masks[cjk]) != bytes(masks[missing])
    assert bytes(masks[cjk]) != bytes(masks[box])
    # Distinct ideographs draw distinct shapes (tofu draws the same box for each).
    assert bytes(font.getmask("杭")) != bytes(font.getmask("罚"))
    assert widths[cjk] > 0 and masks[cjk].getbbox() is not None
    assert spec.path.endswith((".ttc", ".otf", ".ttf"))


def test_non_cjk_font_is_refused_clearly():
    dejavu = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    if not os.path.exists(dejavu):
        pytest.skip("no DejaVu font to compare")
    assert not covers_cjk(ImageFont.truetype(dejavu, 32))
    with pytest.raises(FontNotFoundError, match="CJK"):
        find_cjk_font(dejavu)
    with pytest.raises(FontNotFoundError, match="not found"):
        find_cjk_font("/nonexistent/font.ttc")


def test_blend_touches_only_the_box():
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    before = frame.copy()
    ov = OverlayRenderer().render(INFO, TS, (1920, 1080))
    ov.blend_into(frame)
    x0, y0, x1, y1 = ov.bbox
    outside = np.ones(frame.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(frame[outside], before[outside])
    assert not np.array_equal(frame[y0:y1, x0:x1], before[y0:y1, x0:x1])
    # Semi-opaque box over a mid-grey: the result is a blend, neither the box nor the frame.
    grey = solid(1920, 1080, (128, 128, 128))
    ov.blend_into(grey)
    corner = grey[y0 + 2, x0 + 2]
    assert 20 < int(corner[0]) < 100


def test_box_clipped_at_frame_edge():
    frame = solid(1920, 1080)
    ov = OverlayRenderer(OverlayLayout(position=(1800, 1000))).render(INFO, TS, (1920, 1080))
    ov.blend_into(frame)  # must not raise
    assert (frame[1000:, 1800:] != np.array(BG, np.uint8)).any()
    assert (frame[:1000, :1800] == np.array(BG, np.uint8)).all()


def test_render_once_per_second():
    renderer = OverlayRenderer()
    frame = solid(1280, 720)
    for i in range(30):
        renderer.apply(frame, INFO, TS + dt.timedelta(seconds=i / 30))
    assert renderer.renders == 1
    renderer.apply(frame, INFO, TS + dt.timedelta(seconds=1))
    assert renderer.renders == 2
    changed = OverlayInfo(**{**INFO.__dict__, "temperature_c": None})
    renderer.apply(frame, changed, TS + dt.timedelta(seconds=1))
    assert renderer.renders == 3


def test_i420_blend_matches_bgr_blend():
    frame = solid(1920, 1080)
    frame[500:, :] = (30, 200, 40)
    renderer = OverlayRenderer()
    want = cv2.cvtColor(renderer.apply(frame.copy(), INFO, TS), cv2.COLOR_BGR2YUV_I420)
    got = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    renderer.apply_i420(got, 1920, 1080, INFO, TS)
    diff = np.abs(want.astype(int) - got.astype(int))
    assert diff[:1080].max() <= 2  # luma
    assert diff.mean() < 0.2


def test_signal_lost_placeholder():
    a = signal_lost_frame(1920, 1080, TS, "全景 camera 2")
    b = signal_lost_frame(1920, 1080, TS + dt.timedelta(seconds=1), "全景 camera 2")
    assert a.shape == (1080, 1920, 3) and a.dtype == np.uint8
    assert a.std() > 5  # text drawn
    assert not np.array_equal(a, b)  # the time changes
    a[:] = 0  # callers get their own copy
    assert signal_lost_frame(1920, 1080, TS, "全景 camera 2").std() > 5


# ----------------------------------------------------------------------------- compositor

RED, GREEN, BLUE = (0, 0, 255), (0, 255, 0), (255, 0, 0)


@pytest.mark.parametrize("corner", ["top-left", "top-right", "bottom-left", "bottom-right"])
def test_pip_inset_where_configured(corner):
    cfg = ComposeConfig(mode="pip", inset_corner=corner, inset_fraction=0.25, border_px=4,
                        border_bgr=(255, 255, 255))
    comp = Compositor(cfg)
    out = comp.compose(solid(1280, 720, RED), solid(640, 360, GREEN), TS)
    assert out.shape == (1080, 1920, 3)
    r = comp.inset
    assert r.w == 480 and r.h == 270
    cy, cx = r.y + r.h // 2, r.x + r.w // 2
    assert tuple(out[cy, cx]) == GREEN
    assert tuple(out[r.y - 2, cx]) == (255, 255, 255)  # border
    # The inset sits in the configured corner; the opposite corner is the main picture.
    assert (cx < 960) == corner.endswith("left") and (cy < 540) == corner.startswith("top")
    opposite = (1080 - cy, 1920 - cx)
    assert tuple(out[opposite]) == RED
    assert tuple(out[540, 960]) == RED


def test_pip_resizes_any_input_to_fixed_output_and_letterboxes():
    comp = Compositor(ComposeConfig(width=1280, height=720, inset_corner="top-left"))
    out = comp.compose(solid(640, 480, RED), solid(1920, 1080, GREEN), TS)  # 4:3 main
    assert out.shape == (720, 1280, 3)
    # 4:3 in 16:9: pillarbox bars left and right, picture in the middle.
    assert tuple(out[700, 5]) == (0, 0, 0) and tuple(out[700, 1275]) == (0, 0, 0)
    assert tuple(out[700, 640]) == RED


def test_side_by_side_and_missing_camera():
    comp = Compositor(ComposeConfig(mode="side_by_side"))
    out = comp.compose(solid(1920, 1080, RED), None, TS)
    assert out.shape == (1080, 1920, 3)
    assert tuple(out[540, 480]) == RED
    right = out[:, 1000:]
    assert not (right == np.array(RED, np.uint8)).all(axis=2).any()
    assert right.std() > 5  # the placeholder with its text, not a flat fill


def test_pip_missing_inputs_get_placeholders():
    comp = Compositor(ComposeConfig())
    out = comp.compose(None, None, TS)
    assert out.shape == (1080, 1920, 3)
    assert out.std() > 5


def test_single_passthrough():
    comp = Compositor(ComposeConfig(mode="single"))
    frame = solid(1920, 1080, BLUE)
    assert comp.compose(frame, None, TS) is frame
    small = comp.compose(solid(704, 576, BLUE), None, TS)
    assert small.shape == (1080, 1920, 3) and tuple(small[540, 960]) == BLUE


def test_minimum_resolution_enforced():
    with pytest.raises(ConfigError, match="704x576"):
        Compositor(ComposeConfig(width=640, height=480))
    Compositor(ComposeConfig(width=704, height=576))
    with pytest.raises(ConfigError):
        Compositor(ComposeConfig(mode="quad"))
    with pytest.raises(ConfigError):
        Compositor(ComposeConfig(inset_fraction=0.9))


def test_letterbox_keeps_aspect():
    out = letterbox(solid(100, 100, GREEN), 400, 200)
    cols = np.flatnonzero((out == np.array(GREEN, np.uint8)).all(axis=2).any(axis=0))
    assert cols[0] == 100 and cols[-1] == 299
