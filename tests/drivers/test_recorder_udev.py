"""Matching a recorder's volume to its command channel by USB serial (drivers/recorder/udev.py).

The property dicts below are written in the form `udevadm info -q property` prints for a CDC-ACM +
mass-storage composite device (systemd 252 and 255 property names); no real recorder was attached to
this machine, so they are not captures of one."""

from __future__ import annotations

import importlib.util

import pytest

from drivers.recorder import udev
from drivers.recorder.udev import RecorderNodes, match_nodes, mount_point, node_from_udev, usb_port, volume_for

USB = "/devices/pci0000:00/0000:00:14.0/usb1"


def tty(n: int, port: str, serial: str | None, *, driver="cdc_acm", new_udev=True) -> dict:
    p = {"DEVNAME": f"/dev/ttyACM{n}", "SUBSYSTEM": "tty", "DEVPATH": f"{USB}/{port}/{port}:1.0/tty/ttyACM{n}",
         "ID_BUS": "usb", "ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104", "ID_USB_DRIVER": driver,
         "ID_USB_INTERFACE_NUM": "00", "ID_PATH": f"pci-0000:00:14.0-usb-0:{port[2:]}:1.0"}
    if serial is not None:
        p["ID_SERIAL_SHORT"] = serial
        p["ID_SERIAL"] = f"ZFY_Recorder_{serial}"
        if new_udev:
            p["ID_USB_SERIAL_SHORT"] = serial
    return p


def disk(letter: str, port: str, serial: str | None, part: int | None = 1, fs="vfat", label="REC") -> dict:
    host = f"{USB}/{port}/{port}:1.2/host3/target3:0:0/3:0:0:0/block/sd{letter}"
    p = {"SUBSYSTEM": "block", "ID_BUS": "usb", "ID_VENDOR": "DV16", "ID_MODEL": "DEVICE_V1.00",
         "ID_USB_DRIVER": "usb-storage", "ID_VENDOR_ID": "1d6b", "ID_MODEL_ID": "0104"}
    if serial is not None:
        p["ID_SERIAL_SHORT"] = serial
    if part is None:
        p.update({"DEVNAME": f"/dev/sd{letter}", "DEVTYPE": "disk", "DEVPATH": host})
        if fs:
            p.update({"ID_FS_TYPE": fs, "ID_FS_LABEL": label})
    else:
        p.update({"DEVNAME": f"/dev/sd{letter}{part}", "DEVTYPE": "partition",
                  "DEVPATH": f"{host}/sd{letter}{part}", "ID_FS_TYPE": fs, "ID_FS_LABEL": label})
    return p


def sg(n: int, port: str, serial: str) -> dict:
    return {"DEVNAME": f"/dev/sg{n}", "SUBSYSTEM": "scsi_generic", "ID_BUS": "usb", "ID_SERIAL_SHORT": serial,
            "DEVPATH": f"{USB}/{port}/{port}:1.2/host3/target3:0:0/3:0:0:0/scsi_generic/sg{n}"}


def nodes(*props):
    return [n for n in (node_from_udev(p) for p in props) if n is not None]


def test_matched_by_serial_not_by_order():
    # recorder A (port 1-2) enumerated second: ttyACM1; recorder B (port 1-3) first: ttyACM0.
    # By order ttyACM0 would pair with sdb1, A's volume; by serial it pairs with sdc1.
    props = [tty(0, "1-3", "ZFY7654321"), tty(1, "1-2", "ZFY1234567"),
             disk("b", "1-2", "ZFY1234567", part=None, fs=None), disk("b", "1-2", "ZFY1234567", label="REC1234567"),
             disk("c", "1-3", "ZFY7654321", label="REC7654321"), sg(1, "1-2", "ZFY1234567"), sg(2, "1-3", "ZFY7654321"),
             {"DEVNAME": "/dev/vda", "SUBSYSTEM": "block", "DEVTYPE": "disk", "ID_FS_TYPE": "ext4",
              "DEVPATH": "/devices/pci0000:00/0000:00:02.0/virtio1/block/vda"},          # not USB: ignored
             tty(2, "1-4", "FT12AB34", driver="ftdi_sio")]                               # USB-serial adapter: ignored
    recs, refused = match_nodes(nodes(*props))
    assert refused == []
    assert recs == [
        RecorderNodes("ZFY1234567", "1-2", "1d6b", "0104", command="/dev/ttyACM1", volumes=["/dev/sdb1"], sg="/dev/sg1"),
        RecorderNodes("ZFY7654321", "1-3", "1d6b", "0104", command="/dev/ttyACM0", volumes=["/dev/sdc1"], sg="/dev/sg2"),
    ]
    assert volume_for("/dev/ttyACM0", nodes(*props)) == ["/dev/sdc1"]
    assert volume_for("/dev/ttyACM9", nodes(*props)) == []


