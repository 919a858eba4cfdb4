"""Small pieces of the docking station: config checks, the erase rule, the fair pool, the ratio."""

from __future__ import annotations

import datetime as _dt
import json
import threading
import time

import pytest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config, loads, render_default
from agent.dock.copying import source_key
from agent.dock.erasing import erase_decision
from agent.dock.registry import Registry
from agent.config.dock import BaySpec, bay_name_for, parse_bays
from agent.dock.pool import FairPool
from agent.common.errors import ConfigError
from agent.evidence import keys
from agent.wire.receipts import ArchiveSigner, ArchiveTrust
from drivers.recorder import FileRecord, FileType, Mark

TZ = _dt.timezone(_dt.timedelta(hours=8))


def _ring(*private) -> keys.KeyRing:
    ring = keys.KeyRing()
    for k in private:
        ring.add(k.public_key())
    return ring


def rec(**kw) -> FileRecord:
    base = dict(name="1234567_20261127090000_0001.MP4", size=1000, capture_time=_dt.datetime(2026, 11, 27, 9, tzinfo=TZ),
                duration=10, type=FileType.VIDEO)
    base.update(kw)
    return FileRecord(**base)


ARCHIVE = Ed25519PrivateKey.generate()  # the archive's key, pinned by this device (TRUST)
TRUST = ArchiveTrust(ring=_ring(ARCHIVE))
VERIFY = lambda r: TRUST.verify(r, "receipt")  # noqa: E731 - what the station's ReceiptPort does


def signed(body: dict, key=ARCHIVE) -> dict:
    return ArchiveSigner(key, "archive-1").receipt(body, nonce="cd" * 16)


def row(state="archived", content_hash="abc", size=1000, receipt=None, archived_at="2026-11-27T10:00:00+08:00",
        manifest_hash="m1"):
    """A ledger row as the store keeps it; the receipt is what the archive's carries (manifest_hash),
    signed by the pinned archive key (a dict given is signed as it is; text is kept as it is)."""
    r = {"manifest_hash": "m1", "item_hash": "i1"} if receipt is None else receipt
    return {"state": state, "content_hash": content_hash, "size": size, "manifest_hash": manifest_hash,
            "receipt": json.dumps(signed(r) if isinstance(r, dict) and r else r),
            "archived_at": archived_at if state in ("archived", "purged") else None}


def copy(**kw) -> dict:
    """The bay's copy record (audit ``copy``) of the file ``rec()`` sealed in manifest m1."""
    c = {"file": "1234567_20261127090000_0001.MP4", "size": 1000, "hash": "abc", "alg": "sha256",
         "manifest_hash": "m1", "manifest_file": {"hash": "abc", "size": 1000}}
    c.update(kw)
    return c


SEALED = {"manifest_hash": "m1", "file": {"hash": "abc", "size": 1000}}


# --- the erase rule -----------------------------------------------------------------------------
def test_erase_after_archive_when_receipt_manifest_and_copy_agree():
    for sealed in (SEALED, None):  # the sealed manifest still in the spool, or purged
        d = erase_decision("after-archive", rec(), row(), copies=[copy()], sealed=sealed, verify_receipt=VERIFY)
        assert d.erase and d.final and "same hash and size" in d.why
        assert erase_decision("after-archive", rec(), row(state="purged"), copies=[copy()], sealed=sealed,
                              verify_receipt=VERIFY).erase
    for state in ("receiving", "sealed", "uploading", "rejected"):
        d = erase_decision("after-archive", rec(), row(state=state), copies=[copy()], sealed=SEALED, verify_receipt=VERIFY)
        assert not d.erase and not d.final and "waiting" in d.why
    assert not erase_decision("after-archive", rec(), None, copies=[copy()], verify_receipt=VERIFY).erase
    assert not erase_decision("after-archive", rec(), row(state="purged", archived_at=None), copies=[copy()],
                              verify_receipt=VERIFY).erase


