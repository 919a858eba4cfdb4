"""The recorder command set through both transports: the serial framing over a real pty and SCSI
pass-through answered at the SG_IO seam, both by the same simulated recorder (tools/recorder_sim/)."""

from __future__ import annotations

import datetime as _dt
import errno
import os
import time

import pytest

from drivers.recorder import (AuthError, Function, ProtocolError, Recorder, RecorderClient, RecorderError,
                              RecorderGone, RecorderRefused, RecorderTimeout, Resolution, Unsupported, ZfyInfo, assign)
from drivers.recorder.protocol import Result
from drivers.recorder.scsi import JIELI_DV16, ScsiFunction, ScsiTransport, VendorProfile, inquiry, open_scsi, parse_cdb
from drivers.recorder.sgio import Direction, SgDevice, SgIoHdr, sg_io
from tests.dock.test_dock import media, media_master  # noqa: F401  (fixtures)
from tools.recorder_sim import RecorderSim

UTC8 = _dt.timezone(_dt.timedelta(hours=8))
# no test here expects a serial timeout: a generous one keeps a loaded machine from failing them
SERIAL_TIMEOUT = 5.0


@pytest.fixture
def sim_factory(media, tmp_path):
    sims: list[RecorderSim] = []
    recs: list[Recorder] = []

    def make(transport: str, password: str | None = "000000", retries: int = 2, **kw):
        sim = RecorderSim(media, tmp_path / f"ttyREC{len(sims)}", probe=False, **kw).start()
        sims.append(sim)
        if transport == "serial":
            rec: Recorder = RecorderClient(sim.port_path, timeout=SERIAL_TIMEOUT, retries=1)
        else:
            profile = VendorProfile(**{**_fields(JIELI_DV16), "retries": retries})
            rec = Recorder(ScsiTransport(sim.sg_device(), profile))
        recs.append(rec)
        if password is not None:
            rec.authenticate(password)
        return sim, rec

    yield make
    for r in recs:
        r.close()
    for s in sims:
        s.stop()


TRANSPORTS = ["serial", "scsi"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_identify_and_id_code(sim_factory, transport):
    sim, rec = sim_factory(transport)
    n = len(rec.transport.device.cdbs) if transport == "scsi" else 0
    info = rec.identify()
    assert info == ZfyInfo("1234567", "000123", "张三", "330100000001", "杭州市城市管理局")
    assert rec.get_id_code() == "JL0001"
    if transport == "scsi":
        cdbs = rec.transport.device.cdbs[n:]
        # Init_Device (1, no data); password read (13), GetZFYInfo (3, 89 bytes), status (14); GetIDCode (2), status
        assert [c[5] for c in cdbs] == [0x01, 0x0D, 0x03, 0x0E, 0x02, 0x0E]
        assert cdbs[0] == bytes.fromhex("FB 82 00 00 00 01 00 00") + bytes(8)
        assert cdbs[2] == bytes.fromhex("FD 81 00 00 00 03 00 59") + bytes(8)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clock_sync_sets_the_instant(sim_factory, transport):
    sim, rec = sim_factory(transport, clock_offset=-3600)
    target = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0) + _dt.timedelta(seconds=2)
    rec.sync_dev_time(target, align=False)
    # the device now counts from the same instant, whatever zone the wire carries
    assert abs(sim.now().timestamp() - target.timestamp()) <= 3
    # serial: the zone travels with the time; SCSI: wall-clock time in the table's zone (+08:00), no zone field
    assert sim.now().utcoffset() == _dt.timedelta(hours=0 if transport == "serial" else 8)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_set_msdc(sim_factory, transport):
    sim, rec = sim_factory(transport)
    mount = rec.set_msdc()
    assert sim.msdc
    if transport == "serial":
        assert mount == os.path.abspath(sim.mount_dir)
    else:
        assert mount is None  # the command channel is the disk: the station finds the volume itself
    assert sorted(os.listdir(sim.mount_dir)) == sorted(f.name for f in sim.files)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_battery_and_resolution(sim_factory, transport):
    sim, rec = sim_factory(transport, battery_level=42, resolution=(2304, 1296))
    bat = rec.battery()
    assert bat.level == 42 and bat.charging is (True if transport == "serial" else None)
    assert rec.read_resolution() == Resolution(2304, 1296)
    assert str(rec.read_resolution()) == "2304x1296"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_write_zfy_info_and_read_back(sim_factory, transport, media, tmp_path):
    sim, rec = sim_factory(transport)
    before, after = assign(rec, "004711", "李四", "330100000002", "杭州市公安局西湖分局")
    assert before.officer_number == "000123"
    assert after == ZfyInfo("1234567", "004711", "李四", "330100000002", "杭州市公安局西湖分局")
    assert sim.info == after and len(sim.writes) == 1
    # the other transport of the same recorder reads the same record
    if transport == "serial":
        other = Recorder(ScsiTransport(sim.sg_device(), JIELI_DV16, "000000"))
    else:
        other = RecorderClient(sim.port_path, timeout=SERIAL_TIMEOUT, retries=1)
    with other:
        assert other.identify() == after
    # a field that does not fit is refused before anything is written
    with pytest.raises(ValueError, match="officer_number"):
        assign(rec, "1234567890", "王五", "330100000002", "x")
    assert len(sim.writes) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_password_is_result_4(sim_factory, transport):
    sim, rec = sim_factory(transport, password=None, wrong_password=True)
    with pytest.raises(AuthError, match="管理员密码错误 / wrong admin password") as e:
        rec.authenticate("000000")
    assert e.value.result == Result.PASSWORD_FAIL  # 4 on both transports
    # protected functions stay refused, nothing written
    with pytest.raises(AuthError):
        rec.write_zfy_info(ZfyInfo("1234567", "004711", "李四", "1", "x"))
    assert sim.writes == []
    with pytest.raises(AuthError, match="1 to 6"):
        rec.authenticate("1234567")


