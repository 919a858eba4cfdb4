"""Benchmark: the interview-room pipeline against ffmpeg on the same clip.

    python -m tools.bench.room_pipeline [--seconds 15] [--preset ultrafast] [--repeat 2] [--json [PATH]]

1. Generates a 1080p30 clip (ffmpeg ``testsrc2`` + 440 Hz ``sine``, 48 kHz mono, H.264 + AAC).
2. Pipeline (ours): PyAV decode -> BGR -> compositor (single camera) -> overlay (CJK, clock,
   REC) -> :class:`agent.room.segmenter.Segmenter` (libx264 + AAC, MPEG-TS, 10 s segments,
   .part + fsync + rename, timestamp sidecars) -> SHA-256 of each segment in ``on_segment``.
   The ratio is taken on the I420 path (overlay blended into the decoded yuv420p picture, as
   for a single decoded camera stream); the BGR + compositor path (two-camera room loop) is
   measured too and shown beside it.
3. Baseline: ``ffmpeg -i clip -vf drawtext=... -c:v libx264 -preset <same> -c:a aac`` with the
   same CRF, GOP, audio settings and 10 s MPEG-TS segments (``-f segment``), same run.

Prints a table with both rates and their ratio (target >= 0.7); ``--json`` writes a record
for the ``make bench`` aggregator (to stdout, the table then goes to stderr, or to PATH).
Each side runs ``--repeat`` times, alternating; the best run of each counts (the box may be
shared: CPU milliseconds per frame are printed too, as they depend less on other load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np

from agent.room.compose import ComposeConfig, Compositor
from agent.room.fonts import find_cjk_font
from agent.room.overlay import OverlayInfo, OverlayLayout, OverlayRenderer, font_px
from agent.room.segmenter import SegmentInfo, Segmenter

TARGET_RATIO = 0.7
WIDTH, HEIGHT, FPS, RATE = 1920, 1080, 30, 48000
CRF = 23
SEGMENT_SECONDS = 10

INFO = OverlayInfo(
    case_number="杭司罚〔2026〕第0123号", room_name="第一询问室", collector_name="张三",
    collector_cert="33010012345", temperature_c=23.5, humidity_pct=45.0,
)


@dataclass
class RunResult:
    name: str
    frames: int
    seconds: float
    segments: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    cpu_seconds: float = 0.0  # user + system CPU of all threads / the child process

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        return self.cpu_seconds * 1000 / self.frames if self.frames else 0.0


def _cpu(who: int) -> float:
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... failed: {proc.stderr.strip()[-400:]}")


def make_clip(path: Path, seconds: int) -> None:
    _run([
        "ffmpeg", "-v", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={RATE}",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(FPS),
        "-c:a", "aac", "-ac", "1", "-ar", str(RATE), str(path),
    ])


def count_frames(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
         "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return int(out.split(",")[0])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _escape_drawtext(s: str) -> str:
    return s.replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")


def run_ffmpeg(clip: Path, out_dir: Path, preset: str, frames: int) -> RunResult:
    """The reference: one ffmpeg process, drawtext overlay with the same lines and clock."""
    font = find_cjk_font()
    size = font_px(HEIGHT)
    lines = [
        "REC 录制中",
        f"案件编号 {INFO.case_number}",
        f"地点 {INFO.room_name}",
        f"采集人 {INFO.collector_name} 执法证 {INFO.collector_cert}",
        "%{localtime:%Y-%m-%d %H\\:%M\\:%S} +08\\:00",
        "温湿度 23.5℃ 45.0%RH",
    ]
    textfile = out_dir / "drawtext.txt"
    textfile.write_text("\n".join(lines), encoding="utf-8")
    vf = (
        f"drawtext=fontfile={_escape_drawtext(font.path)}:textfile={_escape_drawtext(str(textfile))}"
        f":fontsize={size}:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw={round(size * 0.4)}"
        f":line_spacing={round(size * 0.3)}:x=22:y=22"
    )
    seg_dir = out_dir / "ffmpeg"
    seg_dir.mkdir()
    cmd = [
        "ffmpeg", "-v", "error", "-y", "-i", str(clip), "-vf", vf,
        "-c:v", "libx264", "-preset", preset, "-crf", str(CRF), "-g", str(FPS),
        "-x264-params", f"keyint={FPS}:min-keyint={FPS}:scenecut=0",
        "-c:a", "aac", "-ar", str(RATE), "-ac", "1", "-b:a", "96k",
        "-f", "segment", "-segment_time", str(SEGMENT_SECONDS), "-segment_format", "mpegts",
        str(seg_dir / "seg_%03d.ts"),
    ]
    c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    _run(cmd)
    seconds = time.perf_counter() - t0
    segs = [{"name": p.name, "size": p.stat().st_size} for p in sorted(seg_dir.glob("*.ts"))]
    return RunResult("ffmpeg drawtext+libx264+aac", frames, seconds, segs,
                     cpu_seconds=_cpu(resource.RUSAGE_CHILDREN) - c0)


def _decoder(clip: Path, q: "queue.Queue", stop: threading.Event, bgr: bool) -> None:
    """Decode in its own thread (PyAV releases the GIL in the codec) to overlap with encoding."""
    try:
        with av.open(str(clip)) as src:
            vs = src.streams.video[0]
            vs.thread_type = "AUTO"
            streams = [vs] + list(src.streams.audio[:1])
            for frame in src.decode(*streams):
                if stop.is_set():
                    return
                if isinstance(frame, av.VideoFrame):
                    yuv = frame.to_ndarray(format="yuv420p")
                    q.put(("v", cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420) if bgr else yuv))
                else:
                    pcm = frame.to_ndarray()  # fltp (1, n) for AAC
                    if pcm.dtype != np.int16:
                        pcm = np.clip(pcm[0] * 32767.0, -32768, 32767).astype(np.int16)
                    else:
                        pcm = pcm.reshape(-1)
                    q.put(("a", pcm))
    except Exception as exc:  # surfaced in the main thread
        q.put(("error", exc))
    finally:
        q.put(("end", None))


def run_pipeline(clip: Path, out_dir: Path, preset: str, bgr: bool = False) -> RunResult:
    """``bgr=False``: decoded yuv420p, overlay blended in I420 (a camera stream, one camera).
    ``bgr=True``: converted to BGR and through the compositor as the two-camera loop does."""
    seg_dir = out_dir / "pipeline"
    hashes: list[dict] = []

    def on_segment(info: SegmentInfo) -> None:
        hashes.append({"name": info.path.name, "size": info.size, "sha256": sha256_file(info.path),
                       "frames": info.frames, "audio_samples": info.audio_samples})

    tz = dt.timezone(dt.timedelta(hours=8))
    start = dt.datetime.now(tz).replace(microsecond=0)
    comp = Compositor(ComposeConfig(mode="single", width=WIDTH, height=HEIGHT))
    overlay = OverlayRenderer(OverlayLayout())
    seg = Segmenter(seg_dir, fps=FPS, size=(WIDTH, HEIGHT), segment_seconds=SEGMENT_SECONDS,
                    audio_rate=RATE, on_segment=on_segment, name_prefix="room", preset=preset, crf=CRF)
    q: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()
    frames = 0
    c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    worker = threading.Thread(target=_decoder, args=(clip, q, stop, bgr), name="bench-decode", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                break
            if kind == "error":
                raise item
            wall = start + dt.timedelta(seconds=frames / FPS) if kind == "v" else None
            if kind == "v":
                if bgr:
                    picture = comp.compose(item, None, wall)
                    overlay.apply(picture, INFO, wall)
                else:
                    picture = overlay.apply_i420(item, WIDTH, HEIGHT, INFO, wall)
                seg.write_video(picture, wall)
                frames += 1
            else:
                seg.write_audio(item)
        seg.close()
    finally:
        stop.set()
        worker.join(timeout=5)
    seconds = time.perf_counter() - t0
    cpu = _cpu(resource.RUSAGE_SELF) - c0
    st = seg.stats
    return RunResult("pipeline", frames, seconds, hashes, cpu_seconds=cpu, extra={
        "encode_ms_mean": round(st.mean_ms, 2), "encode_ms_p95": round(st.p95_ms, 2),
        "encode_ms_max": round(st.max_ms, 2), "overlay_renders": overlay.renders,
        "audio_dropped": seg.audio_dropped,
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.room_pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=15, help="clip length in seconds (default 15; 10-20 intended)")
    ap.add_argument("--preset", default="ultrafast", help="x264 preset for both sides (default ultrafast)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, best counts (default 3)")
    ap.add_argument("--no-bgr", dest="bgr", action="store_false",
                    help="skip the BGR + compositor variant of the pipeline")
    ap.add_argument("--clip", type=Path, help="use this 1080p30 clip instead of generating one")
    ap.add_argument("--keep", type=Path, help="keep outputs in this directory")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="emit a JSON record (to stdout, or to PATH)")
    args = ap.parse_args(argv)
    if not 1 <= args.seconds <= 60:
        ap.error("--seconds must be 1..60")
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            print(f"error: {tool} not found / 未找到 {tool}", file=sys.stderr)
            return 2
    table_out = sys.stderr if args.json == "-" else sys.stdout

    work = Path(tempfile.mkdtemp(prefix="room-bench-"))
    try:
        clip = args.clip or work / "clip1080p30.mp4"
        if not args.clip:
            make_clip(clip, args.seconds)
        frames = count_frames(clip)
        best: dict[str, RunResult] = {}
        least_cpu: dict[str, float] = {}
        sides = ("ffmpeg", "pipeline") + (("pipeline_bgr",) if args.bgr else ())
        for r in range(max(1, args.repeat)):
            for side in sides:
                run_dir = work / f"run{r}-{side}"
                run_dir.mkdir()
                if side == "ffmpeg":
                    res = run_ffmpeg(clip, run_dir, args.preset, frames)
                else:
                    res = run_pipeline(clip, run_dir, args.preset, bgr=side == "pipeline_bgr")
                print(f"  run {r + 1} {side:12s} {res.fps:7.1f} fps ({res.frames} frames, {res.seconds:.2f} s, "
                      f"{res.cpu_ms_per_frame:.1f} CPU ms/frame)", file=table_out)
                if side not in best or res.fps > best[side].fps:
                    best[side] = res
                least_cpu[side] = min(least_cpu.get(side, float("inf")), res.cpu_ms_per_frame)
        ff, pipe = best["ffmpeg"], best["pipeline"]
        ratio = pipe.fps / ff.fps if ff.fps else 0.0

        def verdict(x: float) -> str:
            return f"{x:.2f} {'PASS' if x >= TARGET_RATIO else 'BELOW TARGET'}"

        rows = [
            ("ffmpeg drawtext + libx264 + aac, segments (reference)", ff, ""),
            ("pipeline: decode > overlay (I420) > h264/aac > segment > sha256", pipe, verdict(ratio)),
        ]
        bgr_ratio = None
        if "pipeline_bgr" in best:
            pb = best["pipeline_bgr"]
            bgr_ratio = pb.fps / ff.fps if ff.fps else 0.0
            rows.append(("pipeline: decode > BGR > compositor > overlay > ... (same)", pb, verdict(bgr_ratio)))
        w = max(len(r[0]) for r in rows)
        print(f"\nroom pipeline, {WIDTH}x{HEIGHT}@{FPS}, {frames} frames, preset {args.preset}, "
              f"crf {CRF}, {os.cpu_count()} CPUs, best of {args.repeat}", file=table_out)
        print(f"{'':{w}}  {'fps':>7s}  {'CPU ms/f':>8s}  ratio (target >= {TARGET_RATIO})", file=table_out)
        for name, res, rat in rows:
            print(f"{name:{w}}  {res.fps:7.1f}  {res.cpu_ms_per_frame:8.1f}  {rat}", file=table_out)
        cpu_ratio = least_cpu["ffmpeg"] / least_cpu["pipeline"] if least_cpu["pipeline"] else 0.0
        cpu_line = f"CPU efficiency (ffmpeg CPU/frame over ours, least of each): I420 {cpu_ratio:.2f}"
        bgr_cpu_ratio = None
        if "pipeline_bgr" in least_cpu:
            bgr_cpu_ratio = least_cpu["ffmpeg"] / least_cpu["pipeline_bgr"]
            cpu_line += f", BGR {bgr_cpu_ratio:.2f}"
        print(cpu_line, file=table_out)
        print(f"encoder lag per frame: mean {pipe.extra['encode_ms_mean']} ms, p95 {pipe.extra['encode_ms_p95']} ms, "
              f"max {pipe.extra['encode_ms_max']} ms; segments {len(pipe.segments)}", file=table_out)
        record = {
            "bench": "room_pipeline",
            "time": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(),
            "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                     "pyav": av.__version__},
            "clip": {"width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": frames, "audio_rate": RATE},
            "settings": {"preset": args.preset, "crf": CRF, "gop": FPS, "segment_seconds": SEGMENT_SECONDS,
                         "container": "mpegts", "repeat": args.repeat},
            "ffmpeg_cpu_ms_per_frame": round(ff.cpu_ms_per_frame, 2),
            "pipeline_cpu_ms_per_frame": round(pipe.cpu_ms_per_frame, 2),
            "ffmpeg_fps": round(ff.fps, 2),
            "pipeline_fps": round(pipe.fps, 2),
            "ratio": round(ratio, 3),
            "target_ratio": TARGET_RATIO,
            "pass": ratio >= TARGET_RATIO,
            "bgr_pipeline_fps": round(best["pipeline_bgr"].fps, 2) if bgr_ratio is not None else None,
            "bgr_ratio": round(bgr_ratio, 3) if bgr_ratio is not None else None,
            "cpu_ratio": round(cpu_ratio, 3),
            "bgr_cpu_ratio": round(bgr_cpu_ratio, 3) if bgr_cpu_ratio is not None else None,
            "pipeline": pipe.extra,
            "segments": pipe.segments,
        }
        if args.json == "-":
            print(json.dumps(record, ensure_ascii=False, indent=2))
        elif args.json:
            Path(args.json).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for p in work.iterdir():
                shutil.move(str(p), args.keep / p.name)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
