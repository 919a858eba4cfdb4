"""Real media for tests, demos and benchmarks (ffmpeg): clips, recorder-style file sets,
and big throughput files.

    python -m tools.media recorder DIR --serial 1234567 --files 3 --seconds 4
    python -m tools.media clip out.mp4 --seconds 10
    python -m tools.media big out.MP4 --size 1G
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import random
import shutil
import subprocess
from pathlib import Path

CHINA_TZ = _dt.timezone(_dt.timedelta(hours=8), "+0800")


class MediaError(RuntimeError):
    pass


def _ffmpeg(args: list[str]) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MediaError("ffmpeg not found on PATH")
    proc = subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise MediaError(f"ffmpeg failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def _creation(ts: _dt.datetime | None) -> list[str]:
    if ts is None:
        return []
    return ["-metadata", f"creation_time={ts.astimezone(_dt.timezone.utc):%Y-%m-%dT%H:%M:%S.000000Z}"]


def make_clip(
    path: str | os.PathLike,
    seconds: float = 10,
    size: str = "1280x720",
    rate: int = 25,
    audio: bool = True,
    seed: int = 0,
    *,
    creation_time: _dt.datetime | None = None,
) -> Path:
    """An MP4 (H.264 ultrafast + AAC) of testsrc2 and a sine tone; ``seed`` shifts the hue
    and the tone so different seeds give different bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hue = (seed * 47) % 360
    freq = 300 + (seed * 97) % 900
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=48000:duration={seconds}"]
    args += ["-vf", f"hue=h={hue}", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(rate)]
    if audio:
        args += ["-c:a", "aac", "-b:a", "64k", "-shortest"]
    args += _creation(creation_time) + ["-movflags", "+faststart", "-f", "mp4", str(path)]
    _ffmpeg(args)
    return path


def make_audio(path: str | os.PathLike, seconds: float = 5, seed: int = 0) -> Path:
    """A WAV (pcm_s16le) or MP3 (by extension) sine tone."""
    path = Path(path)
    freq = 300 + (seed * 97) % 900
    codec = ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"] if path.suffix.lower() == ".mp3" else ["-c:a", "pcm_s16le", "-f", "wav"]
    _ffmpeg(["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}", "-ac", "1", *codec, str(path)])
    return path


def make_photo(path: str | os.PathLike, size: str = "1280x720", seed: int = 0) -> Path:
    """A JPEG still of testsrc2."""
    path = Path(path)
    _ffmpeg(["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=1", "-vf", f"hue=h={(seed * 47) % 360}",
             "-frames:v", "1", "-q:v", "4", "-f", "image2", "-c:v", "mjpeg", str(path)])
    return path


def recorder_name(serial: str, ts: _dt.datetime, index: int, ext: str) -> str:
    """``<serial>_<YYYYMMDDhhmmss>_<NNNN>.<EXT>``, device local time."""
    return f"{serial}_{ts:%Y%m%d%H%M%S}_{index:04d}.{ext.upper()}"


def make_recorder_media(
    directory: str | os.PathLike,
    n_files: int = 3,
    seconds: float = 4,
    *,
    serial: str = "1234567",
    start: _dt.datetime | None = None,
    size: str = "640x360",
    rate: int = 25,
    audio_file: str | None = "WAV",
    photo: bool = True,
    important: tuple[int, ...] = (),
    seed: int = 0,
) -> list[Path]:
    """A recorder's day: ``n_files`` video clips, one audio recording (``audio_file``
    = "WAV" or "MP3", None for none) and one JPG photo, with names
    ``<serial>_<YYYYMMDDhhmmss>_<NNNN>.<EXT>`` in capture order and mtimes at the end of
    each capture. Clip indexes listed in ``important`` get the ``_IMP`` suffix
    (重点文件). Returns the paths in capture order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ts = (start or _dt.datetime.now(CHINA_TZ).replace(microsecond=0) - _dt.timedelta(hours=2)).astimezone(CHINA_TZ)
    ts = ts.replace(microsecond=0)
    paths: list[Path] = []
    index = 1

    def finish(path: Path, begin: _dt.datetime, length: float) -> None:
        end = (begin + _dt.timedelta(seconds=length)).timestamp()
        os.utime(path, (end, end))
        paths.append(path)

    for i in range(n_files):
        name = recorder_name(serial, ts, index, "MP4")
        if i in important:
            name = name.replace(".MP4", "_IMP.MP4")
        finish(make_clip(directory / name, seconds, size, rate, True, seed + i, creation_time=ts), ts, seconds)
        ts += _dt.timedelta(seconds=int(seconds) + 37)
        index += 1
    if audio_file:
        finish(make_audio(directory / recorder_name(serial, ts, index, audio_file), seconds, seed), ts, seconds)
        ts += _dt.timedelta(seconds=int(seconds) + 41)
        index += 1
    if photo:
        finish(make_photo(directory / recorder_name(serial, ts, index, "JPG"), size, seed), ts, 0)
    return paths


def make_big_file(path: str | os.PathLike, size_bytes: int, *, seed: int = 0, block: int = 4 << 20) -> Path:
    """``size_bytes`` of pseudo-random bytes (reproducible from ``seed``; not a valid clip)
    for throughput benchmarks. About 1 GB/s: one random block, each copy salted
    with its index so no two blocks are equal."""
    path = Path(path)
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(block))
    written = 0
    with open(path, "wb") as fh:
        n = 0
        while written < size_bytes:
            chunk = min(block, size_bytes - written)
            base[0:8] = n.to_bytes(8, "big")
            fh.write(memoryview(base)[:chunk])
            written += chunk
            n += 1
    return path


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().rstrip("b")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.media", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("clip")
    c.add_argument("path")
    c.add_argument("--seconds", type=float, default=10)
    c.add_argument("--size", default="1280x720")
    c.add_argument("--rate", type=int, default=25)
    c.add_argument("--no-audio", action="store_true")
    c.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("recorder")
    r.add_argument("dir")
    r.add_argument("--serial", default="1234567")
    r.add_argument("--files", type=int, default=3)
    r.add_argument("--seconds", type=float, default=4)
    r.add_argument("--size", default="640x360")
    r.add_argument("--important", type=int, action="append", default=[], help="index of a clip to mark _IMP")
    b = sub.add_parser("big")
    b.add_argument("path")
    b.add_argument("--size", required=True, help="bytes, or with k/M/G suffix")
    b.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.what == "clip":
        print(make_clip(args.path, args.seconds, args.size, args.rate, not args.no_audio, args.seed))
    elif args.what == "recorder":
        for p in make_recorder_media(args.dir, args.files, args.seconds, serial=args.serial, size=args.size,
                                     important=tuple(args.important)):
            print(p)
    else:
        print(make_big_file(args.path, _size(args.size), seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