def test_scsi_password_check_reads_and_compares_on_the_host(sim_factory):
    sim, rec = sim_factory("scsi", password=None)
    sg = rec.transport.device
    rec.authenticate("000000")
    assert sg.cdbs[-1] == bytes.fromhex("FD 81 00 00 00 0D 00 10") + bytes(8)
    n = len(sg.cdbs)
    rec.battery()
    assert [c[5] for c in sg.cdbs[n:]] == [0x0D, 0x08, 0x0E]   # every protected call checks again
    rec.transport._password = b"999999"
    with pytest.raises(AuthError):
        rec.battery()
    assert sg.cdbs[-1][5] == 0x0D   # the command itself was never sent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_refused_and_unknown_commands(sim_factory, transport):
    sim, rec = sim_factory(transport, time_sync_fail=True, no_sd=True, unsupported=("read_resolution",))
    with pytest.raises(RecorderRefused, match="校时失败") as e:
        rec.sync_dev_time(_dt.datetime.now(UTC8), align=False)
    assert e.value.result == Result.TIME_SYNC_FAIL
    with pytest.raises(RecorderRefused) as e:
        rec.set_msdc()
    assert e.value.result == Result.MSDC_FAIL and not sim.msdc
    with pytest.raises(Unsupported, match="不支持该命令 / recorder does not know this command"):
        rec.read_resolution()
    assert rec.battery().level == 76  # the channel is fine afterwards


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_short_answers_are_clear_errors(sim_factory, transport):
    sim, rec = sim_factory(transport, short_answers=True)
    with pytest.raises(ProtocolError, match="ZFY_INFO|short answer"):
        rec.get_zfy_info()
    with pytest.raises(ProtocolError, match="电量应答错误|short answer"):
        rec.battery()
    with pytest.raises(ProtocolError, match="分辨率应答错误|short answer"):
        rec.read_resolution()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_nonsense_values_are_clear_errors(sim_factory, transport):
    sim, rec = sim_factory(transport, battery_level=250, resolution=(0, 1080))
    with pytest.raises(ProtocolError, match="电量应答错误 / bad battery answer"):
        rec.battery()
    with pytest.raises(ProtocolError, match="分辨率应答错误 / bad resolution answer"):
        rec.read_resolution()
    sim.id_code = "\x01\x02"
    with pytest.raises(ProtocolError, match="厂商型号代码无效"):
        rec.get_id_code()


def test_serial_garbage_around_every_answer(sim_factory):
    sim, rec = sim_factory("serial", garbage=True)
    assert rec.identify().serial == "1234567"
    assert rec.read_resolution() == Resolution(1920, 1080)
    assert rec.decoder.discarded_bytes > 0


