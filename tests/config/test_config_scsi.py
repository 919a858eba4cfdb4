"""``[scsi]``: vendor SCSI tables parse into the driver's plain dataclasses; the example file is the
built-in JieLi table byte for byte; each malformed table is one line naming the entry and function."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config as config_mod
from agent.common.errors import ConfigError
from drivers.recorder.scsi import JIELI_DV16, VendorProfile

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "scsi-vendors.toml"


def test_default_is_the_builtin_jieli_table():
    profiles = config_mod.Config.defaults().scsi.profiles()
    assert profiles == [JIELI_DV16] and isinstance(profiles[0], VendorProfile)


def test_example_file_is_the_builtin_table():
    cfg = config_mod.load(EXAMPLE)
    (p,) = cfg.scsi.profiles()
    assert p == JIELI_DV16
    assert all(p.cdb(k) == JIELI_DV16.cdb(k) for k in JIELI_DV16.functions)


def test_own_tables_are_tried_first():
    text = EXAMPLE.read_text(encoding="utf-8").replace('builtin = []', 'builtin = ["jieli-dv16"]')
    text = text.replace('name = "jieli-dv16"', 'name = "acme-x1"').replace('"DV16"', '"ACME"')
    names = [p.name for p in config_mod.loads(text).scsi.profiles()]
    assert names == ["acme-x1", "jieli-dv16"]


@pytest.mark.parametrize("old, new, msg", [
    ('"FD 81 00 00 00 07 {len}"', '"FD 81 0G"', "functions.read_resolution: CDB 字节无效 / bad CDB byte '0G'"),
    ('length = 89, payload = "zfy_info", check_status = true, password = true }\nwrite',
     'length = 94, payload = "zfy_info", check_status = true, password = true }\nwrite',
     "functions.get_zfy_info: payload zfy_info is 89 bytes, length is 94"),
    ('zfy_info = "89"', 'zfy_info = 89', "zfy_info: 89 不是可选值"),
    ('inquiry_vendor = "DV16"', 'inquiry_vendr = "DV16"', "inquiry_vendr: 未知的键 / unknown key"),
    ('inquiry_product = "DEVICE V1.00"', 'usb_vid = "1d6b"', "须给出匹配条件 / give inquiry_vendor"),
    ('builtin = []', 'builtin = ["acme"]', "unknown built-in table 'acme'"),
    ('read_password   = {', 'format_card = { cdb = "FB 82 00 00 00 09", dir = "none" }\nread_password = {',
     "functions.format_card: unknown function"),
    ('time_zone = "+08:00"', 'time_zone = "CST"', "time zone must look like +08:00"),
    ('name = "jieli-dv16"', 'name = "../x"', "scsi.vendors: 第 1 项 / entry 1: name"),
])
def test_malformed_tables_are_refused(old, new, msg):
    text = EXAMPLE.read_text(encoding="utf-8")
    if "给出匹配条件" in msg:  # no INQUIRY strings and only half of the USB ids
        text = text.replace('inquiry_vendor = "DV16"', 'inquiry_vendor = ""')
    assert old in text
    with pytest.raises(ConfigError) as e:
        config_mod.loads(text.replace(old, new, 1))
    assert msg in str(e.value) and "scsi." in str(e.value)
    assert "\n" not in str(e.value)


# --- SCSI bays ([[dock.bays]] transport = "scsi") --------------------------------------------------
def bays_toml(entry: str) -> str:
    return f"[dock]\nbays = [{entry}]\n"


def test_scsi_bay_round_trips_and_serial_bays_stay_plain():
    cfg = config_mod.loads(bays_toml('{name = "scsi-1", transport = "scsi", sg = "/dev/sg2", vendor = "jieli-dv16", '
                                     'mount = "/media/rec1"}, "/dev/ttyACM*", {name = "b", port = "/dev/ttyUSB0"}'))
    assert cfg.as_dict()["dock"]["bays"] == [
        {"name": "scsi-1", "transport": "scsi", "sg": "/dev/sg2", "vendor": "jieli-dv16", "mount": "/media/rec1"},
        "/dev/ttyACM*", {"name": "b", "port": "/dev/ttyUSB0"}]
    scsi, glob_bay, _ = cfg.dock.bays
    assert scsi.scsi and not scsi.mass_storage_only and scsi.pattern == "/dev/sg2"
    assert not glob_bay.scsi and glob_bay.transport == "serial"


@pytest.mark.parametrize("entry, says", [
    ('{name = "s", transport = "scsi", port = "/dev/sg2"}', "a SCSI bay has no serial port"),
    ('{transport = "scsi", sg = "/dev/sg2"}', "a SCSI bay needs a name"),
    ('{name = "s", transport = "scsi"}', "give exactly one of sg (the SCSI generic node) or usb_port"),
    ('{name = "s", transport = "scsi", sg = "/dev/sg2", usb_port = "1-2"}', "give exactly one of sg"),
    ('{name = "s", transport = "scsi", sg = "/dev/sg*"}', "sg '/dev/sg*' must be one fixed absolute path"),
    ('{name = "s", transport = "scsi", usb_port = "usb1"}', "usb_port 'usb1' must look like 1-2.3"),
    ('{name = "s", transport = "scsi", usb_port = "1-2", mount = "media"}', "mount 'media' must be one fixed"),
    ('{name = "s", port = "/dev/ttyACM0", vendor = "jieli-dv16"}', "sg, usb_port and vendor belong to a SCSI bay"),
    ('{name = "s", transport = "usb", sg = "/dev/sg2"}', "transport"),
    ('{name = "s", transport = "scsi", sg = "/dev/sg2", vendor = "acme"}', "vendor 'acme' is no table of [scsi]"),
])
def test_malformed_scsi_bay_is_one_line_naming_the_entry(entry, says):
    with pytest.raises(ConfigError) as err:
        config_mod.loads(bays_toml(entry))
    msg = str(err.value)
    assert "dock.bays" in msg and "entry 1" in msg and says in msg, msg