@pytest.mark.parametrize("case, needle", [
    # the ledger says archived, but the check has nothing to stand on: never erased
    (dict(receipt={}), "names no manifest hash"),
    (dict(receipt={"status": "stored"}), "names no manifest hash"),
    (dict(receipt="not json"), "names no manifest hash"),
    (dict(copies=[]), "no record of this file's copy"),
    # the receipt is about another manifest (forged, or another item's)
    (dict(receipt={"manifest_hash": "m2", "item_hash": "i1"}), "receipt names manifest m2"),
    (dict(row_mhash="m2"), "(the ledger)"),
    (dict(copies=[copy(manifest_hash="m2")]), "(the copy record)"),
    (dict(sealed={"manifest_hash": "m2", "file": {"hash": "abc", "size": 1000}}), "(the spool)"),
    # the hash computed while copying differs from the sealed manifest's entry
    (dict(copies=[copy(hash="zzz")]), "differs from the sealed manifest's entry"),
    (dict(copies=[copy(manifest_file={"hash": "zzz", "size": 1000})], sealed=None), "differs from the sealed manifest"),
    (dict(copies=[copy(manifest_file={"hash": "zzz", "size": 1000})]), "differs from the sealed manifest"),
    (dict(sealed={"manifest_hash": "m1", "file": {"hash": "zzz", "size": 1000}}), "differs from the sealed manifest"),
    (dict(sealed={"manifest_hash": "m1", "file": None}), "differs from the sealed manifest"),
    (dict(copies=[copy(), copy(hash="zzz")]), "differs from the sealed manifest"),
    # the copy was of another file or size than the recorder now lists
    (dict(copies=[copy(size=999, manifest_file={"hash": "abc", "size": 999})]), "the copy record is of"),
])
def test_erase_after_archive_withheld_for_good_when_a_record_disagrees(case, needle):
    r = row(receipt=case["receipt"], manifest_hash=case.get("row_mhash", "m1")) if "receipt" in case \
        else row(manifest_hash=case.get("row_mhash", "m1"))
    if case.get("receipt") == "not json":
        r["receipt"] = "{not json"
    d = erase_decision("after-archive", rec(), r, copies=case.get("copies", [copy()]),
                       sealed=case.get("sealed", SEALED), verify_receipt=VERIFY)
    assert not d.erase and d.final and needle in d.why, d
    assert " / " in d.why  # bilingual: 中文 / English


def test_erase_after_archive_needs_the_receipt_to_verify_again_against_the_pinned_keys():
    """Defence in depth: the receipt kept in the ledger is checked again at the erase, against
    the archive keys pinned now. Altered after the uplink accepted it, signed by a key this device
    does not pin or revoked since, or with no keys handed to the dock: the file stays."""
    def decide(receipt_json: str, verify=VERIFY):
        r = dict(row(), receipt=receipt_json)
        return erase_decision("after-archive", rec(), r, copies=[copy()], sealed=SEALED, verify_receipt=verify)

    genuine = signed({"manifest_hash": "m1", "item_hash": "i1", "files": [{"name": "a", "size": 1000, "hash": "abc"}]})
    assert decide(json.dumps(genuine)).erase
    other = Ed25519PrivateKey.generate()
    revoked = ArchiveTrust(ring=_ring(ARCHIVE), revoked={keys.key_id(ARCHIVE.public_key())})
    for receipt, verify, needle in (
            (dict(genuine, item_hash="i2"), VERIFY, "signature does not verify"),                # altered
            (dict(genuine, files=[{"name": "a", "size": 1, "hash": "x"}]), VERIFY, "signature does not verify"),
            ({k: v for k, v in genuine.items() if k != "sig"}, VERIFY, "unsigned"),
            (signed({"manifest_hash": "m1", "item_hash": "i1"}, other), VERIFY, "not a pinned archive key"),
            (genuine, lambda r: revoked.verify(r, "receipt"), "revoked on this device"),
    ):
        d = decide(json.dumps(receipt), verify)
        assert not d.erase and d.final and "归档回执签名无效 / the archive's receipt kept in the ledger does not " \
            "verify against the archive keys pinned now" in d.why and needle in d.why, d
    d = decide(json.dumps(genuine), None)
    assert not d.erase and d.final and "无法复核归档回执签名 / no archive keys" in d.why


def test_erase_after_local_verify_needs_an_equal_second_read():
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash="abc").erase is True
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash=None).erase is False
    assert erase_decision("after-local-verify", rec(), row(state="sealed"), reread_hash="zzz").erase is False
    assert erase_decision("after-local-verify", rec(), row(state="receiving"), reread_hash="abc").erase is False
    assert erase_decision("after-local-verify", rec(size=999), row(state="sealed"), reread_hash="abc").erase is False


