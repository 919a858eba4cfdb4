"""Docking detected with udev: the station pairs each recorder's volume with its command channel by
USB serial, not by the order devices appear, and ends a docking whose volume udev removes; without
udev it polls and uses the mount path the recorder answers.

The events are fed through the station's own seam (``DockStation.udev_event``, what pyudev's
observer calls) from tests/dock/data/udev-two-recorders.log, written in the form
``udevadm monitor --udev --property`` prints (two CDC-ACM + mass-storage recorders; not captured
from a real recorder: none was attached to this machine). The device names of the command channels
in it are replaced by the simulators' ptys; the volumes' mount points come from a mountinfo file
in the form of /proc/self/mountinfo. Real simulators, real station, real store."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from drivers.recorder import udev
from drivers.recorder.udev import parse_monitor
from tests.dock.test_dock import env, make_cfg, media, media_master, start_sim, start_station  # noqa: F401  (fixtures)
from tools.media import make_big_file, make_recorder_media, recorder_name

LOG = Path(__file__).parent / "data" / "udev-two-recorders.log"
SERIAL_A, SERIAL_B = "1234567", "7654321"  # the recorders' own serials (GetZFYInfo); the USB serials differ


@pytest.fixture(scope="session")
def media_b_master(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dock-media-b")
    make_recorder_media(d, n_files=1, seconds=1, serial=SERIAL_B, size="320x240", audio_file=None, seed=7)
    return d


def digests(d: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}


def events(ptys: dict[str, str]) -> list[tuple[str, dict]]:
    """The recorded stream with the ttyACM names replaced by the simulators' ptys."""
    out = []
    for action, props in parse_monitor(LOG.read_text()):
        props = dict(props)
        props["DEVNAME"] = ptys.get(props["DEVNAME"], props["DEVNAME"])
        out.append((action, props))
    return out


def wait_until(cond, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.fixture
def udev_running(tmp_path, monkeypatch):
    pytest.importorskip("pyudev")  # an optional dependency (extra "udev", also in "test"), not a project module
    control = tmp_path / "udev-control"
    control.touch()
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(control))  # the daemon's control file: the monitor starts


def two_recorders(env, media, media_b_master, tmp_path, **kw):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, **kw))
    assert st.dock.status()["detection"] == "udev"
    mnt_a, mnt_b = tmp_path / "mnt-a", tmp_path / "mnt-b"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("36 25 0:32 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
                         f"97 36 8:17 / {mnt_b} rw,nosuid,nodev shared:50 - vfat /dev/sdb1 rw,uid=0\n"
                         f"98 36 8:33 / {mnt_a} rw,nosuid,nodev shared:51 - vfat /dev/sdc1 rw,uid=0\n")
    st.dock.mountinfo_path = str(mountinfo)
    # neither recorder answers a mount path: only the pairing by USB serial finds each volume
    sim_a = start_sim(made, media, ports / "ttyREC1", mount_dir=mnt_a, msdc_no_path=True)
    sim_b = start_sim(made, media_b_master, ports / "ttyREC2", mount_dir=mnt_b, msdc_no_path=True,
                      serial=SERIAL_B, officer_number="000456", officer_name="李四")
    stream = events({"/dev/ttyACM0": os.path.realpath(sim_a.port_path),
                     "/dev/ttyACM1": os.path.realpath(sim_b.port_path)})
    plugged = [e for e in stream if e[0] == "add" and e[1]["SUBSYSTEM"] != "block"]
    volumes = [e for e in stream if e[0] == "add" and e[1]["SUBSYSTEM"] == "block"]
    unplug_a = [e for e in stream if e[0] == "remove"]
    for action, props in plugged:
        st.dock.udev_event(action, props)
    # both switched to mass storage before any volume shows: then B's volume comes first (sdb), A's second
    wait_until(lambda: sim_a.msdc and sim_b.msdc, "both recorders in mass-storage mode")
    assert [p["DEVNAME"] for _, p in volumes] == ["/dev/sdb", "/dev/sdb1", "/dev/sdc", "/dev/sdc1"]
    return st, sim_a, sim_b, volumes, unplug_a


def volume_audit(st, bay: str) -> dict:
    rows = [json.loads(a["detail"]) for a in st.store.audit.entries(action="volume")]
    return next(r for r in rows if r["bay"] == bay)


