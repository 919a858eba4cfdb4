"""`edge-agent doctor` on a docking station says how docking is detected: udev or polling, and why."""

from __future__ import annotations

import pytest

from agent.config import Config
from agent.runtime.doctor import check_devices
from drivers.recorder import udev


def docking_check(tmp_path):
    cfg = Config.defaults(**{"storage.data_dir": str(tmp_path / "d"), "device.kind": "dock",
                             "dock.bays": [str(tmp_path / "ttyREC*")], "dock.poll_ms": 250})
    return next(c for c in check_devices(cfg) if c.name == "docking")


def test_doctor_says_polling_without_udev(tmp_path, monkeypatch):
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "absent"))
    c = docking_check(tmp_path)
    assert c.status == "WARN" and "polling every 250 ms" in c.detail and "no udev daemon" in c.detail
    assert c.key == "dock.poll_ms"


def test_doctor_says_udev_where_it_runs(tmp_path, monkeypatch):
    pytest.importorskip("pyudev")  # the optional extra "udev" (also in "test"), not a project module
    (tmp_path / "control").touch()
    monkeypatch.setattr(udev, "UDEV_CONTROL", str(tmp_path / "control"))
    c = docking_check(tmp_path)
    assert c.status == "OK" and "docking detected by udev" in c.detail and "USB serial" in c.detail