def test_never_erase_protected_conflicted_or_policy_never():
    for policy in ("after-archive", "after-local-verify", "never"):
        d = erase_decision(policy, rec(mark=Mark.IMPORTANT), row(), copies=[copy()], sealed=SEALED, reread_hash="abc",
                           verify_receipt=VERIFY)
        assert not d.erase and d.final and "important" in d.why
        assert not erase_decision(policy, rec(locked=True), row(), copies=[copy()], reread_hash="abc").erase
        assert not erase_decision(policy, rec(), row(), copies=[copy()], reread_hash="abc", conflict=True).erase
    assert not erase_decision("never", rec(), row(), copies=[copy()], reread_hash="abc").erase


def test_station_alarm_titles_are_the_wire_vocabulary():
    """The dock keeps its alarm titles for bays.json; they are the same words as the wire's codes."""
    from agent.dock.station import ALARMS
    from agent.wire.health import CODES

    for code, (zh, en) in ALARMS.items():
        assert (CODES[code].zh, CODES[code].en) == (zh, en), code


def test_source_key_changes_with_size_and_time():
    a = source_key("1234567", rec())
    assert a == source_key("1234567", rec())
    assert a != source_key("1234567", rec(size=1001))
    assert a != source_key("1234567", rec(capture_time=_dt.datetime(2026, 11, 27, 9, 0, 1, tzinfo=TZ)))
    assert a != source_key("7654321", rec())


# --- config -------------------------------------------------------------------------------------
def test_dock_defaults_and_render_round_trip():
    cfg = Config.defaults()
    assert cfg.dock.erase_policy == "after-archive" and cfg.dock.clock_threshold_s == 2 and cfg.dock.min_ratio_pct == 20
    values = {"dock": {"bays": ["/dev/ttyACM*", {"name": "bay-9", "port": "/dev/ttyUSB9"},
                                {"name": "usb-1", "mount": "/media/rec1"}],
                       "mass_storage_map": [{"label": "rec1", "serial": "7000001", "officer_number": "000555"}]}}
    cfg = loads(render_default(values))
    assert cfg.dock.bays[1] == BaySpec(name="bay-9", port="/dev/ttyUSB9") and cfg.dock.bays[2].mass_storage_only
    assert cfg.as_dict()["dock"]["bays"] == values["dock"]["bays"]
    assert "admin_password" in cfg.as_dict()["dock"] and cfg.as_dict()["dock"]["admin_password"] == "********"


@pytest.mark.parametrize("text,needle", [
    ('[dock]\nbays = ["ttyACM*"]', "dock.bays"),
    ('[dock]\nbays = [{name = "a b", port = "/dev/x"}]', "name"),
    ('[dock]\nbays = [{port = "/dev/x", mount = "/m"}]', "exactly one"),
    ('[dock]\nbays = [{name = "b1", port = "/dev/tty*"}]', "not the glob"),
    ('[dock]\nbays = [{name = "b1", port = "/dev/a"}, {name = "b1", port = "/dev/b"}]', "used twice"),
    ('[dock]\nbays = [{name = "b1", prot = "/dev/a"}]', "unknown key"),
    ('[dock]\nbays = "/dev/ttyACM*"', "expected a list"),
    ('[dock]\nerase_policy = "sometimes"', "not one of"),
    ('[dock]\nverify_policy = "maybe"', "not one of"),
    ('[dock]\nadmin_password = "1234567"', "1 to 6"),
    ('[dock]\nadmin_password = "密码"', "1 to 6"),
    ('[dock]\npoll_ms = 5000', "maximum"),
    ('[dock]\ncopy_workers = 0', "minimum"),
    ('[dock]\nmin_ratio_pct = 0', "minimum"),
    ('[dock]\nmass_storage_map = [{label = "x"}]', "serial is required"),
    ('[dock]\nmass_storage_map = [{label = "x", serial = "1", officer_number = "2", colour = "red"}]', "unknown key"),
    ('[dock]\nbogus = 1', "unknown key"),
])
def test_bad_dock_config_names_the_key(text, needle):
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert needle in str(e.value) and "dock." in str(e.value)


