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