def test_scsi_retries_timeouts_and_unit_attention(sim_factory, media, tmp_path):
    sim, rec = sim_factory("scsi", password=None)
    sg = sim.sg_device(timeouts=1, unit_attention=1)
    r2 = Recorder(ScsiTransport(sg, JIELI_DV16, "000000"))
    # 2 retries per command block: a timeout, then a unit attention, then the answer
    assert r2.battery().level == 76
    assert r2.transport.retries == 2 and [c[5] for c in sg.cdbs] == [0x0D, 0x0D, 0x0D, 0x08, 0x0E]
    sg = sim.sg_device(unit_attention=3)
    with pytest.raises(RecorderError, match="SCSI command read_password failed .*sense key 0x6"):
        Recorder(ScsiTransport(sg, JIELI_DV16, "000000")).battery()
    dead = Recorder(ScsiTransport(sim.sg_device(timeouts=10), JIELI_DV16, "000000"))
    t0 = time.monotonic()
    with pytest.raises(RecorderTimeout, match="记录仪无应答 / recorder did not answer read_password"):
        dead.battery()
    assert time.monotonic() - t0 < 1
    gone = Recorder(ScsiTransport(sim.sg_device(gone=True), JIELI_DV16, "000000"))
    with pytest.raises(RecorderGone):
        gone.battery()


def test_scsi_status_says_failed(sim_factory):
    sim, rec = sim_factory("scsi")
    # a WriteZFYInfo the recorder cannot store: its status read reports failure -> result 10 (FAIL)
    sg = rec.transport.device
    bad = ZfyInfo("1234567", "000123", "张三", "1", "x").encode()
    code, _ = rec.transport.call(Function.WRITE_ZFY_INFO, b"\xff" * 7 + bad[7:])
    assert code == Result.FAIL and sg.cdbs[-1][5] == 0x0E


def test_open_scsi_chooses_the_table_by_inquiry(sim_factory):
    sim, _ = sim_factory("serial", password=None)
    sg = sim.sg_device()
    assert inquiry(sg) == ("DV16", "DEVICE V1.00", "1.00")
    rec = open_scsi(sg, [JIELI_DV16], "000000")
    assert rec.transport.profile.name == "jieli-dv16" and rec.identify().serial == "1234567"
    other = VendorProfile(**{**_fields(JIELI_DV16), "name": "other", "inquiry_vendor": "ACME"})
    with pytest.raises(RecorderError, match="无匹配的厂商命令表 / no vendor SCSI table matches .*'DV16'"):
        open_scsi(sim.sg_device(), [other], "000000")
    by_usb = VendorProfile(**{**_fields(JIELI_DV16), "inquiry_vendor": "", "inquiry_product": "",
                              "usb_vid": "1234", "usb_pid": "ABCD"})
    assert open_scsi(sim.sg_device(), [by_usb], "000000", usb_vid="1234", usb_pid="abcd").kind == "scsi"


def _fields(p: VendorProfile) -> dict:
    return {k: v for k, v in p.__dict__.items() if not k.startswith("_")}


def test_function_missing_from_the_table_is_unsupported(sim_factory):
    sim, _ = sim_factory("serial", password=None)
    fns = dict(JIELI_DV16.functions)
    del fns["read_resolution"]
    rec = Recorder(ScsiTransport(sim.sg_device(), VendorProfile(**{**_fields(JIELI_DV16), "functions": fns}),
                                 "000000"))
    assert not rec.supports(Function.READ_RESOLUTION)
    with pytest.raises(Unsupported):
        rec.read_resolution()
    with pytest.raises(Unsupported):
        rec.list_files()  # no station extras over SCSI: files are read on the volume


# --- the table itself ------------------------------------------------------------------------------
def test_cdb_templates():
    assert parse_cdb("FB 82 00 00 00 04 {len}", 89, 16) == bytes.fromhex("FB 82 00 00 00 04 00 59") + bytes(8)
    for bad, msg in [("FB 8", "bad CDB byte"), ("", "empty"), ("00 " * 17, "17 bytes")]:
        with pytest.raises(ValueError, match=msg):
            parse_cdb(bad, 0, 16)


