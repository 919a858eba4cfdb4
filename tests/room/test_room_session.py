"""Interview-room session against real components: real encoder (PyAV/x264), ffprobe, cameras
from files at real-time pace, a real RTSP server killed and restarted, a Modbus sensor
simulator on a pty, a tmpfs that fills up. Each bad input of issue 5 is exercised here or in
tests/room/test_room_cli.py (kill -9 of ``edge-agent run``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.config import Config
from agent.common.errors import ConfigError, EdgeError, MetadataError
from agent.evidence import keys
from agent.evidence.verify import verify_chain
from agent.room.gaps import GapLog
from agent.room.state import SessionRequest
from agent.room.service import RoomService
from agent.runtime import Agent
from tests.support.rtsp import RtspServer, make_clip, rtsp_unavailable

FIELDS = {"case": "杭司罚〔2026〕第0123号", "collector": "张三", "collector_id": "33010012345",
          "proof": "询问笔录同步录音录像", "subject": "李四"}


def wait_for(pred, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("roomclips")
    return {"a": make_clip(d / "a.mp4", (320, 240), seconds=20),
            "b": make_clip(d / "b.mp4", (480, 270), seconds=20),
            # served by the RTSP camera after its restart: long enough that the stream cannot end
            # (a new gap) before the test stops the session, however slow the machine
            "b_long": make_clip(d / "b_long.mp4", (480, 270), seconds=90)}


def make_agent(data: Path, health: bool = False, **room) -> Agent:
    over = {"storage__data_dir": str(data), "storage__reserve_mb": 0, "room__size": "704x576", "room__fps": 10,
            "room__segment_seconds": 2, "room__microphone": "tone", "device__id": "room-0001", "device__kind": "room"}
    over.update({f"room__{k}": v for k, v in room.items() if not k.startswith("storage")})
    over.update({k: v for k, v in room.items() if k.startswith("storage")})
    cfg = Config.defaults(**over)
    agent = Agent(cfg)
    keys.generate(agent.store.key_path, agent.store.pub_path)
    h = None
    if health:
        from agent.health import make_component

        h = agent.add(make_component(agent))
    agent.add(RoomService(agent, alarms=h, refresh=h.tick if h else None))
    agent.start()
    return agent


def manifests(agent: Agent) -> list[dict]:
    out = []
    for row in agent.store.items():
        p = Path(row["path"]) / "manifest.json"
        if p.exists():
            out.append(json.loads(p.read_bytes()))
    return sorted(out, key=lambda m: m["session"]["index"])


def ffprobe(path: Path) -> dict:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height",
                        "-show_entries", "format=duration", "-of", "json", str(path)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def start(agent: Agent, **extra) -> dict:
    return agent.commands["room.start"]({**FIELDS, **extra}, "test")


# ------------------------------------------------------------------------------ unit pieces
def test_start_refused_without_mandatory_fields():
    for missing, word in (("case", "案件编号"), ("collector", "采集人"), ("collector_id", "执法证编号"),
                          ("proof", "证明对象")):
        args = {k: v for k, v in FIELDS.items() if k != missing}
        with pytest.raises(MetadataError, match=word) as exc:
            SessionRequest.from_args(args)
        assert "not started" in str(exc.value)
    with pytest.raises(MetadataError, match="case number"):
        SessionRequest.from_args({**FIELDS, "case": "a/b"})
    with pytest.raises(MetadataError, match="control characters"):
        SessionRequest.from_args({**FIELDS, "proof": "x\x00y"})
    with pytest.raises(MetadataError, match="must be text"):
        SessionRequest.from_args({**FIELDS, "collector": 12})
    req = SessionRequest.from_args({k: v for k, v in FIELDS.items() if k != "subject"})
    assert req.subject is None and req.case_number == FIELDS["case"]


def test_room_config_is_checked():
    for key, value, msg in (("room__size", "640x480", "704x576"), ("room__size", "big", "WIDTHxHEIGHT"),
                            ("room__cameras", [], "1 or 2"), ("room__cameras", ["a", "b", "c"], "1 or 2"),
                            ("room__layout", "mosaic", "pip"), ("room__fps", 0, "minimum"),
                            ("room__overlay_lines", ["case", "weather"], "choose lines"),
                            ("room__segment_seconds", 1, "minimum")):
        with pytest.raises(ConfigError, match=msg):
            Config.defaults(**{key: value})


def test_gaps_are_clipped_to_each_segment():
    import datetime as dt

    t = dt.datetime(2026, 11, 27, 9, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    log = GapLog()
    log.open("camera-main", "lost", t + dt.timedelta(seconds=3))
    first = log.for_segment(t, t + dt.timedelta(seconds=10))
    assert first == [{"start": "2026-11-27T09:00:03+08:00", "end": "2026-11-27T09:00:10+08:00",
                      "component": "camera-main", "reason": "lost (持续 / continues)"}]
    log.close("camera-main", t + dt.timedelta(seconds=14))
    second = log.for_segment(t + dt.timedelta(seconds=10), t + dt.timedelta(seconds=20))
    assert second[0]["start"] == "2026-11-27T09:00:10+08:00" and second[0]["end"] == "2026-11-27T09:00:14+08:00"
    assert log.for_segment(t + dt.timedelta(seconds=20), t + dt.timedelta(seconds=30)) == []


def test_unreadable_state_file_is_set_aside_and_recording_still_possible(tmp_path, clips):
    state = tmp_path / "data" / "room" / "session.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    agent = make_agent(tmp_path / "data", cameras=[f"file:{clips['a']}"], layout="single")
    try:
        room = next(c for c in agent.components if c.name == "room")
        assert [a["code"] for a in room.alarms.snapshot()] == ["room_state_unreadable"]
        assert [p.name.split("-")[0] for p in state.parent.glob("session.json.unreadable-*")] == ["session.json.unreadable"]
        assert start(agent)["started"]
        agent.commands["room.stop"]({}, "t")
    finally:
        agent.stop()
    assert json.loads(state.read_text())["state"] == "stopped"


# ------------------------------------------------------------------------------ sessions
def test_session_records_seals_and_verifies(tmp_path, clips):
    agent = make_agent(tmp_path / "data", cameras=[f"file:{clips['a']}", f"file:{clips['b']}"])
    try:
        res = start(agent)
        assert res["started"] and "开始录制" in res["message"]
        with pytest.raises(EdgeError, match="already recording"):
            start(agent)
        assert wait_for(lambda: agent.commands["room.status"]({}, "t")["segments_sealed"] >= 2, 15)
        st = agent.commands["room.status"]({}, "t")
        assert st["state"] == "recording" and st["fps"] > 0 and st["frames"] >= 40
        assert all(c["online"] for c in st["cameras"]) and st["audio"]["level_dbfs"] > -20
        assert st["seal_latency_ms"]["p99"] < 2000, st["seal_latency_ms"]
        assert st["placeholder_frames"] == 0 and st["gaps_open"] == []
        out = agent.commands["room.stop"]({}, "t")
        assert out["stopped"] and out["segments"] >= 3
        with pytest.raises(EdgeError, match="no session"):
            agent.commands["room.stop"]({}, "t")
        assert agent.commands["room.status"]({}, "t")["state"] == "idle"
    finally:
        agent.stop()
    ms = manifests(agent)
    rows = agent.store.items()
    assert {r["priority"] for r in rows} == {1} and {r["state"] for r in rows} == {"sealed"}
    sid = ms[0]["session"]["id"]
    assert [m["session"]["index"] for m in ms] == list(range(len(ms)))
    assert [m["session"]["final"] for m in ms] == [False] * (len(ms) - 1) + [True]
    for m in ms:
        meta = m["metadata"]
        assert m["session"]["id"] == sid and m["gaps"] == []
        assert meta["case_number"] == FIELDS["case"] and meta["collector"] == {"name": "张三", "id": "33010012345"}
        assert meta["subject"] == "李四" and meta["room"] and meta["proof"] and meta["place"]
        assert [c["name"] for c in meta["cameras"]] == ["main", "panorama"]
        assert [f["name"] for f in m["files"]][1].endswith(".times.jsonl")
    rep = verify_chain(agent.store.items_dir, agent.store.keyring())
    assert rep.devices["room-0001"]["items"] == len(ms)
    item = Path(agent.store.item(ms[1]["item_id"])["path"]) / "files"
    probe = ffprobe(item / f"seg_{1:06d}.ts")
    codecs = sorted(s["codec_name"] for s in probe["streams"])
    assert codecs == ["aac", "h264"] and {"width": 704, "height": 576} in [
        {k: s.get(k) for k in ("width", "height")} for s in probe["streams"]]
    assert 1.8 <= float(probe["format"]["duration"]) <= 2.3
    times = [json.loads(x) for x in (item / "seg_000001.ts.times.jsonl").read_text().splitlines()]
    assert [t["pts"] for t in times] == [0, 1] and times[0]["wall"].startswith(ms[1]["metadata"]["capture_start"][:16])
    assert not any((tmp_path / "data" / "room" / "sessions" / sid).iterdir())   # everything moved into items
    audit = [e["action"] for e in agent.store.audit.entries()]
    assert "room.start" in audit and "room.stop" in audit


def test_dead_camera_and_missing_microphone_keep_recording(tmp_path, clips):
    # a camera address that never answers (nothing listens on the port) and an input device
    # that does not exist: placeholder frames and silence, gaps and alarms, no interruption
    agent = make_agent(tmp_path / "data", cameras=[f"file:{clips['a']}", "rtsp://127.0.0.1:9/never"],
                       microphone="no-such-microphone-xyz", layout="side", health=True)
    registry = agent.health.alarms
    try:
        start(agent)
        assert wait_for(lambda: agent.commands["room.status"]({}, "t")["segments_sealed"] >= 2, 20)
        st = agent.commands["room.status"]({}, "t")
        assert st["placeholder_frames"] >= 10 and st["frames"] >= 40
        assert sorted(st["gaps_open"]) == ["camera-panorama", "microphone"]
        codes = {a["code"] for a in st["alarms"]}
        assert {"camera_offline.camera-panorama", "microphone_silent.microphone"} <= codes
        assert not st["audio"]["online"] and st["audio"]["filled_samples"] > 0
        raised = {a.key: a for a in registry.active()}          # through the health component too
        assert raised["camera_offline.camera-panorama"].source == "room"
        assert "microphone_silent.microphone" in raised
        comps = agent.health.tick()["components"]                # published per part, with a state
        assert comps["camera-panorama"]["state"] == "offline" and comps["camera-main"]["state"] == "ok"
    finally:
        agent.stop()
    room = next(c for c in agent.components if c.name == "room")
    assert room.alarms.snapshot() == []                       # devices no longer in use: alarms cleared
    assert not [a for a in registry.active() if a.source == "room"]
    ms = manifests(agent)
    for m in ms:
        comps = sorted(g["component"] for g in m["gaps"])
        assert comps == ["camera-panorama", "microphone"], m["gaps"]
        for g in m["gaps"]:
            assert g["start"] <= g["end"] and "中断" in g["reason"]
    first = Path(agent.store.item(ms[0]["item_id"])["path"]) / "files" / "seg_000000.ts"
    assert sorted(s["codec_name"] for s in ffprobe(first)["streams"]) == ["aac", "h264"]   # silent track is there
    verify_chain(agent.store.items_dir, agent.store.keyring())


def test_real_microphone_through_pulseaudio_is_recorded(tmp_path, clips, monkeypatch):
    """A real paced input device (PulseAudio sine source through ALSA/PortAudio) ends up as an
    audible AAC track: level measured live, and the decoded segment is not silent."""
    from tests.support.pulse import SineSource, ensure_pulseaudio

    if reason := ensure_pulseaudio():
        pytest.skip(reason)
    import av
    import numpy as np

    with SineSource(440, 48000) as sine:
        monkeypatch.setenv("PULSE_SOURCE", sine.name)
        agent = make_agent(tmp_path / "data", cameras=[f"file:{clips['a']}"], layout="single", microphone="default")
        try:
            start(agent)
            status = lambda: agent.commands["room.status"]({}, "t")  # noqa: E731
            assert wait_for(lambda: status()["audio"]["online"] and status()["audio"]["level_dbfs"] > -20, 15), \
                status()["audio"]
            assert wait_for(lambda: status()["segments_sealed"] >= 2, 15)
            agent.commands["room.stop"]({}, "t")
        finally:
            agent.stop()
    ms = manifests(agent)
    seg = Path(agent.store.item(ms[1]["item_id"])["path"]) / "files" / "seg_000001.ts"
    with av.open(str(seg)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    rms = float(np.sqrt(np.mean(np.square(pcm.astype(np.float64)))))
    assert len(pcm) > 48000 and rms > 0.05, (len(pcm), rms)      # float samples: the tone, not silence
    assert not [g for m in ms for g in m["gaps"] if g["component"] == "microphone"]


def _pty_sensor(tmp_path: Path, fault: str):
    from tools.sensor_sim import SensorSim

    return SensorSim(tmp_path / "ttySENSOR", slave=1, fault=fault, temp_c_x10=235, humidity_x10=520).start()


def test_sensor_garbage_then_silence_then_good(tmp_path, clips):
    sim = _pty_sensor(tmp_path, "garbage")
    agent = make_agent(tmp_path / "data", cameras=[f"file:{clips['a']}"], layout="single",
                       sensor_port=str(tmp_path / "ttySENSOR"), sensor_baudrate=4800)
    try:
        start(agent)
        status = lambda: agent.commands["room.status"]({}, "t")  # noqa: E731
        assert wait_for(lambda: "sensor" in status()["gaps_open"], 10)
        s = status()["sensor"]
        assert s["temperature_c"] is None and s["errors"] > 0
        assert wait_for(lambda: status()["sensor"]["garbage"] > 0, 10)
        sim.fault = "silent"
        assert wait_for(lambda: status()["sensor"]["timeouts"] > 0, 10)
        assert "sensor" in status()["gaps_open"]
        sim.fault = "none"
        assert wait_for(lambda: status()["sensor"]["temperature_c"] == 23.5, 10), status()["sensor"]
        assert wait_for(lambda: "sensor" not in status()["gaps_open"], 5)
        assert not any(a["code"].startswith("sensor_silent") for a in status()["alarms"])
        n = status()["segments_sealed"]
        assert wait_for(lambda: status()["segments_sealed"] >= n + 1, 10)
        agent.commands["room.stop"]({}, "t")
    finally:
        agent.stop()
        sim.stop()
    ms = manifests(agent)
    gaps = [g for m in ms for g in m["gaps"] if g["component"] == "sensor"]
    assert gaps and "传感器" in gaps[0]["reason"]
    assert not ms[-1]["gaps"]          # sensor back: the last segment has no gap
    verify_chain(agent.store.items_dir, agent.store.keyring())


@pytest.mark.skipif(rtsp_unavailable() is not None, reason=str(rtsp_unavailable()))
def test_rtsp_camera_dies_and_returns_with_new_resolution(tmp_path, clips):
    srv = RtspServer(clips["a"]).start()
    agent = make_agent(tmp_path / "data", cameras=[srv.url, f"file:{clips['b']}"], camera_lost_s=1)
    try:
        start(agent)
        status = lambda: agent.commands["room.status"]({}, "t")  # noqa: E731
        assert wait_for(lambda: status()["cameras"][0]["online"] and status()["frames"] >= 20, 10)
        srv.kill()                                       # the camera loses power
        assert wait_for(lambda: "camera-main" in status()["gaps_open"], 10)
        assert any(a["code"] == "camera_offline.camera-main" for a in status()["alarms"])
        p0 = status()["placeholder_frames"]              # recording goes on, the lost camera drawn as such
        assert wait_for(lambda: status()["placeholder_frames"] >= p0 + 20, 10), status()
        srv.start(clips["b_long"])                       # back, reconfigured to another size
        assert wait_for(lambda: "camera-main" not in status()["gaps_open"], 25), status()["cameras"][0]
        cam = status()["cameras"][0]
        assert cam["resolution"] == "480x270" and cam["reconnects"] >= 1
        assert not any(a["code"].startswith("camera_offline") for a in status()["alarms"])
        n = status()["segments_sealed"]
        assert wait_for(lambda: status()["segments_sealed"] >= n + 1, 10)
        agent.commands["room.stop"]({}, "t")
    finally:
        agent.stop()
        srv.kill()
    ms = manifests(agent)
    gaps = [g for m in ms for g in m["gaps"] if g["component"] == "camera-main"]
    assert gaps, [m["gaps"] for m in ms]
    assert "continues" not in gaps[-1]["reason"]          # the gap's end is recorded
    assert gaps[-1]["end"] > gaps[0]["start"]
    assert [m["session"]["index"] for m in ms] == list(range(len(ms)))   # no segment skipped
    verify_chain(agent.store.items_dir, agent.store.keyring())


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_filling_up_stops_cleanly_and_keeps_everything(small_disk, clips):
    agent = make_agent(small_disk / "data", cameras=[f"file:{clips['a']}"], storage__reserve_mb=16)
    try:
        start(agent)
        status = lambda: agent.commands["room.status"]({}, "t")  # noqa: E731
        assert wait_for(lambda: status()["segments_sealed"] >= 1, 10)
        # something else fills the disk: leave ~6 MiB above the reserve
        free = shutil.disk_usage(small_disk).free
        with open(small_disk / "filler", "wb") as f:
            f.write(b"\0" * (free - (16 + 6) * 2**20))
        assert wait_for(lambda: status()["state"] == "idle", 15), status()
        last = status()["last_session"]
        assert last["end_reason"] == "disk full" and "磁盘空间不足" in last["error"]
        assert any(a["code"] == "disk_low.room" for a in last["alarms"])
        with pytest.raises(EdgeError, match="disk reserve"):
            start(agent)                                   # and no new session on a full disk
    finally:
        agent.stop()
    ms = manifests(agent)
    assert len(ms) >= 2 and ms[-1]["session"]["final"]
    sid = ms[0]["session"]["id"]
    assert not any((small_disk / "data" / "room" / "sessions" / sid).iterdir())   # nothing left unsealed
    verify_chain(agent.store.items_dir, agent.store.keyring())
    state = json.loads((small_disk / "data" / "room" / "session.json").read_text())
    assert state["state"] == "stopped" and state["stop_reason"] == "disk full"


# ------------------------------------------------------------------------------ control socket
def test_control_socket_checks_peer_credentials_and_roles(tmp_path):
    import grp
    import tempfile

    from agent.common.control import ControlServer, call

    users, daemon = grp.getgrnam("users").gr_gid, grp.getgrnam("daemon").gr_gid
    d = Path(tempfile.mkdtemp(prefix="edge-ctl-"))
    os.chmod(d, 0o755)
    cfg = Config.defaults(storage__data_dir=str(d), control__groups=["edge-agent-test-nonexistent"],
                          roles__operator_group="users", roles__auditor_group="daemon")
    agent = Agent(cfg)
    agent.commands["echo"] = lambda args, actor: {"args": args, "actor": actor}
    agent.commands["room.status"] = lambda args, actor: {"state": "idle", "actor": actor}
    agent.commands["room.start"] = lambda args, actor: {"started": True}
    srv = ControlServer(agent)
    srv.start()

    # the client runs as nobody, who may not be able to enter the checkout: give it a readable copy
    # of the two modules it needs
    import shutil

    lib = Path(tempfile.mkdtemp(prefix="edge-ctl-lib-"))
    os.chmod(lib, 0o755)
    src = Path(__file__).resolve().parents[2]
    for name in ("agent/__init__.py", "agent/common/__init__.py", "agent/common/control.py", "agent/common/errors.py"):
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        os.chmod((lib / name).parent, 0o755)
        shutil.copy(src / name, lib / name)
        os.chmod(lib / name, 0o644)

    def as_user(cmd: str, gid: int) -> str:
        client = ("import sys; sys.path.insert(0, %r); from agent.common.control import call; from agent.common.errors import "
                  "EdgeError\ntry:\n    print(call(%r, %r))\nexcept EdgeError as e:\n    print(e)"
                  % (str(lib), str(d), cmd))
        out = subprocess.run(["/usr/bin/python3", "-c", client], capture_output=True, text=True, timeout=30,
                             cwd="/", user=65534, group=gid, extra_groups=[])
        return out.stdout + out.stderr

    try:
        sock = d / "control.sock"
        assert (sock.stat().st_mode & 0o777) == 0o660
        assert call(d, "echo", {"x": "中文"}) == {"args": {"x": "中文"}, "actor": "local:root(0)"}
        with pytest.raises(EdgeError, match="unknown command"):
            call(d, "room.pause")
        import socket as _s

        def raw(data: bytes) -> dict:
            with _s.socket(_s.AF_UNIX, _s.SOCK_STREAM) as c:
                c.connect(str(sock))
                c.sendall(data)
                return json.loads(c.makefile("rb").readline())

        assert raw(b"hello\n") == {"ok": False, "error": "请求不是 JSON / request is not JSON"}
        assert "request must be" in raw(b'{"cmd": 5}\n')["error"]
        assert "args must be an object" in raw(b'{"cmd": "echo", "args": [1]}\n')["error"]
        assert "longer than" in raw(b"x" * (70 * 1024))["error"]
        assert raw(b'\n\n{"cmd": "echo"}\n')["ok"] is True                 # blank lines are ignored
        assert "permission denied" in as_user("room.status", 65534)    # 0660 root: cannot even connect
        os.chmod(sock, 0o666)                                          # even so, SO_PEERCRED decides
        assert "无权限 / permission denied: user nobody" in as_user("room.status", 65534)
        assert srv.refused == 1
        assert "'actor': 'local:nobody(65534)'" in as_user("room.status", users)   # operator
        assert "{'started': True}" in as_user("room.start", users)
        assert "权限不足 / not permitted" in as_user("echo", users)                 # needs a technician
        assert "'state': 'idle'" in as_user("room.status", daemon)                 # auditor may look
        assert "权限不足 / not permitted" in as_user("room.start", daemon)          # but not record
    finally:
        srv.stop()
        shutil.rmtree(d, ignore_errors=True)
    assert not (d / "control.sock").exists()
    refused = [e for e in agent.store.audit.entries(action="command") if "not permitted" in e["detail"]]
    assert len(refused) == 2


@pytest.mark.slow
def test_disk_suddenly_full_loses_nothing_recorded(small_disk, clips):
    """No reserve, and the disk fills up between two checks: writes fail with ENOSPC. The
    session ends with an alarm; once there is room again every segment on disk is sealed
    (the one cut by the full disk too) before the next session starts."""
    agent = make_agent(small_disk / "data", cameras=[f"file:{clips['a']}"])
    try:
        start(agent)
        status = lambda: agent.commands["room.status"]({}, "t")  # noqa: E731
        assert wait_for(lambda: status()["segments_sealed"] >= 1, 10)
        with open(small_disk / "filler", "wb") as f:          # every last block
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        assert wait_for(lambda: status()["state"] == "idle", 20), status()
        last = status()["last_session"]
        assert last["alarms"], last
        os.unlink(small_disk / "filler")
        start(agent)                                           # leftovers are sealed first
        assert wait_for(lambda: status()["state"] == "recording" and status()["frames"] >= 5, 10), status()
        agent.commands["room.stop"]({}, "t")
    finally:
        agent.stop()
    ms = manifests(agent)
    sessions = {}
    for m in ms:
        sessions.setdefault(m["session"]["id"], []).append(m["session"]["index"])
    first = min(sessions, key=lambda s: min(m["sealed_at"] for m in ms if m["session"]["id"] == s))
    assert sorted(sessions[first]) == list(range(len(sessions[first]))) and len(sessions[first]) >= 2
    assert not any((small_disk / "data" / "room" / "sessions" / first).iterdir())
    verify_chain(agent.store.items_dir, agent.store.keyring())