def test_bay_names():
    specs = parse_bays(["/dev/ttyACM*", {"name": "front", "port": "/dev/ttyUSB0"}, "/dev/serial/by-id/recorder"])
    assert bay_name_for(specs[0], "/dev/ttyACM12") == "bay-12"
    assert bay_name_for(specs[1], "/dev/ttyUSB0") == "front"
    assert bay_name_for(specs[2], "/dev/serial/by-id/recorder") == "bay-recorder"


# --- fair pool ----------------------------------------------------------------------------------
def test_fair_pool_bounds_and_hands_over():
    pool = FairPool(2)
    inside = []
    peak = [0]
    lock = threading.Lock()

    def worker(i):
        for _ in range(5):
            with pool.slot():
                for _part in range(2):
                    with lock:
                        inside.append(i)
                        peak[0] = max(peak[0], len(inside))
                    time.sleep(0.005)
                    with lock:
                        inside.remove(i)
                    pool.yield_slot()  # holds no slot while waiting for it again

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] <= 2 and pool.status()["busy"] == 0 and pool.status()["peak"] == 2


def test_fair_pool_stop_interrupts_waiters():
    stop = threading.Event()
    pool = FairPool(1, stop)
    pool.acquire()
    err = []

    def waiter():
        try:
            pool.acquire()
        except InterruptedError as exc:
            err.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 5
    while pool.status()["waiting"] != 1:             # the waiter is blocked in acquire()
        assert time.monotonic() < deadline, pool.status()
        time.sleep(0.005)
    stop.set()
    t.join(3)
    assert err and pool.status()["waiting"] == 0


# --- registry and ratio -------------------------------------------------------------------------
def test_ratio_per_unit_usage_window_and_conflicts(tmp_path):
    reg = Registry(tmp_path)
    csv = tmp_path / "o.csv"
    csv.write_text("officer_number,name,unit,unit_name\n" + "".join(f"{i:06d},P{i},U1,一所\n" for i in range(10))
                   + "".join(f"{i:06d},Q{i},U2,二所\n" for i in range(100, 104)), encoding="utf-8-sig")
    assert reg.import_roster(csv) == 14
    now = time.time()
    reg.seen("A1", "000001", "P1", "U1", "一所", "bay-1", at=now - 40 * 86400)  # docked 40 days ago
    reg.seen("A2", "000002", "P2", "U1", "一所", "bay-2", at=now)
    reg.seen("B1", "000100", "Q100", "U2", "二所", "bay-3", at=now)
    reg.flag_conflict("B1", "bay-3 and bay-4")
    rows = {r.unit_code: r for r in reg.ratio(min_ratio_pct=20, usage_days=30, at=now)}
    assert (rows["U1"].officers, rows["U1"].recorders_in_service, rows["U1"].ratio_pct, rows["U1"].meets_minimum) == (10, 2, 20, True)
    assert (rows["U1"].recorders_used, rows["U1"].usage_pct) == (1, 50)
    # a recorder whose serial two recorders claim does not count until the conflict is cleared
    assert (rows["U2"].officers, rows["U2"].ratio_pct, rows["U2"].meets_minimum, rows["U2"].conflicts) == (4, 0, False, 1)
    assert [(x["serial"], x["reason"]) for x in rows["U2"].excluded] == [("B1", "conflict")]
    reg.clear_conflict("B1")
    rows = {r.unit_code: r for r in reg.ratio(min_ratio_pct=20, usage_days=30, at=now)}
    assert (rows["U2"].ratio_pct, rows["U2"].meets_minimum, rows["U2"].excluded) == (25, True, [])
    reg.set_in_service("A2", False)
    rows = {r.unit_code: r for r in reg.ratio(min_ratio_pct=20, usage_days=30, at=now)}
    assert rows["U1"].recorders_in_service == 1 and rows["U1"].meets_minimum is False
    assert rows["U1"].excluded == [{"serial": "A2", "reason": "not_in_service", "text": "已停用 / taken out of service"}]
    # re-import replaces the roster
    csv.write_text("警号,姓名,单位\n000001,P1,U1\n", encoding="utf-8")
    assert reg.import_roster(csv) == 1 and len(reg.officers()) == 1