@pytest.mark.parametrize("change, msg", [
    ({"get_zfy_info": ScsiFunction("FD 81 00 00 00 03 {len}", "in", 94, payload="zfy_info")}, "89 bytes, length is 94"),
    ({"read_battery": ScsiFunction("FD 81 00 00 00 08 {len}", "in", 4, payload="zfy_info")}, "cannot carry read_battery"),
    ({"read_battery": ScsiFunction("FD 81 00 00 00 08 {len}", "sideways", 4, payload="i32le")}, "dir 'sideways'"),
    ({"set_msdc": ScsiFunction("FB 82 00 00 00 06", "none", before="nothing")}, "before 'nothing'"),
    ({"format_card": ScsiFunction("FB 82 00 00 00 09", "none")}, "unknown function"),
    ({"read_battery": ScsiFunction("FD 81 00 00 00 08 {len}", "none", 4, payload="i32le")}, "dir none takes length 0"),
])
def test_bad_tables_are_refused_naming_the_function(change, msg):
    with pytest.raises(ValueError, match=msg):
        VendorProfile(**{**_fields(JIELI_DV16), "functions": {**JIELI_DV16.functions, **change}})


def test_94_byte_zfy_layout():
    info = ZfyInfo("1234567", "000123", "张三", "330100000001", "杭州市城市管理局")
    raw = info.encode("94")
    assert len(raw) == 94 and raw[7] == 0 and raw[8:14] == b"000123" and raw[15:19] == "张三".encode("gbk")
    assert ZfyInfo.decode(raw, "94") == info
    with pytest.raises(ValueError, match="at most 7"):
        ZfyInfo("12345678", "1", "", "", "").encode("94")  # 8 bytes fit the 89 form, not the 94 one


# --- the seam ------------------------------------------------------------------------------------------
def test_sg_io_hdr_is_the_kernel_layout():
    import ctypes

    assert ctypes.sizeof(SgIoHdr) == 88  # struct sg_io_hdr on 64-bit Linux
    assert SgIoHdr.dxferp.offset == 16 and SgIoHdr.timeout.offset == 40 and SgIoHdr.status.offset == 64
    assert SgIoHdr.resid.offset == 72 and SgIoHdr.info.offset == 80


def test_sg_device_on_a_missing_node_and_on_a_file(tmp_path):
    with pytest.raises(RecorderGone, match="recorder device not found"):
        SgDevice(str(tmp_path / "sg9"))
    f = tmp_path / "not-sg"
    f.write_bytes(b"x" * 64)
    dev = SgDevice(str(f))
    try:
        with pytest.raises(RecorderError, match="is not a SCSI generic device"):
            dev.execute(bytes(16), Direction.IN, b"", 4)
        with pytest.raises(OSError) as e:  # the seam itself: the kernel's answer, unchanged
            sg_io(dev.fd, bytes(16), Direction.NONE)
        assert e.value.errno in (errno.ENOTTY, errno.EINVAL)
    finally:
        dev.close()
    with pytest.raises(RecorderError, match="closed"):
        dev.execute(bytes(16), Direction.NONE)


# --- tools/recorder_probe.py ----------------------------------------------------------------------------
def test_probe_reads_only(sim_factory):
    from tools.recorder_probe import probe

    sim, _ = sim_factory("serial", password=None, resolution=(1280, 720))
    out = probe(sim.sg_device(), [JIELI_DV16], "000000")
    assert out["inquiry"] == {"vendor": "DV16", "product": "DEVICE V1.00", "revision": "1.00"}
    assert out["table"] == "jieli-dv16" and out["password"] == "accepted"
    r = out["results"]
    assert r["get_id_code"] == "JL0001" and r["get_zfy_info"]["officer_number"] == "000123"
    assert r["read_battery"] == {"level": 76, "charging": None} and r["read_resolution"] == {"width": 1280, "height": 720}
    assert "set_msdc" not in r and not sim.msdc and sim.writes == []
    bad = probe(sim.sg_device(), [JIELI_DV16], "999999")
    assert "wrong admin password" in bad["password"] and "wrong admin password" in bad["results"]["get_zfy_info"]["error"]
    other = VendorProfile(**{**_fields(JIELI_DV16), "name": "acme", "inquiry_vendor": "ACME"})
    assert "no vendor SCSI table matches" in probe(sim.sg_device(), [other], "000000")["error"]


def test_probe_cli_refuses_what_is_not_an_sg_node(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "disk.img"
    f.write_bytes(bytes(512))
    for node, msg in ((f, "is not a SCSI generic device"), (tmp_path / "sg7", "recorder device not found")):
        p = subprocess.run([sys.executable, "-m", "tools.recorder_probe", str(node)], capture_output=True, text=True,
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), timeout=60)
        assert p.returncode == 1 and msg in p.stderr and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
