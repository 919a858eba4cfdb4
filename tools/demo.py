"""The full local demo (`make demo`): a private Mosquitto, the archive receiver, a docking-station
agent with a simulated body-worn recorder on a pty, and a sample video ingested by hand — all
sealed, uploaded over MQTT v5, stored and verified at the archive.

    python -m tools.demo [--out demo-out] [--keep-running]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from agent import config as config_mod

EDGE = str(Path(sys.executable).with_name("edge-agent"))
ROOT = Path(__file__).resolve().parent.parent


def step(n: int, total: int, zh: str, en: str) -> None:
    print(f"\n[{n}/{total}] {zh} / {en}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"demo: broker did not start on port {port}")


def from_example(name: str, overrides: dict) -> dict:
    """config/NAME (the shipped example) with the demo's values over it, key by key; the demo
    runs its own broker, so [mqtt] is the demo's alone."""
    base = tomllib.loads((ROOT / "config" / name).read_text(encoding="utf-8"))
    base.pop("mqtt", None)
    for section, values in overrides.items():
        base.setdefault(section, {}).update(values)
    return base


def edge(cfg: Path | None, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [EDGE] + (["--config", str(cfg)] if cfg else []) + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"demo: `edge-agent {' '.join(args)}` failed: {p.stderr.strip()}")
    return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "demo-out"), help="Where everything goes (recreated).")
    ap.add_argument("--timeout", type=float, default=180, help="Seconds to wait for the archive.")
    ap.add_argument("--keep-running", action="store_true", help="Leave broker, archive and agent running.")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    procs: list[subprocess.Popen] = []
    extra_stops: list = []
    sim = None
    total = 8
    try:
        from tools.media import make_clip, make_recorder_media
        from tools.recorder_sim import RecorderSim

        step(1, total, "生成样例视频", "generating sample media with ffmpeg")
        clip = make_clip(out / "media" / "sample-interview.mp4", seconds=8, size="1280x720")
        rec_media = out / "media" / "recorder"
        make_recorder_media(rec_media, n_files=3, seconds=4, serial="ZFY0001")
        print(f"  {clip}\n  {rec_media}: {', '.join(sorted(p.name for p in rec_media.iterdir()))}")

        step(2, total, "启动消息代理", "starting a private Mosquitto broker")
        port = free_port()
        (out / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                                            f"user {os.environ.get('USER') or 'root'}\n")
        procs.append(subprocess.Popen(["mosquitto", "-c", str(out / "mosquitto.conf")],
                                      stdout=open(out / "mosquitto.log", "w"), stderr=subprocess.STDOUT))
        wait_port(port)
        print(f"  mqtt://127.0.0.1:{port}")

        step(3, total, "配置采集站并生成设备密钥", "configuring the docking station agent and its Ed25519 key")
        cfg = out / "agent" / "agent.toml"
        (out / "dev").mkdir()
        bay = out / "dev" / "ttyREC1"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(config_mod.render_default(from_example("station.toml", {
            "device": {"id": "dock-demo-01", "unit_code": "330106000000", "unit_name": "西湖区综合行政执法局",
                       "kind": "dock", "location": "西湖区文三路采集站 / Wensan Rd docking station"},
            "storage": {"data_dir": str(out / "agent" / "data"), "reserve_mb": 100, "retention_days": 7},
            "mqtt": {"host": "127.0.0.1", "port": port},
            "health": {"interval_s": 5},
            "dock": {"bays": [{"name": "bay-1", "port": str(bay)}], "poll_ms": 300},
        })), encoding="utf-8")
        edge(cfg, "init")
        print(f"  {cfg}")

        step(4, total, "启动中心存档并登记设备", "starting the archive receiver and enrolling the device")
        archive = out / "archive"
        archive.mkdir()
        edge(None, "archive", "enroll", "dock-demo-01", str(out / "agent" / "data" / "keys" / "device.pub"),
             "--unit", "330106000000", "--root", str(archive))
        procs.append(subprocess.Popen([EDGE, "archive", "serve", "--root", str(archive), "--broker", f"127.0.0.1:{port}"],
                                      stdout=open(out / "archive.log", "w"), stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([EDGE, "--config", str(cfg), "run"],
                                      stdout=open(out / "agent.log", "w"), stderr=subprocess.STDOUT))
        print(f"  archive root {archive}; agent log {out / 'agent.log'}")

        step(5, total, "人工导入一段样例视频", "ingesting the sample video with its five mandatory fields")
        p = subprocess.run([EDGE, "--config", str(cfg), "ingest", str(clip), "--case", "杭西执罚〔2026〕第0123号",
                            "--collector", "张三", "--collector-id", "33010001", "--place", "西湖区文三路18号",
                            "--proof", "当事人占道经营现场检查过程 / on-site inspection"], text=True,
                           stdout=subprocess.PIPE)
        if p.returncode != 0:
            raise SystemExit("demo: ingest failed")
        print(f"  item {p.stdout.strip()}")

        step(6, total, "模拟执法记录仪插入采集位", "docking a simulated body-worn recorder (serial protocol on a pty)")
        sim = RecorderSim(rec_media, bay, serial="ZFY0001", officer_number="330101", officer_name="李四",
                          unit_number="330106000000", unit_name="西湖区综合行政执法局")
        sim.start()
        print(f"  recorder ZFY0001 (李四 330101) on {bay}")

        step(7, total, "询问室同步录音录像（两路画面，叠加案件信息）", "an interview room: two cameras in picture-in-picture, "
             "case overlay, 2-second segments sealed and uploaded as they close")
        rcfg = out / "room" / "agent.toml"
        rcfg.parent.mkdir(parents=True)
        pano = make_clip(out / "media" / "panorama.mp4", seconds=8, size="1280x720", audio=False, seed=3)
        rcfg.write_text(config_mod.render_default(from_example("room.toml", {
            "device": {"id": "room-demo-01", "unit_code": "330106000000", "unit_name": "西湖区综合行政执法局",
                       "kind": "room", "location": "西湖区综合行政执法局办案区 / case-handling area"},
            "storage": {"data_dir": str(out / "room" / "data"), "reserve_mb": 100},
            "mqtt": {"host": "127.0.0.1", "port": port},
            "health": {"interval_s": 5},
            "room": {"name": "第一询问室 / Interview room 1", "cameras": [f"file:{clip}", f"file:{pano}"],
                     "size": "1280x720", "fps": 15, "segment_seconds": 2, "microphone": "tone",
                     "sensor_port": str(out / "dev" / "ttyRS485")},
        })), encoding="utf-8")
        from tools.sensor_sim import SensorSim

        sensor = SensorSim(out / "dev" / "ttyRS485", temp_c_x10=236, humidity_x10=452)
        sensor.start()
        extra_stops.append(sensor.stop)
        edge(rcfg, "init")
        edge(None, "archive", "enroll", "room-demo-01", str(out / "room" / "data" / "keys" / "device.pub"),
             "--unit", "330106000000", "--root", str(archive))
        procs.append(subprocess.Popen([EDGE, "--config", str(rcfg), "run"],
                                      stdout=open(out / "room.log", "w"), stderr=subprocess.STDOUT))
        for _ in range(60):
            started = edge(rcfg, "room", "start", "--case", "杭西执罚〔2026〕第0123号", "--collector", "张三",
                           "--collector-id", "33010001", "--proof", "询问笔录同步录音录像 / interview record",
                           "--subject", "王五", check=False)
            if started.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"demo: room start failed: {started.stderr.strip()}")
        print("  " + started.stdout.strip().replace("\n", "\n  "))
        time.sleep(7)
        stopped = edge(rcfg, "room", "stop")
        print("  " + stopped.stdout.strip().replace("\n", "\n  "))

        step(8, total, "等待存档确认并在中心校验", "waiting until the archive confirms every item, then verifying it there")
        deadline = time.time() + a.timeout
        last = ""
        while True:
            items = json.loads(edge(cfg, "items", "list", "--json").stdout)
            room_items = json.loads(edge(rcfg, "items", "list", "--json").stdout)
            items = items + room_items
            states: dict[str, int] = {}
            for it in items:
                states[it["state"]] = states.get(it["state"], 0) + 1
            line = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
            if line != last:
                print(f"  {time.strftime('%H:%M:%S')} items: {line}", flush=True)
                last = line
            done = len(items) - len(room_items) >= 4 and room_items and \
                all(i["state"] in ("archived", "purged") for i in items)
            if done:
                break
            if time.time() > deadline:
                print(f"demo: not everything archived within {a.timeout:.0f} s; see {out}/agent.log and archive.log")
                return 1
            time.sleep(1)
        chain = edge(None, "verify", "--chain", str(archive / "330106000000"), "--keys", str(archive / "keys"))
        print("  " + chain.stdout.strip().replace("\n", "\n  "))
        dock = edge(cfg, "dock", "status", check=False)
        if dock.stdout:
            print("  " + dock.stdout.strip().replace("\n", "\n  "))
        stored = sorted(p.parent for p in archive.rglob("manifest.json") if p.parent.parent.name != "annotations")
        print("\n封存并校验通过的证据 / sealed, archived and verified evidence:")
        for s in stored:
            print(f"  {s}")
        print(f"\n中心存档 / archive root: {archive}\n"
              f"校验命令 / verify yourself: {EDGE} verify --chain {archive / '330106000000'} --keys {archive / 'keys'}")
        if a.keep_running:
            print("running; Ctrl-C to stop")
            signal.pause()
        return 0
    finally:
        for stop in extra_stops:
            try:
                stop()
            except Exception:
                pass
        if sim is not None:
            try:
                sim.stop()
            except Exception:
                pass
        if True:  # --keep-running waits above until Ctrl-C; then everything stops
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
            for p in reversed(procs):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    sys.exit(main())
