"""Recorder driver against the simulator on a real pty, with real media files (ffmpeg),
and every injected fault."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers.recorder import (
    CHINA_TZ,
    AuthError,
    FileType,
    Mark,
    ProtocolError,
    RecorderClient,
    RecorderError,
    RecorderGone,
    RecorderRefused,
    RecorderTimeout,
    Result,
    UnsafeName,
    scan_mass_storage,
)
from tools.media import make_big_file, make_clip, make_recorder_media
from tools.recorder_sim import RecorderSim

ROOT = Path(__file__).resolve().parents[2]
SERIAL = "7654321"
NAME_RE = re.compile(r"^7654321_\d{14}_\d{4}(_IMP)?\.(MP4|WAV|JPG)$")
START = _dt.datetime(2026, 11, 27, 9, 30, 0, tzinfo=CHINA_TZ)


def ffprobe(path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration,format_name:stream=codec_type,codec_name,width,height",
         "-of", "json", str(path)],
        capture_output=True, check=True, text=True,
    ).stdout
    return json.loads(out)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def media_master(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_recorder_media(d, n_files=3, seconds=2, serial=SERIAL, start=START, size="320x240", important=(1,))
    return d


@pytest.fixture
def media(media_master, tmp_path) -> Path:
    d = tmp_path / "media"
    shutil.copytree(media_master, d)
    return d


@pytest.fixture
def run_sim(media, tmp_path):
    sims: list[RecorderSim] = []
    clients: list[RecorderClient] = []

    def start(media_dir=None, timeout=0.5, retries=2, **kwargs):
        kwargs.setdefault("probe", False)
        kwargs.setdefault("serial", SERIAL)
        link = tmp_path / "dev" / f"ttyREC{len(sims)}"
        sim = RecorderSim(media_dir or media, link, **kwargs).start()
        sims.append(sim)
        client = RecorderClient(sim.port_path, timeout=timeout, retries=retries)
        clients.append(client)
        return sim, client

    yield start
    for c in clients:
        c.close()
    for s in sims:
        s.stop()


def names(media_dir) -> list[str]:
    return sorted(p.name for p in Path(media_dir).iterdir())


# --- media generator ----------------------------------------------------------------------


def test_recorder_media_is_real(media_master):
    files = names(media_master)
    assert len(files) == 5 and all(NAME_RE.match(n) for n in files), files
    assert sum(n.endswith("_IMP.MP4") for n in files) == 1
    for name in files:
        info = ffprobe(media_master / name)
        codecs = sorted(s["codec_name"] for s in info["streams"])
        if name.endswith(".MP4"):
            assert codecs == ["aac", "h264"]
            assert abs(float(info["format"]["duration"]) - 2) < 0.2
            video = next(s for s in info["streams"] if s["codec_type"] == "video")
            assert (video["width"], video["height"]) == (320, 240)
        elif name.endswith(".WAV"):
            assert codecs == ["pcm_s16le"] and abs(float(info["format"]["duration"]) - 2) < 0.1
        else:
            assert codecs == ["mjpeg"]
    first = media_master / files[0]
    assert first.name == f"{SERIAL}_20261127093000_0001.MP4"
    assert int(first.stat().st_mtime) == int(START.timestamp()) + 2  # mtime = end of capture


def test_make_clip_options(tmp_path):
    a = make_clip(tmp_path / "a.mp4", seconds=1, size="160x120", rate=10, audio=False, seed=1)
    b = make_clip(tmp_path / "b.mp4", seconds=1, size="160x120", rate=10, audio=False, seed=2)
    info = ffprobe(a)
    assert [s["codec_name"] for s in info["streams"]] == ["h264"]
    assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (160, 120)
    assert sha256(a) != sha256(b)


def test_make_big_file(tmp_path):
    size = 9 * 2**20 + 123
    a = make_big_file(tmp_path / "a.MP4", size, seed=1)
    b = make_big_file(tmp_path / "b.MP4", size, seed=1)
    c = make_big_file(tmp_path / "c.MP4", size, seed=2)
    assert a.stat().st_size == size
    assert sha256(a) == sha256(b) != sha256(c)
    data = a.read_bytes()
    assert data[:4 << 20] != data[4 << 20 : 8 << 20]  # blocks differ


# --- plain mass storage -------------------------------------------------------------------------


def test_scan_mass_storage(media, tmp_path):
    locked = media / names(media)[0]
    locked.chmod(0o444)
    (media / "clip.mp4").write_bytes(b"not really")
    os.utime(media / "clip.mp4", (START.timestamp() + 99, START.timestamp() + 99))
    (media / "notes.txt").write_text("x")
    (media / "bad\nname.mp4").write_bytes(b"x")
    (media / ".hidden.mp4").write_bytes(b"x")
    sub = media / "DCIM" / "100MEDIA"
    sub.mkdir(parents=True)
    (sub / "20261127_100000.mp4").write_bytes(b"y")
    (media / "link.mp4").symlink_to("/etc/passwd")

    recs = {r.name: r for r in scan_mass_storage(media, probe=True)}
    assert set(recs) == set(names(media)) - {"bad\nname.mp4", ".hidden.mp4", "link.mp4", "DCIM"} | {"20261127_100000.mp4"}
    first = recs[f"{SERIAL}_20261127093000_0001.MP4"]
    assert first.capture_time == START and first.type == FileType.VIDEO and first.duration == 2 and first.locked
    assert first.path == str(locked) and first.size == locked.stat().st_size
    imp = next(r for r in recs.values() if r.name.endswith("_IMP.MP4"))
    assert imp.mark == Mark.IMPORTANT and not imp.locked
    assert next(r for r in recs.values() if r.name.endswith(".WAV")).type == FileType.AUDIO
    assert next(r for r in recs.values() if r.name.endswith(".JPG")).type == FileType.IMAGE
    assert recs["notes.txt"].type == FileType.TEXT
    assert recs["clip.mp4"].capture_time == START + _dt.timedelta(seconds=99)  # from mtime
    assert recs["20261127_100000.mp4"].capture_time == _dt.datetime(2026, 11, 27, 10, 0, tzinfo=CHINA_TZ)
    assert list(recs) != [] and [r.name for r in scan_mass_storage(media, recursive=False)].count("20261127_100000.mp4") == 0


# --- every command against the simulator ------------------------------------------------------


def test_identify_gbk_over_the_wire(run_sim):
    sim, rec = run_sim(officer_name="欧阳娜娜", officer_number="012345", unit_number="330106000001",
                       unit_name="杭州市西湖区综合行政执法局")
    info = rec.identify()
    assert (info.serial, info.officer_number, info.officer_name, info.unit_number, info.unit_name) == (
        SERIAL, "012345", "欧阳娜娜", "330106000001", "杭州市西湖区综合行政执法局")
    assert os.path.islink(sim.port_path)


def test_clock_read_and_set(run_sim):
    sim, rec = run_sim()
    assert abs(rec.clock_skew()) < 1.5
    assert rec.read_clock().utcoffset() == _dt.timedelta(hours=8)
    with pytest.raises(AuthError, match="authentication required"):
        rec.set_clock(_dt.datetime.now(CHINA_TZ))
    rec.authenticate("000000")
    rec.set_clock(_dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=CHINA_TZ))
    assert abs((rec.read_clock() - _dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=CHINA_TZ)).total_seconds()) < 2
    rec.set_clock(_dt.datetime.now(CHINA_TZ))
    assert abs(rec.clock_skew()) < 1.0
    with pytest.raises(ValueError):
        rec.set_clock(_dt.datetime.now())


@pytest.mark.parametrize("fault,expect_year", [({"clock_fixed": "1970"}, 1970), ({"clock_fixed": "2099"}, 2099)])
def test_fault_fixed_clock(run_sim, fault, expect_year):
    sim, rec = run_sim(**fault)
    assert rec.read_clock().year == expect_year
    rec.authenticate("000000")
    rec.set_clock(_dt.datetime.now(CHINA_TZ))
    assert abs(rec.clock_skew()) < 1.0


def test_fault_clock_offset(run_sim):
    sim, rec = run_sim(clock_offset=-3600)
    assert -3602 < rec.clock_skew() < -3598


def test_battery_and_storage(run_sim, media):
    sim, rec = run_sim(battery_level=15, charging=False, capacity=10 << 30)
    assert rec.battery() == (b := rec.battery()) and (b.level, b.charging) == (15, False)
    s = rec.storage()
    used = sum(p.stat().st_size for p in media.iterdir())
    assert (s.used, s.free, s.total) == (used, (10 << 30) - used, 10 << 30) and not s.full


def test_fault_storage_full(run_sim):
    sim, rec = run_sim(storage_full=True, capacity=8 << 30)
    s = rec.storage()
    assert s.free == 0 and s.full and s.used == 8 << 30


def test_authenticate(run_sim):
    sim, rec = run_sim(password="135790")
    with pytest.raises(AuthError, match="wrong admin password"):
        rec.authenticate("000000")
    rec.authenticate("135790")
    assert sim.authenticated
    for bad in ("1234567", "", "密码"):
        with pytest.raises(AuthError):
            rec.authenticate(bad)


def test_fault_wrong_password(run_sim):
    sim, rec = run_sim(password="000000", wrong_password=True)
    with pytest.raises(AuthError, match="管理员密码错误 / wrong admin password"):
        rec.authenticate("000000")
    with pytest.raises(AuthError, match="authentication required"):
        rec.mass_storage()


def test_list_files(run_sim, media):
    sim, rec = run_sim(probe=True, locked=[names(media)[2]])
    files = rec.list_files()
    assert [f.name for f in files] == names(media)  # capture order == name order here
    by_name = {f.name: f for f in files}
    for name, f in by_name.items():
        assert f.size == (media / name).stat().st_size
        assert f.capture_time.tzinfo is not None and f.path is None
    assert [f.type for f in files] == [FileType.VIDEO] * 3 + [FileType.AUDIO, FileType.IMAGE]
    assert [f.duration for f in files] == [2, 2, 2, 2, 0]
    assert [f.mark for f in files] == [Mark.NORMAL, Mark.IMPORTANT, Mark.NORMAL, Mark.NORMAL, Mark.NORMAL]
    assert [f.locked for f in files] == [False, False, True, False, False]
    assert files[0].capture_time == START


def test_list_files_paging(run_sim, tmp_path):
    big = tmp_path / "many"
    big.mkdir()
    for i in range(150):
        (big / f"{SERIAL}_20261127{i // 60:02d}{i % 60:02d}00_{i:04d}_with_a_rather_long_name.MP4").write_bytes(b"x" * i)
    sim, rec = run_sim(media_dir=big)
    files = rec.list_files()
    assert len(files) == 150 and [f.size for f in files] == list(range(150))
    assert rec.stats.requests >= 3  # several pages


@pytest.mark.parametrize("fault, needle", [({"list_trailing": b"\x00\x07"}, "trailing bytes in file list page"),
                                           ({"list_short": True}, "file list record truncated")])
def test_list_page_carrying_more_or_less_than_it_announces_is_refused(run_sim, fault, needle):
    """A page with bytes after its records, or fewer records than it announces, is a protocol
    error: never silently accepted (the dock lists through the same paging)."""
    sim, rec = run_sim(**fault)
    with pytest.raises(ProtocolError, match=needle):
        rec.list_files()
    with pytest.raises(ProtocolError, match=needle):
        list(rec.file_records())


def test_mass_storage(run_sim, media):
    sim, rec = run_sim()
    rec.authenticate("000000")
    mount = rec.mass_storage()
    assert mount == sim.mount_dir and sim.msdc
    assert names(mount) == names(media)
    for name in names(media):
        assert sha256(Path(mount) / name) == sha256(media / name)
    assert rec.mass_storage() == mount  # idempotent
    assert [r.name for r in scan_mass_storage(mount)] == names(media)


def test_erase(run_sim, media):
    all_names = names(media)
    sim, rec = run_sim(locked=[all_names[2]])
    with pytest.raises(AuthError):
        rec.erase(all_names[0])
    rec.authenticate("000000")
    rec.mass_storage()
    rec.erase(all_names[0])
    assert sim.erased == [all_names[0]]
    assert all_names[0] not in names(media) and all_names[0] not in names(sim.mount_dir)
    assert all_names[0] not in [f.name for f in rec.list_files()]
    with pytest.raises(RecorderRefused, match="important or locked") as exc:
        rec.erase(all_names[1])  # _IMP
    assert exc.value.result == Result.PROTECTED
    with pytest.raises(RecorderRefused) as exc:
        rec.erase(all_names[2])  # locked
    assert exc.value.result == Result.PROTECTED
    with pytest.raises(RecorderRefused, match="no such file") as exc:
        rec.erase(all_names[0])
    assert exc.value.result == Result.NOT_FOUND
    before = rec.stats.requests
    with pytest.raises(UnsafeName):
        rec.erase("../" + all_names[3])
    assert rec.stats.requests == before  # never sent
    assert names(media) == all_names[1:]


def test_unknown_command(run_sim):
    sim, rec = run_sim()
    assert rec.request(0x7E) == (Result.UNKNOWN_COMMAND, b"")


# --- faults ------------------------------------------------------------------------------------


def test_fault_garbage(run_sim):
    sim, rec = run_sim(garbage=True, seed=3)
    for _ in range(10):
        assert rec.identify().serial == SERIAL
        assert rec.battery().level == 76
        assert len(rec.list_files()) == 5
    assert rec.decoder.discarded_bytes > 100
    assert rec.stats.retries == 0


def test_fault_corrupt_response_is_retried(run_sim):
    # a corrupt answer costs one timeout; 1 s so that a loaded machine's late good answer is no extra retry
    sim, rec = run_sim(corrupt_responses=2, timeout=1.0, retries=3)
    assert rec.identify().serial == SERIAL
    assert rec.stats.retries == 2 and rec.decoder.bad_frames == 2
    # a retried erase is answered from the duplicate cache, not executed twice
    rec.authenticate("000000")
    victim = names(sim.media_dir)[0]
    sim.corrupt_responses = 1
    rec.erase(victim)
    assert sim.erased == [victim]
    assert rec.stats.retries == 3


def test_fault_silence_timeout_and_retries(run_sim):
    sim, rec = run_sim(silent=True, timeout=0.2, retries=2)
    t0 = time.monotonic()
    with pytest.raises(RecorderTimeout, match="记录仪无应答 / recorder did not answer IDENTIFY") as exc:
        rec.identify()
    elapsed = time.monotonic() - t0
    assert 0.55 < elapsed < 1.5
    assert "3 attempts" in str(exc.value)
    assert len(sim.requests) == 3 and len({seq for _, seq in sim.requests}) == 1


def test_slow_device_late_answers_are_ignored(run_sim):
    sim, rec = run_sim(response_delay=0.3, timeout=0.2, retries=2)
    assert rec.battery().level == 76  # the answer to attempt 1 arrives during attempt 2
    sim.response_delay = 0
    assert rec.identify().serial == SERIAL  # the cached second answer is stale: skipped
    assert rec.stats.retries >= 1 and rec.stats.stale_frames >= 1


def test_port_is_exclusive_and_closed_client_refuses(run_sim):
    sim, rec = run_sim()
    with pytest.raises(RecorderError, match="cannot open recorder port"):
        RecorderClient(sim.port_path)
    rec.close()
    with pytest.raises(RecorderError, match="closed"):
        rec.identify()
    with RecorderClient(sim.port_path) as again:
        assert again.identify().serial == SERIAL


def test_fault_time_sync_and_msdc_fail(run_sim):
    sim, rec = run_sim(time_sync_fail=True, msdc_fail=True)
    rec.authenticate("000000")
    with pytest.raises(RecorderRefused) as exc:
        rec.set_clock(_dt.datetime.now(CHINA_TZ), align=False)
    assert exc.value.result == Result.TIME_SYNC_FAIL == 6
    with pytest.raises(RecorderRefused) as exc:
        rec.mass_storage()
    assert exc.value.result == Result.MSDC_FAIL == 8


def test_fault_hostile_names_in_listing(run_sim):
    sim, rec = run_sim(inject_names=["../../etc/cron.d/x"])
    with pytest.raises(UnsafeName, match="path"):
        rec.list_files()


def test_disconnect_at_byte_n_then_redock(run_sim, media):
    victim = names(media)[2]
    full = (media / victim).read_bytes()
    n = 100_000
    sim, rec = run_sim(disconnect_file=victim, disconnect_at=n, timeout=5.0, retries=1)  # no timeout expected
    rec.authenticate("000000")
    mount = rec.mass_storage()
    listed = {f.name: f.size for f in rec.list_files()}
    assert listed[victim] == len(full)
    # the station copies: a short read, and the device is gone when it ends
    for name in names(media):
        if name != victim:
            assert (Path(mount) / name).read_bytes() == (media / name).read_bytes()
    with open(Path(mount) / victim, "rb") as fh:
        got = fh.read()
    assert got == full[:n] and len(got) < listed[victim]
    assert sim.disconnected.is_set() and not os.path.exists(sim.port_path)
    with pytest.raises(RecorderGone, match="记录仪已断开 / recorder disconnected"):
        rec.battery()
    with pytest.raises(RecorderGone, match="not found"):
        RecorderClient(sim.port_path)
    # re-dock: a new device on the same media serves the whole file
    sim2, rec2 = run_sim()
    rec2.authenticate("000000")
    assert (Path(rec2.mass_storage()) / victim).read_bytes() == full


def test_hangup_while_waiting(run_sim):
    sim, rec = run_sim(silent=True, timeout=3, retries=0)
    threading.Timer(0.2, sim.stop).start()
    t0 = time.monotonic()
    with pytest.raises(RecorderGone):
        rec.identify()
    assert time.monotonic() - t0 < 1.5


def test_missing_port(tmp_path):
    with pytest.raises(RecorderGone, match="recorder port not found"):
        RecorderClient(str(tmp_path / "ttyACM9"))


# --- CLI ------------------------------------------------------------------------------------------


def test_cli(media, tmp_path):
    link = tmp_path / "x" / "ttyREC0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.recorder_sim", "--link", str(link), "--media", str(media),
         "--serial", "1111111", "--officer", "000777", "--officer-name", "李四", "--unit", "330100000009",
         "--unit-name", "杭州市交通运输局", "--garbage", "--clock-offset", "120"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("recorder sim ready:"), line + proc.stderr.read()
        with RecorderClient(str(link), timeout=0.5) as rec:
            info = rec.identify()
            assert (info.serial, info.officer_number, info.officer_name, info.unit_name) == (
                "1111111", "000777", "李四", "杭州市交通运输局")
            assert 118 < rec.clock_skew() < 122
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert not link.exists()
