"""SCSI bays (``transport = "scsi"``): the dock drives the recorder simulator at the SG_IO seam
(``DockStation.open_sg`` hands out ``SimSgDevice``); the full path to the archive is
tests/e2e/test_dock_scsi_e2e.py. Here: a bay matched by USB port with udev and its volume paired by
USB serial, and what a SCSI bay refuses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from drivers.recorder import udev
from tests.dock.test_dock import SERIAL, env, make_cfg, media, media_master, start_station  # noqa: F401
from tools.recorder_sim import RecorderSim

USB = "/devices/pci0000:00/0000:00:14.0/usb1"


def scsi_station(made, data: Path, ports: Path, bay: dict, **kw):
    st = start_station(made, make_cfg(data, ports, bays=[bay], **kw))
    return st


def start_recorder(made, media: Path, mount: Path | None = None, **kw) -> RecorderSim:
    sim = RecorderSim(media, None, mount_dir=mount, probe=False, **kw).start()
    made["sims"].append(sim)
    return sim


def hand_over(st, sim: RecorderSim) -> list:
    devices: list = []

    def open_sg(path: str):
        devices.append(sim.sg_device(path))
        return devices[-1]

    st.dock.open_sg = open_sg
    return devices


def sg_event(devnode: str, port: str, serial: str, action: str = "add") -> dict:
    return {"ACTION": action, "DEVNAME": devnode, "SUBSYSTEM": "scsi_generic", "ID_BUS": "usb",
            "ID_SERIAL_SHORT": serial, "ID_USB_SERIAL_SHORT": serial, "ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104",
            "DEVPATH": f"{USB}/{port}/{port}:1.0/host5/target5:0:0/5:0:0:0/scsi_generic/sg3"}


def volume_event(port: str, serial: str) -> dict:
    return {"ACTION": "add", "DEVNAME": "/dev/sdd1", "SUBSYSTEM": "block", "DEVTYPE": "partition", "ID_BUS": "usb",
            "ID_SERIAL_SHORT": serial, "ID_USB_SERIAL_SHORT": serial, "ID_FS_TYPE": "vfat", "ID_FS_LABEL": "REC",
            "DEVPATH": f"{USB}/{port}/{port}:1.0/host5/target5:0:0/5:0:0:0/block/sdd/sdd1"}


def test_scsi_bay_on_a_usb_port_with_udev_pairs_the_volume_by_usb_serial(env, media, tmp_path, monkeypatch):
    pytest.importorskip("pyudev")  # an optional dependency (extra "udev", also in "test"), not a project module
    (tmp_path / "control").touch()
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "control"))
    data, ports, made = env
    mount = tmp_path / "mnt"
    st = scsi_station(made, data, ports, {"name": "scsi-2", "transport": "scsi", "usb_port": "1-4"},
                      erase_policy="after-local-verify")
    assert st.dock.detection == "udev"
    (tmp_path / "mountinfo").write_text(f"99 36 8:49 / {mount} rw - vfat /dev/sdd1 rw\n")
    st.dock.mountinfo_path = str(tmp_path / "mountinfo")
    sim = start_recorder(made, media, mount)
    devices = hand_over(st, sim)
    node = ports / "sg3"  # stands for /dev/sg3: a plain file, present while docked
    node.touch()
    st.dock.udev_event("add", sg_event("/dev/sg-other", "1-5", "OTHER0001"))  # another USB port: not this bay
    st.dock.scan()  # the scan the event wakes, done here so that its outcome is known
    assert st.bay("scsi-2") == {}
    st.dock.udev_event("add", sg_event(str(node), "1-4", "ZFY00000009"))
    st.wait_state("scsi-2", ("charging", "downloading"), timeout=10)
    deadline = time.monotonic() + 20
    while not sim.msdc and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.msdc
    st.dock.udev_event("add", volume_event("1-4", "ZFY00000009"))
    b = st.wait("scsi-2", ("done", "error"))
    assert b["state"] == "done", b
    assert b["serial"] == SERIAL and len(b["items"]) == 5 and b["erased"] == 4 and b["kept_protected"] == 1
    assert [p.name for p in mount.iterdir()] == [n for n in os.listdir(media) if "_IMP" in n]
    vol = json.loads(st.store.audit.entries(action="volume")[-1]["detail"])
    assert (vol["usb_serial"], vol["devnode"], vol["mount"], vol["source"]) == ("ZFY00000009", "/dev/sdd1",
                                                                                 str(mount), "udev")
    assert devices and devices[0].path == str(node)


def test_scsi_bay_without_udev_and_without_a_mount_is_refused(env, media, tmp_path, monkeypatch):
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "absent"))
    data, ports, made = env
    st = scsi_station(made, data, ports, {"name": "scsi-1", "transport": "scsi", "sg": str(ports / "sg1")})
    sim = start_recorder(made, media)
    hand_over(st, sim)
    (ports / "sg1").touch()
    b = st.wait("scsi-1", ("error",))
    assert "the SCSI bay has no mount configured" in b["reason"] and "udev does not run here" in b["reason"]
    assert b["items"] == [] and len(os.listdir(sim.mount_dir)) == 5  # switched, nothing copied, nothing erased


def test_scsi_bay_wrong_password_reads_nothing(env, media, tmp_path):
    data, ports, made = env
    st = scsi_station(made, data, ports, {"name": "scsi-1", "transport": "scsi", "sg": str(ports / "sg1"),
                                          "vendor": "jieli-dv16", "mount": str(tmp_path / "mnt")})
    sim = start_recorder(made, media, tmp_path / "mnt", wrong_password=True)
    devices = hand_over(st, sim)
    (ports / "sg1").touch()
    b = st.wait("scsi-1", ("error",))
    assert "wrong admin password" in b["reason"] and b["items"] == [] and not sim.msdc
    subs = [int.from_bytes(c[2:6], "big") for c in devices[0].cdbs if c[:1] in (b"\xfd", b"\xfb")]
    assert 3 not in subs and 13 in subs  # the stored password read and compared; GetZFYInfo never sent
    assert st.health.alarms.is_active("recorder_auth_failed", "scsi-1")


def test_scsi_bay_no_table_matches_names_what_the_device_said(env, media, tmp_path):
    data, ports, made = env
    st = scsi_station(made, data, ports, {"name": "scsi-1", "transport": "scsi", "sg": str(ports / "sg1"),
                                          "mount": str(tmp_path / "mnt")}, **{"scsi.builtin": []})
    sim = start_recorder(made, media, tmp_path / "mnt")
    hand_over(st, sim)
    (ports / "sg1").touch()
    b = st.wait("scsi-1", ("error",))
    assert "no vendor SCSI table matches" in b["reason"] and "'DV16'" in b["reason"] and not sim.msdc
