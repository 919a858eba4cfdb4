"""Benchmark: a live interview room, as ``edge-agent run`` runs it.

    python -m tools.bench.room_live [--seconds 60] [--size 1920x1080] [--fps 30] [--cameras 2]
                                    [--archive | --mqtt HOST:PORT] [--json [PATH]]

Two cameras play a generated 1080p30 H.264 clip at real-time pace (OpenCV decode, as a UVC or
RTSP camera would deliver), composed picture-in-picture, overlay burned in, H.264 + AAC
segments (default 10 s) sealed one by one into the store - the whole room pipeline of
:class:`agent.room.session.RoomSession`, in this process.

Measured over the run after a warm-up segment:

* CPU used by the process (user + system, all threads) in cores; the target is <= 1.5 cores
  of 2 (``--cpus`` pins the process to that many CPUs first, default 2);
* recorded fps, repeated frames (capture late), encoder time per frame;
* segment close -> sealed latency p50/p99 (ms);
* with ``--archive`` a private Mosquitto and ``edge-agent archive serve`` are started on
  loopback (or ``--mqtt HOST:PORT`` names a broker with an archive already on it), the agent's
  uplink runs too, and segment close -> archived latency p50/p99 is measured
  (``items.created_ts``, set when the closed segment is taken into the store, to the first
  time the ledger shows it archived; polled every 50 ms).

Prints a table; ``--json`` writes a record for ``make bench`` (stdout or PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_CORES = 1.5
FIELDS = {"case": "杭司罚〔2026〕第0123号", "collector": "张三", "collector_id": "33010012345",
          "proof": "询问笔录同步录音录像", "subject": "李四"}


def make_clip(path: Path, size: str, fps: int, seconds: int) -> None:
    r = subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}",
                        "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps),
                        "-pix_fmt", "yuv420p", str(path)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"error: ffmpeg failed / 生成测试片段失败: {r.stderr.strip()[-300:]}")


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(p / 100 * (len(v) - 1))))]


def start_archive(work: Path, procs: list[subprocess.Popen]) -> str:
    """A private Mosquitto on a free loopback port (the archive is started once the device key
    exists); returns HOST:PORT."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_inflight_messages 0\nmax_queued_messages 0\n")
    procs.append(subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise SystemExit("error: mosquitto did not start / 消息代理未启动")
    (work / "archive").mkdir()
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60, help="measured seconds (after a warm-up segment)")
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--cameras", type=int, choices=(1, 2), default=2)
    ap.add_argument("--segment-seconds", type=int, default=10)
    ap.add_argument("--preset", default="ultrafast")
    ap.add_argument("--cpus", type=int, default=2, help="pin to this many CPUs (0 = no pinning)")
    ap.add_argument("--mqtt", metavar="HOST:PORT", help="start the uplink to this broker and measure -> archived")
    ap.add_argument("--archive", action="store_true",
                    help="start a private Mosquitto and archive on loopback and measure -> archived")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH", help="emit a JSON record (stdout or PATH)")
    args = ap.parse_args(argv)
    for tool in ("ffmpeg",):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found / 未找到 {tool}", file=sys.stderr)
            return 2
    if args.cpus and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:args.cpus]
        os.sched_setaffinity(0, cpus)
    out = sys.stderr if args.json == "-" else sys.stdout

    import psutil

    from agent.config import Config
    from agent.evidence import keys
    from agent.runtime import Agent, build_agent

    work = Path(tempfile.mkdtemp(prefix="room-live-"))
    try:
        clip = work / "cam.mp4"
        make_clip(clip, args.size, args.fps, 30)
        over = {"storage__data_dir": str(work / "data"), "storage__reserve_mb": 0, "device__kind": "room",
                "device__id": "room-bench", "room__cameras": [f"file:{clip}"] * args.cameras,
                "room__size": args.size, "room__fps": args.fps, "room__segment_seconds": args.segment_seconds,
                "room__microphone": "tone", "room__preset": args.preset,
                "room__layout": "pip" if args.cameras == 2 else "single", "uplink__enabled": bool(args.mqtt)}
        if args.mqtt:
            host, _, port = args.mqtt.rpartition(":")
            over.update(mqtt__host=host or "127.0.0.1", mqtt__port=int(port))
        procs: list[subprocess.Popen] = []
        if args.archive:
            args.mqtt = start_archive(work, procs)
            over.update(uplink__enabled=True, mqtt__host="127.0.0.1", mqtt__port=int(args.mqtt.rsplit(":", 1)[1]))
        cfg = Config.defaults(**over)
        (work / "data").mkdir()
        if args.mqtt:
            agent = build_agent(cfg)
        else:
            agent = Agent(cfg)
            from agent.room.service import RoomService

            agent.add(RoomService(agent))
        keys.generate(agent.store.key_path, agent.store.pub_path)
        if args.archive:
            edge = str(Path(sys.executable).with_name("edge-agent"))
            subprocess.run([edge, "archive", "enroll", "room-bench", str(agent.store.pub_path), "--unit",
                            cfg.device.unit_code, "--root", str(work / "archive"), "--pin-to", str(agent.store.data_dir)], check=True, capture_output=True)
            procs.append(subprocess.Popen([edge, "archive", "serve", "--root", str(work / "archive"), "--broker",
                                           args.mqtt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        agent.start()
        room = next(c for c in agent.components if c.name == "room")
        room.cmd_start(dict(FIELDS), "bench")
        sess = room.session
        warm = args.segment_seconds + 2
        print(f"room live: {args.cameras} camera(s) {args.size}@{args.fps}, warming up {warm} s, "
              f"measuring {args.seconds} s on {len(os.sched_getaffinity(0))} CPU(s)", file=out)
        time.sleep(warm)
        proc = psutil.Process()
        c0, t0, f0, r0 = proc.cpu_times(), time.monotonic(), sess.frames, sess.repeated
        lat0 = len(sess.seal_latency)
        archived: dict[str, float] = {}
        end = t0 + args.seconds
        while time.monotonic() < end:
            time.sleep(0.05)
            if args.mqtt:
                for row in agent.store.items():
                    if row["kind"] == "room" and row["state"] in ("archived", "purged"):
                        archived.setdefault(row["id"], time.time() - row["created_ts"])
        c1, t1 = proc.cpu_times(), time.monotonic()
        st = sess.status()
        frames, repeated = sess.frames - f0, sess.repeated - r0
        room.cmd_stop({}, "bench")
        agent.stop()
        cpu_s = (c1.user - c0.user) + (c1.system - c0.system)
        cores = cpu_s / (t1 - t0)
        # CPU per recorded frame x fps: the cores a full-rate room needs, even when other work on a
        # shared machine starves this one (then fewer frames are composed and cores reads low)
        cores_full = cpu_s / frames * args.fps if frames else None
        seal = list(sess.seal_latency)[lat0:] or list(sess.seal_latency)
        arch = list(archived.values())
        record = {
            "bench": "room_live",
            "time": dt.datetime.now().astimezone().replace(microsecond=0).isoformat(),
            "host": {"cpus": os.cpu_count(), "pinned_cpus": len(os.sched_getaffinity(0)),
                     "machine": platform.machine(), "python": platform.python_version()},
            "settings": {"cameras": args.cameras, "size": args.size, "fps": args.fps, "preset": args.preset,
                         "segment_seconds": args.segment_seconds, "seconds": args.seconds},
            "cpu_cores": round(cores, 3),
            "cpu_ms_per_frame": round(cpu_s * 1000 / frames, 2) if frames else None,
            "cores_at_full_rate": round(cores_full, 3) if cores_full else None,
            "target_cores": TARGET_CORES,
            "pass": cores <= TARGET_CORES and frames / (t1 - t0) >= args.fps * 0.97,
            "recorded_fps": round(frames / (t1 - t0), 2),
            "repeated_frames": repeated,
            "encoder_ms": st["encoder_ms"],
            "camera_fps": [c["fps"] for c in st["cameras"]],
            "seal_latency_ms": {"n": len(seal), "p50": round(pct(seal, 50) * 1000, 1) if seal else None,
                                "p99": round(pct(seal, 99) * 1000, 1) if seal else None},
            "archive_latency_ms": {"n": len(arch), "p50": round(pct(arch, 50) * 1000, 1) if arch else None,
                                   "p99": round(pct(arch, 99) * 1000, 1) if arch else None,
                                   "note": None if args.mqtt else "not measured: run with --archive (or --mqtt HOST:PORT)"},
            "load_average": os.getloadavg(),
        }
        print(f"CPU {cores:.2f} cores (target <= {TARGET_CORES}; {record['cpu_ms_per_frame']} ms/frame = "
              f"{record['cores_at_full_rate']} cores at {args.fps} fps), recorded {record['recorded_fps']} fps, "
              f"repeated {repeated}, encoder {st['encoder_ms']} ms/frame", file=out)
        print(f"segment close -> sealed: p50 {record['seal_latency_ms']['p50']} ms, "
              f"p99 {record['seal_latency_ms']['p99']} ms ({len(seal)} segments)", file=out)
        if args.mqtt:
            print(f"segment close -> archived: p50 {record['archive_latency_ms']['p50']} ms, "
                  f"p99 {record['archive_latency_ms']['p99']} ms ({len(arch)} segments)", file=out)
        print(f"load average during the run: {', '.join(f'{x:.2f}' for x in record['load_average'])}", file=out)
        if args.json == "-":
            print(json.dumps(record, ensure_ascii=False, indent=2))
        elif args.json:
            Path(args.json).write_text(json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return 0
    finally:
        for p in reversed(locals().get("procs", [])):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
