"""CJK font discovery for burned-in overlays.

The overlay must draw Chinese (case numbers such as "杭司罚〔2026〕第0123号", "录制中"),
so a font without CJK coverage would silently draw tofu boxes into evidence. Discovery
therefore *verifies* coverage: a candidate is accepted only when a CJK ideograph renders
differently from a code point the font cannot have (its missing-glyph box).

Order: an explicit path (configuration), the ``EDGE_AGENT_CJK_FONT`` environment variable,
the Debian ``fonts-noto-cjk`` files, then ``fc-list :lang=zh-cn``. For a ``.ttc`` collection
the face index is taken from fc-list when available (Noto Sans CJK: 2 is Simplified Chinese).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass

from PIL import ImageFont

from agent.common.errors import EdgeError

log = logging.getLogger(__name__)

ENV_VAR = "EDGE_AGENT_CJK_FONT"

#: Known locations, best first: (path, face index of Simplified Chinese in the collection).
KNOWN_FONTS: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Medium.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
)

_PROBE_A, _PROBE_B = "中", "录"
_PROBE_MISSING = "\U0010fffd"  # supplementary private use area: drawn as the missing-glyph box


class FontNotFoundError(EdgeError):
    """No usable CJK font: the overlay would draw tofu boxes instead of Chinese."""


@dataclass(frozen=True)
class FontSpec:
    path: str
    index: int = 0


def covers_cjk(font: ImageFont.FreeTypeFont) -> bool:
    """True when the font draws CJK ideographs (not its missing-glyph box)."""
    a, b, missing = (font.getmask(t) for t in (_PROBE_A, _PROBE_B, _PROBE_MISSING))
    if a.size[0] == 0 or a.getbbox() is None:
        return False

    def same(x, y) -> bool:
        return x.size == y.size and bytes(x) == bytes(y)

    # Tofu: two different ideographs draw the same box, or draw like the missing glyph.
    return not same(a, b) and not same(a, missing)


def _usable(spec: FontSpec) -> bool:
    try:
        font = ImageFont.truetype(spec.path, 32, index=spec.index)
    except OSError:
        return False
    return covers_cjk(font)


def _fc_list() -> list[FontSpec]:
    exe = shutil.which("fc-list")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, ":lang=zh-cn", "-f", "%{file}|%{index}|%{family[0]}\n"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    specs: list[tuple[int, FontSpec]] = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        try:
            index = int(parts[1] or 0)
        except ValueError:
            index = 0
        family = parts[2]
        # Prefer a Simplified Chinese sans face, then any sans, then the rest.
        rank = 0 if ("SC" in family and "Sans" in family) else 1 if "Sans" in family else 2
        specs.append((rank, FontSpec(parts[0], index)))
    specs.sort(key=lambda item: item[0])
    return [spec for _, spec in specs]


@functools.lru_cache(maxsize=8)
def find_cjk_font(path: str | None = None, index: int | None = None) -> FontSpec:
    """Return a verified CJK font. ``path`` (configured) wins and is never silently replaced.

    Raises :class:`FontNotFoundError` (bilingual, one line) when nothing usable is found.
    """
    if path:
        spec = FontSpec(path, 2 if index is None and path.endswith(".ttc") and "CJK" in path else (index or 0))
        if not os.path.exists(path):
            raise FontNotFoundError(f"找不到叠加字体 / overlay font not found: {path}")
        if not _usable(spec):
            raise FontNotFoundError(
                f"叠加字体不含中文字形 / overlay font has no CJK glyphs: {path} (index {spec.index})"
            )
        return spec
    env = os.environ.get(ENV_VAR)
    if env:
        return find_cjk_font(env, index)
    candidates = [FontSpec(p, i) for p, i in KNOWN_FONTS if os.path.exists(p)] + _fc_list()
    for spec in candidates:
        if _usable(spec):
            log.debug("CJK font: %s index %d", spec.path, spec.index)
            return spec
    raise FontNotFoundError(
        "找不到中文字体，请安装 fonts-noto-cjk 或配置字体路径 / "
        f"no CJK font found: install fonts-noto-cjk or set the font path ({ENV_VAR})"
    )


@functools.lru_cache(maxsize=64)
def load_font(size: int, path: str | None = None, index: int | None = None) -> ImageFont.FreeTypeFont:
    """A Pillow font of ``size`` pixels (em size) from :func:`find_cjk_font`; cached."""
    spec = find_cjk_font(path, index)
    return ImageFont.truetype(spec.path, max(1, int(size)), index=spec.index)