def test_volumes_paired_by_usb_serial_not_by_order(env, media, media_b_master, tmp_path, udev_running):
    st, sim_a, sim_b, volumes, _ = two_recorders(env, media, media_b_master, tmp_path)
    for action, props in volumes:
        st.dock.udev_event(action, props)
    a = st.wait_state("bay-1", ("uploading",))
    b = st.wait_state("bay-2", ("uploading",))
    assert a["serial"] == SERIAL_A and b["serial"] == SERIAL_B
    # each bay sealed its own recorder's files, byte for byte
    rows = {r["id"]: r for r in st.store.items()}
    assert {rows[i]["content_hash"] for i in a["items"]} == digests(media)
    assert {rows[i]["content_hash"] for i in b["items"]} == digests(media_b_master)
    va, vb = volume_audit(st, "bay-1"), volume_audit(st, "bay-2")
    assert (va["usb_serial"], va["devnode"], va["mount"], va["source"]) == \
        ("ZFYA00000001", "/dev/sdc1", str(tmp_path / "mnt-a"), "udev")
    assert (vb["usb_serial"], vb["devnode"], vb["mount"]) == ("ZFYB00000002", "/dev/sdb1", str(tmp_path / "mnt-b"))
    assert va["answered"] is None  # the recorder said nothing: the pairing came from udev alone


def test_recorder_unplugged_mid_copy_udev_removal_ends_its_docking(env, media, media_b_master, tmp_path,
                                                                     udev_running):
    # a big first file on A, copied at 1 MiB/s, so the unplug lands inside it
    big = recorder_name(SERIAL_A, time_of_first(media), 0, "MP4")
    make_big_file(media / big, 3 << 20)
    st, sim_a, sim_b, volumes, unplug_a = two_recorders(env, media, media_b_master, tmp_path,
                                                        bay_rate_limit_mib=1)
    for action, props in volumes:
        st.dock.udev_event(action, props)
    wait_until(lambda: st.bay("bay-1").get("file_name") == big and st.bay("bay-1").get("bytes_done", 0) > 0,
               f"bay-1 copying {big}")
    sim_a.stop()  # pulled out: its channel goes (the mount directory stays, as a static mount point does)
    assert (tmp_path / "mnt-a").is_dir() and st.bay("bay-1")["state"] == "downloading"
    for action, props in unplug_a:
        st.dock.udev_event(action, props)
    gone = wait_until(lambda: (st.bay("bay-1").get("history") or [None])[0] if not st.bay("bay-1")["docked"]
                      and not st.dock.bays["bay-1"].busy else None, "bay-1 empty with the docking in its history")
    assert gone["serial"] == SERIAL_A and gone["state"] == "error" and "removed" in gone["reason"]
    assert sim_a.erased == [] and gone["erased"] == 0 and gone["items"] <= 1
    # the other recorder is not disturbed: all of B's files sealed, from B's volume
    b = st.wait_state("bay-2", ("uploading",))
    rows = {r["id"]: r for r in st.store.items()}
    assert {rows[i]["content_hash"] for i in b["items"]} == digests(media_b_master)


def time_of_first(media: Path):
    import datetime as _dt

    from drivers.recorder import time_from_name

    first = min(time_from_name(p.name) for p in media.iterdir() if time_from_name(p.name))
    return first - _dt.timedelta(minutes=30)


def test_without_udev_polls_and_uses_the_answered_path(env, media, tmp_path, monkeypatch):
    data, ports, made = env
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "no-udev-here"))
    st = start_station(made, make_cfg(data, ports))
    status = st.dock.status()
    assert status["detection"] == "polling" and "no udev daemon" in status["detection_why"]
    sim = start_sim(made, media, ports / "ttyREC1")
    b = st.wait_state("bay-1", ("uploading",))
    assert len(b["items"]) == 5
    v = volume_audit(st, "bay-1")
    assert (v["source"], v["mount"], v["usb_serial"]) == ("recorder", sim.mount_dir, None)


def test_without_udev_a_recorder_that_names_no_volume_is_refused(env, media, tmp_path, monkeypatch):
    data, ports, made = env
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "no-udev-here"))
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1", msdc_no_path=True)
    b = st.wait("bay-1", ("error",))
    assert "answered no mount path" in b["reason"] and "udev does not run here" in b["reason"]
    assert b["items"] == [] and sim.erased == []
