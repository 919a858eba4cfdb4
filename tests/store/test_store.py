"""Durable store: crash safety under kill -9, disk reserve, retention, audit log integrity."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from agent import config as config_mod
from agent.common.errors import DiskReserveError, EdgeError, VerifyError
from agent.evidence import keys
from agent.evidence.verify import verify_chain, verify_item
from agent.store.ingest import ingest
from agent.store.store import Store
from tests.support.spine import EDGE, META, ingest_args, make_config, make_store, run_cli


def _big(path: Path, mib: int) -> Path:
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(os.urandom(1 << 20))
    return path


def check_consistent(cfg_path: Path) -> Store:
    """The ledger and the spool agree, and every sealed item verifies in one unbroken chain."""
    store = Store(config_mod.load(cfg_path))
    rows = store.items()
    for r in rows:
        p = Path(r["path"])
        if r["state"] in ("sealed", "uploading", "archived"):
            verify_item(p, store.keyring())
        elif r["state"] in ("discarded", "purged"):
            assert not p.exists(), f"{r['id']} is {r['state']} but {p} exists"
        else:
            pytest.fail(f"{r['id']} left in state {r['state']} after recovery")
    on_disk = {d.name for d in store.items_dir.iterdir()} | {d.name for d in store.incoming.iterdir()}
    assert on_disk <= {r["id"] for r in rows}, "a directory the ledger does not know"
    sealed = [r for r in rows if r["state"] == "sealed"]
    if sealed:
        rep = verify_chain(store.items_dir, store.keyring())
        assert rep.devices["dock-01"]["head_seq"] == store.head()[0] == len(sealed)
    store.audit.verify()
    return store


@pytest.fixture
def cfg(tmp_path):
    path = make_config(tmp_path)
    assert run_cli(path, "init").returncode == 0
    return path


@pytest.mark.parametrize("point,expect", [
    ("copy:8mib", "discarded"), ("seal:after-sig", "discarded"), ("seal:after-manifest", "sealed"),
    ("seal:after-rename", "sealed"), ("seal:after-ledger", "sealed"),
])
def test_kill9_at_each_step_then_recover(cfg, tmp_path, point, expect):
    src = _big(tmp_path / "clip.mp4", 12)
    run_cli(cfg, *ingest_args(_big(tmp_path / "first.mp4", 1)), check=True)
    p = run_cli(cfg, *ingest_args(src), env={"EDGE_AGENT_CRASH_AT": point})
    assert p.returncode == -signal.SIGKILL
    rec = run_cli(cfg, "recover", "--json")
    assert rec.returncode == 0, rec.stderr
    store = check_consistent(cfg)
    states = [r["state"] for r in store.items()]
    assert states == ["sealed", expect]
    if expect == "discarded":
        assert any(e["action"] in ("recover",) for e in store.audit.entries())
    # the chain goes on after recovery
    run_cli(cfg, *ingest_args(_big(tmp_path / "after.mp4", 1)), check=True)
    check_consistent(cfg)


def test_kill9_at_random_points(cfg, tmp_path):
    rng = random.Random(7)
    src = _big(tmp_path / "clip.mp4", 40)
    for trial in range(4):
        proc = subprocess.Popen([EDGE, "--config", str(cfg), *ingest_args(src, case=f"案-{trial}")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert run_cli(cfg, "recover").returncode == 0
        check_consistent(cfg)


def test_reserve_refuses_new_work_and_keeps_evidence(tmp_path):
    store = make_store(tmp_path)
    src = tmp_path / "a.mp4"
    src.write_bytes(b"a" * 1000)
    ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    store.reserve = store.free() + (1 << 30)
    src2 = tmp_path / "b.mp4"
    src2.write_bytes(b"b" * 1000)
    with pytest.raises(DiskReserveError, match="磁盘空间不足 / disk reserve reached"):
        ingest(store, [src2], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    assert store.disk_low and store.status()["disk"]["low"]
    assert [r["state"] for r in store.items()] == ["sealed"]  # nothing unarchived was deleted


def test_full_disk_mid_copy_loses_nothing(tmp_path):
    """A real small file system (tmpfs) fills up during the copy: clear error, partial discarded,
    the source untouched, earlier evidence intact."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount tmpfs (not root)")
    try:
        cfgp = make_config(tmp_path, storage__data_dir=str(mnt / "data"), storage__reserve_mb=0)
        store = Store(config_mod.load(cfgp))
        store._key = keys.generate(store.key_path, store.pub_path)
        small = tmp_path / "s.mp4"
        small.write_bytes(b"s" * 100_000)
        ingest(store, [small], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
        big = _big(tmp_path / "big.mp4", 8)
        digest = big.read_bytes()
        with pytest.raises(DiskReserveError, match="disk reserve reached"):  # refused before copying
            ingest(store, [big], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
        mid = _big(tmp_path / "mid.mp4", 3)
        mid_bytes = mid.read_bytes()

        def fill_disk(_n, done=[]):
            if not done:  # another writer fills the disk while we copy
                done.append(1)
                with open(mnt / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                    except OSError:
                        pass
        with pytest.raises(EdgeError, match="磁盘已满 / disk full"):
            ingest(store, [mid], dict(META, capture_start="2026-11-27T09:00:00+08:00"), progress=fill_disk)
        assert big.read_bytes() == digest and mid.read_bytes() == mid_bytes
        states = [r["state"] for r in store.items()]
        assert states == ["sealed", "discarded"]
        assert not any(store.incoming.iterdir())
        verify_item(store.items_dir / store.items()[0]["id"], store.keyring())
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_file_changing_while_read_is_refused(tmp_path):
    store = make_store(tmp_path)
    src = _big(tmp_path / "grow.mp4", 3)
    calls = []

    def grow(n):
        if not calls:
            with open(src, "ab") as f:
                f.write(b"more")
        calls.append(n)

    with pytest.raises(EdgeError, match="changed while it was read"):
        ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"), progress=grow)
    assert [r["state"] for r in store.items()] == ["discarded"]


def test_unreadable_file_and_directory_refused(cfg, tmp_path):
    f = tmp_path / "secret.mp4"
    f.write_bytes(b"x")
    f.chmod(0)
    p = run_cli(cfg, *ingest_args(f), env={})
    if os.geteuid() != 0:
        assert p.returncode == 1 and "permission denied" in p.stderr
    d = run_cli(cfg, *ingest_args(tmp_path))
    assert d.returncode == 1 and "is a directory" in d.stderr
    missing = run_cli(cfg, *ingest_args(tmp_path / "nope.mp4"))
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_duplicate_ingest_reports_existing_item(cfg, tmp_path):
    src = _big(tmp_path / "c.mp4", 1)
    first = run_cli(cfg, *ingest_args(src), check=True).stdout.strip()
    again = run_cli(cfg, *ingest_args(src))
    assert again.returncode == 1 and first in again.stderr
    other_case = run_cli(cfg, *ingest_args(src, case="另案-2"))
    assert other_case.returncode == 0


def test_retention_purges_only_archived_items(tmp_path):
    store = make_store(tmp_path, storage__retention_days=1)
    ids = []
    for i in range(3):
        src = tmp_path / f"{i}.mp4"
        src.write_bytes(bytes([i]) * 1000)
        ids.append(ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))["item_id"])
    store.mark_archived(ids[0], {"archive": "test"})
    store.mark_archived(ids[1], {"archive": "test"})
    assert store.purge_expired() == []  # within retention
    assert store.purge_expired(at=time.time() + 2 * 86400) == ids[:2]
    states = {r["id"]: r["state"] for r in store.items()}
    assert states == {ids[0]: "purged", ids[1]: "purged", ids[2]: "sealed"}
    assert (store.items_dir / ids[2]).is_dir() and not (store.items_dir / ids[0]).exists()


def test_audit_log_detects_edit_and_deletion(cfg, tmp_path):
    run_cli(cfg, *ingest_args(_big(tmp_path / "a.mp4", 1)), check=True)
    assert run_cli(cfg, "audit", "verify").returncode == 0
    db = tmp_path / "data" / "ledger.db"
    con = sqlite3.connect(db)
    con.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 2")
    con.commit()
    p = run_cli(cfg, "audit", "verify")
    assert p.returncode == 1 and "entry 2 was edited" in p.stderr
    # restore by recomputing would need the key for the head; instead delete the newest entry
    con.execute("UPDATE audit SET actor = (SELECT actor FROM audit WHERE seq = 1) WHERE seq = 2")
    con.commit()
    last = con.execute("SELECT max(seq) FROM audit").fetchone()[0]
    con.execute("DELETE FROM audit WHERE seq = ?", [last])
    con.commit()
    p = run_cli(cfg, "audit", "verify")
    assert p.returncode == 1 and ("signed head" in p.stderr or "edited" in p.stderr)
    csv_out = run_cli(cfg, "audit", "export", "--csv").stdout
    assert csv_out.startswith("seq,ts,actor,action")


def test_status_and_items_json(cfg, tmp_path):
    run_cli(cfg, *ingest_args(_big(tmp_path / "a.mp4", 2)), check=True)
    st = json.loads(run_cli(cfg, "status", "--json", check=True).stdout)
    assert st["items_by_state"] == {"sealed": 1} and st["bytes_buffered"] == 2 << 20
    assert st["oldest_unarchived_age_s"] is not None and st["disk"]["free_bytes"] > 0
    # what a technician reads: every line in both languages
    text = run_cli(cfg, "status", check=True).stdout.splitlines()
    assert [line.split(":")[0] for line in text] == ["设备 device", "资料 items", "未归档 unarchived",
                                                     "待补录 pending annotation", "证据链 chain", "磁盘 disk"], text
    assert text[1] == "资料 items: sealed 1" and text[2].startswith("未归档 unarchived: 1 items, 2097152 bytes")
    assert run_cli(cfg, "recover", check=True).stdout.strip() == "恢复操作 0 项 / 0 recovery action(s)"
    items = json.loads(run_cli(cfg, "items", "list", "--json", check=True).stdout)
    show = json.loads(run_cli(cfg, "items", "show", items[0]["id"], "--json", check=True).stdout)
    assert show["effective_metadata"]["collector"] == {"name": "张三", "id": "33010001"}
    audit = json.loads(run_cli(cfg, "audit", "list", "--json", "--item", items[0]["id"], check=True).stdout)
    assert [a["action"] for a in audit] == ["ingest", "seal", "view"]
    out = tmp_path / "export"
    exp = run_cli(cfg, "items", "export", items[0]["id"], str(out), check=True)
    assert run_cli(cfg, "verify", exp.stdout.strip()).returncode == 0
    with pytest.raises(VerifyError):
        verify_item(tmp_path, keys.KeyRing())