def test_older_udev_and_unpartitioned_volume():
    props = [tty(0, "2-1.4", "ABC123", new_udev=False), disk("d", "2-1.4", "ABC123", part=None, fs="exfat")]
    (rec,), refused = match_nodes(nodes(*props))
    assert refused == [] and rec.command == "/dev/ttyACM0" and rec.volumes == ["/dev/sdd"] and rec.usb_port == "2-1.4"


def test_no_serial_or_placeholder_serial_is_refused_never_guessed():
    props = [tty(0, "1-2", None), disk("b", "1-2", None), tty(1, "1-3", "0123456789ABCDEF"),
             disk("c", "1-3", "0123456789ABCDEF")]
    recs, refused = match_nodes(nodes(*props))
    assert recs == []
    assert [d for d, _ in refused] == ["/dev/ttyACM0", "/dev/sdb1", "/dev/ttyACM1", "/dev/sdc1"]
    assert all("no usable USB serial" in why for _, why in refused)


def test_one_serial_on_two_ports_is_refused_for_both():
    props = [tty(0, "1-2", "ZFY1234567"), disk("b", "1-2", "ZFY1234567"),
             tty(1, "1-3", "ZFY1234567"), disk("c", "1-3", "ZFY1234567")]
    recs, refused = match_nodes(nodes(*props))
    assert recs == [] and len(refused) == 4
    assert all("USB serial ZFY1234567 on several ports (1-2, 1-3)" in why for _, why in refused)


def test_re_enumerated_after_set_msdc_the_volume_keeps_the_serial():
    # the command channel is gone, the disk came back on the same port with the same serial
    (rec,), _ = match_nodes(nodes(disk("e", "1-2", "ZFY1234567", label="REC1234567")))
    assert rec.command is None and rec.volumes == ["/dev/sde1"] and rec.usb_serial == "ZFY1234567"


@pytest.mark.parametrize("devpath, port", [
    (f"{USB}/1-2/1-2:1.0/tty/ttyACM0", "1-2"),
    (f"{USB}/1-2/1-2.4/1-2.4:1.2/host3/target3:0:0/3:0:0:0/block/sdb/sdb1", "1-2.4"),
    ("/devices/virtual/tty/ttyS0", None),
])
def test_usb_port_from_devpath(devpath, port):
    assert usb_port(devpath) == port


def test_mount_point():
    info = ("36 25 0:32 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
            "97 36 8:17 / /media/station/REC\\0401234567 rw,nosuid,nodev shared:50 - vfat /dev/sdb1 rw,uid=0\n")
    assert mount_point("/dev/sdb1", info) == "/media/station/REC 1234567"
    assert mount_point("/dev/sdc1", info) is None


def test_monitor_seam_without_udev(tmp_path, monkeypatch):
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "no-udev-here"))
    assert udev.start_monitor(lambda action, props: None) is None   # the caller polls


def test_monitor_seam_starts_and_stops(tmp_path, monkeypatch):
    pytest.importorskip("pyudev")  # an optional dependency (extra "udev"), not a project module
    control = tmp_path / "control"
    control.touch()
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(control))
    observer = udev.start_monitor(lambda action, props: None)
    assert observer is not None and observer.is_alive()
    observer.stop()
    assert not observer.is_alive()


def test_station_reports_how_it_detects_docking(tmp_path, monkeypatch):
    from tests.dock.test_dock import make_cfg, start_station

    made = {"sims": [], "stations": []}
    ports = tmp_path / "ports"
    ports.mkdir()
    try:
        st = start_station(made, make_cfg(tmp_path / "a", ports))
        assert st.dock.status()["detection"] == "polling"     # no udev daemon here
        st.stop()
        if importlib.util.find_spec("pyudev"):  # the extra "udev" (also in "test")
            control = tmp_path / "control"
            control.touch()
            monkeypatch.setattr(udev, "UDEV_CONTROL", str(control))
            st = start_station(made, make_cfg(tmp_path / "b", ports))
            assert st.dock.status()["detection"] == "udev"
            observer = st.dock._udev
            st.stop()
            assert st.dock.status()["detection"] == "polling" and not observer.is_alive()
    finally:
        for s in made["stations"]:
            s.stop()
