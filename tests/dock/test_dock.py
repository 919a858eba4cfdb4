"""Docking station: real simulator on a pty, real files, real store; each bad input of issue 4."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import Config
from agent.evidence import keys
from agent.evidence.verify import verify_chain, verify_item
from agent.runtime import Agent
from agent.store.store import Store
from tools.media import make_big_file, make_recorder_media
from tools.recorder_sim import RecorderSim

SERIAL = "1234567"


# --- helpers (imported by the other tests/dock/test_*.py) ----------------------------------------
@pytest.fixture(scope="session")
def media_master(tmp_path_factory) -> Path:
    """One recorder's day of real media (3 clips, a WAV, a JPG), made once per session."""
    d = tmp_path_factory.mktemp("dock-media")
    make_recorder_media(d, n_files=3, seconds=1, serial=SERIAL, size="320x240", important=(1,))
    return d


@pytest.fixture
def media(media_master, tmp_path) -> Path:
    """A private copy (the simulator erases files from its media directory)."""
    d = tmp_path / "media"
    shutil.copytree(media_master, d)
    return d


def make_cfg(data: Path, ports: Path, **dock) -> Config:
    values = {"storage.data_dir": str(data), "storage.reserve_mb": 0, "device.id": "dock-0001",
              "device.location": "杭州市西湖区文三路100号 采集站", "dock.bays": [str(ports / "ttyREC*")],
              "dock.poll_ms": 100, "dock.serial_timeout_ms": 300}
    for k, v in dock.items():
        values[k if "." in k else f"dock.{k}"] = v
    return Config.defaults(**values)


def new_store(cfg: Config) -> Store:
    store = Store(cfg)
    keys.generate(store.key_path, store.pub_path)
    return store


class Station:
    """An Agent with the dock and its ports (the health component, not started: no rounds), and no
    uplink unless given: the store's states are driven by the test."""

    def __init__(self, cfg: Config, uplink=None):
        from agent.dock import make_component
        from agent.health import make_component as make_health

        from agent.uplink.trust import ReceiptCheck

        self.cfg = cfg
        self.agent = Agent(cfg, new_store(cfg) if not (cfg.data_dir / "keys" / "device.key").exists() else None)
        self.agent.uplink = uplink
        self.store = self.agent.store
        pin = cfg.data_dir / "keys" / "archive" / f"archive-{keys.key_id(ARCHIVE.public_key())}.pub"
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.write_bytes(keys.public_pem(ARCHIVE.public_key()))  # what `uplink trust-archive` pins
        self.health = make_health(self.agent)
        self.dock = self.agent.add(make_component(self.agent, alarms=self.health, report=self.health,
                                                  receipts=ReceiptCheck(cfg)))
        self.agent.start()

    def bay(self, name: str) -> dict:
        return next((b for b in self.dock.status()["bays"] if b["name"] == name), {})

    def wait(self, name: str, states: tuple[str, ...], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        b = {}
        while time.monotonic() < deadline:
            b = self.bay(name)
            if b.get("state") in states and not self._busy(name):
                return b
            time.sleep(0.05)
        raise AssertionError(f"bay {name} not in {states} after {timeout} s: {b}")

    def wait_state(self, name: str, states: tuple[str, ...], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        b = {}
        while time.monotonic() < deadline:
            b = self.bay(name)
            if b.get("state") in states:
                return b
            time.sleep(0.02)
        raise AssertionError(f"bay {name} not in {states} after {timeout} s: {b}")

    def wait_left(self, name: str, timeout: float = 10.0) -> dict:
        """Until the station has seen the recorder leave the bay (not docked, its worker ended): the
        next recorder at the same port is then a new docking."""
        deadline = time.monotonic() + timeout
        b = self.bay(name)
        while b.get("docked") is not False or self.dock.bays[name].busy:
            assert time.monotonic() < deadline, f"bay {name}: the recorder's leaving not seen in {timeout} s: {b}"
            time.sleep(0.02)
            b = self.bay(name)
        return b

    def _busy(self, name: str) -> bool:
        bay = self.dock.bays.get(name)
        return bool(bay and bay.busy and bay.st.state not in ("uploading",))

    def stop(self) -> None:
        self.agent.stop()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sealed_items(store: Store) -> list[dict]:
    return [r for r in store.items() if r["state"] in ("sealed", "uploading", "archived", "purged")]


#: the archive's key in these tests: the test Station pins it, receipt_for signs with it
ARCHIVE = Ed25519PrivateKey.generate()


def receipt_for(row: dict, **changes) -> dict:
    """The archive's receipt (agent/archive/storage.py ``_receipt``, signed by the archive key the
    station pins) for the item as sealed: what the uplink stores with ``Store.mark_archived`` when
    the archive answers stored."""
    from agent.wire.receipts import ArchiveSigner

    r = {"device": "dock-0001", "item": row["id"], "seq": row["device_seq"], "manifest_hash": row["manifest_hash"],
         "item_hash": row["item_hash"], "annotations": 0, "stored_at": "2026-11-27T18:00:00+08:00"}
    r.update(changes)
    return ArchiveSigner(ARCHIVE, "archive-test").receipt(r, nonce="ab" * 16)


def copy_records(store: Store) -> dict[str, dict]:
    """item id -> the bay's copy record (audit ``copy``)."""
    return {e["item_id"]: json.loads(e["detail"]) for e in store.audit.entries(action="copy")}


@pytest.fixture
def env(tmp_path):
    """(data dir, ports dir, list of sims to stop, stations to stop)."""
    made: dict[str, list] = {"sims": [], "stations": []}
    ports = tmp_path / "ports"
    ports.mkdir()
    yield tmp_path / "data", ports, made
    for st in made["stations"]:
        st.stop()
    for sim in made["sims"]:
        sim.stop()


def start_sim(made, media: Path, link: Path, **kw) -> RecorderSim:
    kw.setdefault("probe", False)
    sim = RecorderSim(media, link, **kw).start()
    made["sims"].append(sim)
    return sim


def start_station(made, cfg, uplink=None) -> Station:
    st = Station(cfg, uplink)
    made["stations"].append(st)
    return st


# --- the normal path ---------------------------------------------------------------------------
def test_dock_copy_seal_metadata_and_erase_after_archive(env, media):
    data, ports, made = env
    originals = {p.name: sha(p) for p in media.iterdir()}
    (data / "dock").mkdir(parents=True)  # a link planted at the bay state's temporary name: never written through
    (data / "dock" / ".bays.json.tmp").symlink_to(data.parent / "outside.json")
    st = start_station(made, make_cfg(data, ports))
    t0 = time.monotonic()
    sim = start_sim(made, media, ports / "ttyREC3", clock_offset=30)
    st.wait_state("bay-3", ("identifying", "charging", "downloading", "uploading"), timeout=2.5)
    assert time.monotonic() - t0 < 2.5  # detected within 2 s (+ scheduling)
    b = st.wait_state("bay-3", ("uploading",))
    assert b["serial"] == SERIAL and b["officer_name"] == "张三" and b["file_count"] == 5
    assert b["clock_set"] is True and 29_000 <= b["clock_offset_ms"] <= 31_000
    assert abs(sim.now().timestamp() - time.time()) < 2.5  # the recorder clock was set

    items = sealed_items(st.store)
    assert len(items) == 5
    ring = st.store.keyring()
    for row in items:
        rep = verify_item(Path(row["path"]), ring)
        m = rep.manifest
        meta = m["metadata"]
        name = m["source"]["name"]
        assert m["files"][0]["hash"] == originals[name]
        assert meta["pending"] == ["case_number", "proof"] and meta["case_number"] is None and meta["proof"] is None
        assert meta["collector"] == {"name": "张三", "id": "000123"}
        assert meta["place"] == "杭州市西湖区文三路100号 采集站"
        assert 29_000 <= meta["clock_offset_ms"] <= 31_000 and 29_000 <= m["clock_offset_ms"] <= 31_000
        assert len(meta["file_number"]) == 64 and meta["recorder"]["serial"] == SERIAL
        assert m["source"]["serial"] == SERIAL and row["priority"] == 5
    verify_chain(st.store.items_dir, ring)
    # after-archive: nothing erased before the archive acknowledges (and below, in the audit
    # chain's order: each erase comes after its item's archive entry)
    assert sim.erased == [] and st.store.audit.entries(action="erase") == []
    # the bay's copy record of each file: the hash computed while copying, and the manifest sealed for it
    copies = copy_records(st.store)
    for row in items:
        c = copies[row["id"]]
        assert c["hash"] == originals[c["file"]] and c["size"] == (media / c["file"]).stat().st_size
        assert c["manifest_hash"] == row["manifest_hash"] and c["manifest_file"] == {"hash": c["hash"], "size": c["size"]}
    for row in items:
        st.store.mark_archived(row["id"], receipt_for(row))
    b = st.wait("bay-3", ("done",))
    important = [n for n in originals if "_IMP" in n]
    assert sorted(sim.erased) == sorted(set(originals) - set(important))
    assert b["erased"] == 4 and b["kept_protected"] == 1
    assert not (data.parent / "outside.json").exists() and not (data / "dock" / "bays.json").is_symlink()
    assert json.loads((data / "dock" / "bays.json").read_bytes())["bays"]
    erases = st.store.audit.entries(action="erase")
    assert len(erases) == 4 and all(json.loads(e["detail"])["result"] == "erased" for e in erases)
    archived_seq = {e["item_id"]: e["seq"] for e in st.store.audit.entries(action="archive")}
    assert all(e["seq"] > archived_seq[e["item_id"]] for e in erases), (archived_seq, erases)
    # state persisted for `dock status`
    saved = json.loads((data / "dock" / "bays.json").read_text())
    assert saved["bays"][0]["name"] == "bay-3" and saved["bays"][0]["state"] == "done"
    # undocked: idle
    sim.stop()
    st.wait_state("bay-3", ("idle",), timeout=3)
    assert st.dock.registry.recorders()[0]["serial"] == SERIAL


def test_erase_needs_the_receipt_the_sealed_manifest_and_the_copy_to_agree(env, media):
    """Issue 14: the ledger's state alone never frees a recorder. Four files, each archived as far
    as the ledger knows: only the one whose receipt verifies against the pinned archive key and
    names the manifest sealed for it, whose entry has the hash and size computed while copying, is
    erased (a receipt altered in the ledger after acceptance does not verify); each other one stays on the recorder
    with the reason in the bay's problems, the log and the audit chain."""
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1")
    st.wait_state("bay-1", ("uploading",))
    rows = {r["id"]: r for r in sealed_items(st.store)}
    by_file = {c["file"]: rows[item] for item, c in copy_records(st.store).items()}
    good, forged, bare, tampered = sorted(n for n in by_file if "_IMP" not in n)
    # the ledger holds a genuine receipt altered after it was signed, to name another manifest (someone
    # with the ledger file edited it; written whole here: an edit after the archived state could
    # race the bay's decision): its signature no longer verifies against the pinned archive key
    st.store.mark_archived(by_file[forged]["id"], dict(receipt_for(by_file[forged]), manifest_hash="ab" * 32))
    # archived in the ledger with no receipt at all: if the check ever stops applying, this is erased
    st.store.mark_archived(by_file[bare]["id"], {})
    # the manifest in the spool names another hash for the file than the copy computed
    mpath = Path(by_file[tampered]["path"]) / "manifest.json"
    doc = json.loads(mpath.read_bytes())
    doc["files"][0]["hash"] = "0" * 64
    mpath.write_bytes(json.dumps(doc).encode())
    st.store.mark_archived(by_file[tampered]["id"], receipt_for(by_file[tampered]))
    st.store.mark_archived(by_file[good]["id"], receipt_for(by_file[good]))
    b = st.wait("bay-1", ("done", "error"))
    assert sim.erased == [good] and b["erased"] == 1 and b["state"] == "error"
    assert {forged, bare, tampered} <= {f.name for f in sim.files}
    problems = " | ".join(b["problems"])
    assert f"{forged} kept on the recorder" in problems and "归档回执签名无效 / the archive's receipt kept in the ledger " \
        "does not verify against the archive keys pinned now: receipt: signature does not verify" in problems
    assert f"{bare} kept on the recorder" in problems and "names no manifest hash" in problems
    assert f"{tampered} kept on the recorder" in problems and "differs from the sealed manifest's entry" in problems
    erases = {json.loads(e["detail"])["file"]: json.loads(e["detail"]) for e in st.store.audit.entries(action="erase")}
    assert erases[good]["result"] == "erased"
    assert {erases[n]["result"] for n in (forged, bare, tampered)} == {"withheld"}
    assert "names no manifest hash" in erases[bare]["why"]


def test_erase_at_the_next_docking_after_the_local_copy_was_purged(env, media):
    """Taken away before the archive answered; archived and purged (retention) meanwhile: at the
    next docking the copy record stands for the sealed manifest no longer in the spool. One
    receipt altered in the ledger after it was accepted keeps its file on the recorder."""
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1")
    st.wait_state("bay-1", ("uploading",))
    sim.stop()
    st.wait_state("bay-1", ("idle",), timeout=5)
    for row in sealed_items(st.store):
        st.store.mark_archived(row["id"], receipt_for(row))
    assert len(st.store.purge_expired(at=time.time() + 10**9)) == 5
    assert not any(Path(r["path"]).exists() for r in sealed_items(st.store))
    # one receipt, accepted and in the ledger, altered there afterwards (someone with the ledger file
    # points it at another manifest, or puts in another item's): that file stays on the recorder
    files = {item: c["file"] for item, c in copy_records(st.store).items()}
    altered = next(r for r in sealed_items(st.store) if "_IMP" not in files[r["id"]])
    import sqlite3

    con = sqlite3.connect(str(data / "ledger.db"), timeout=30)
    with con:
        con.execute("UPDATE items SET receipt = ? WHERE id = ?",
                    [json.dumps(dict(json.loads(altered["receipt"]), item_hash="cd" * 32)), altered["id"]])
    con.close()
    sim = start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done", "error"))
    assert b["already"] == 5 and b["erased"] == 3 and len(sim.erased) == 3, b
    [problem] = b["problems"]
    assert "kept on the recorder" in problem and "归档回执签名无效 / the archive's receipt kept in the ledger does not " \
        "verify against the archive keys pinned now: receipt: signature does not verify" in problem


@pytest.mark.parametrize("policy,erased", [("after-local-verify", 4), ("never", 0)])
def test_erase_policies(env, media, policy, erased):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy=policy))
    sim = start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done",))
    assert len(sim.erased) == erased and b["erased"] == erased
    assert len(st.store.audit.entries(action="erase")) == erased
    for row in sealed_items(st.store):
        m = st.store.read_manifest(row["id"])
        if policy == "after-local-verify":
            assert m["metadata"]["verified"] == "reread"
    # every erased file is in the local spool, byte for byte, before it left the recorder
    assert len(sealed_items(st.store)) == 5


def test_garbage_on_the_line_still_docks(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    sim = start_sim(made, media, ports / "ttyREC2", garbage=True, corrupt_responses=2)
    b = st.wait("bay-2", ("done",))
    assert b["problems"] == [] and len(sealed_items(st.store)) == 5
    assert sim.requests  # it really went through the noisy line


def test_silent_recorder_is_an_error_and_other_bays_go_on(env, media, tmp_path):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    other = tmp_path / "media2"
    shutil.copytree(media, other)
    start_sim(made, media, ports / "ttyREC1", silent=True)
    start_sim(made, other, ports / "ttyREC2", serial="7654321")
    b2 = st.wait("bay-2", ("done",))
    b1 = st.wait("bay-1", ("error",), timeout=10)
    assert "无应答" in b1["reason"] and "does not answer" in b1["reason"]
    assert b2["sealed"] == 5
    assert any(a["code"] == "recorder_no_answer" for a in st.dock.status()["alarms"])


@pytest.mark.parametrize("fault, needle", [({"list_trailing": b"\x00\x07"}, "trailing bytes in file list page"),
                                           ({"list_short": True}, "file list record truncated")])
def test_malformed_file_list_is_an_error_nothing_copied_or_erased(env, media, fault, needle):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1", **fault)
    b = st.wait("bay-1", ("error",))
    assert needle in b["reason"] and "protocol error" in b["reason"]
    assert sealed_items(st.store) == [] and sim.erased == []
    assert any(a["code"] == "recorder_no_answer" for a in st.dock.status()["alarms"])


def test_wrong_admin_password(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1", wrong_password=True)
    b = st.wait("bay-1", ("error",))
    assert "管理员密码错误" in b["reason"] and "admin password" in b["reason"]
    assert sealed_items(st.store) == [] and sim.erased == [] and not sim.msdc
    assert any(a["code"] == "recorder_auth_failed" for a in st.dock.status()["alarms"])


@pytest.mark.parametrize("year", ["1970", "2099"])
def test_recorder_clock_far_off(env, media, year):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    sim = start_sim(made, media, ports / "ttyREC1", clock_fixed=year)
    b = st.wait("bay-1", ("error",))
    assert b["clock_set"] is True and abs(sim.now().timestamp() - time.time()) < 2.5
    assert "时钟严重偏差" in b["reason"]
    assert len(sealed_items(st.store)) == 5  # files are still taken into custody
    off = b["clock_offset_ms"]
    assert (off < -50 * 365 * 86400 * 1000) if year == "1970" else (off > 70 * 365 * 86400 * 1000)
    for row in sealed_items(st.store):
        assert st.store.read_manifest(row["id"])["metadata"]["clock_offset_ms"] == off
    clock = [json.loads(e["detail"]) for e in st.store.audit.entries(action="clock")]
    assert clock[-1]["huge"] is True and clock[-1]["set"] is True
    assert any(a["code"] == "recorder_clock" for a in st.dock.status()["alarms"])


def test_unplugged_mid_file_then_redocked_resumes(env, media):
    data, ports, made = env
    big = make_big_file(media / f"{SERIAL}_20261127080000_0009.MP4", 6 << 20, seed=3)
    want = sha(big)
    st = start_station(made, make_cfg(data, ports, erase_policy="never", probe=False))
    sim = start_sim(made, media, ports / "ttyREC1", disconnect_file=big.name, disconnect_at=(2 << 20) + 12345)
    b = st.wait("bay-1", ("error", "idle"), timeout=20)
    assert sim.disconnected.is_set()
    b = st.bay("bay-1")
    last = b if b["state"] == "error" else b["history"][0]  # unplugged: the bay is empty, the result in its history
    assert last["state"] == "error" and "拔出" in last["reason"] and "resume" in last["reason"]
    receiving = st.store.items(state="receiving")
    assert len(receiving) == 1
    partial = Path(receiving[0]["path"]) / "files" / big.name
    assert partial.stat().st_size == (2 << 20) + 12345
    sim.stop()
    st.wait_left("bay-1")
    # re-docked: the same recorder, no fault now
    start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done",))
    assert b["resumed_bytes"] == (2 << 20) + 12345
    items = sealed_items(st.store)
    names = [st.store.read_manifest(r["id"])["source"]["name"] for r in items]
    assert sorted(names) == sorted(p.name for p in media.iterdir())  # each file exactly once
    row = next(r for r, n in zip(items, names) if n == big.name)
    assert row["content_hash"] == want and row["id"] == receiving[0]["id"]
    verify_chain(st.store.items_dir, st.store.keyring())
    # a third docking copies nothing again
    n_before = len(st.store.items())
    sim3 = made["sims"][-1]
    sim3.stop()
    st.wait_state("bay-1", ("idle",), timeout=3)
    start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done",))
    assert b["already"] == 6 and b["file_count"] == 0 and len(st.store.items()) == n_before


def test_hostile_file_names_are_refused_others_copied(env, media, tmp_path):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="after-local-verify"))
    # harmless targets only: a hostile name must never point at a real file of this machine
    hostile = ["../../no-such-dir/passwd", "/no-such-dir/evil.MP4", "a\x00b.MP4", "..", "C:evil.MP4"]
    sim = start_sim(made, media, ports / "ttyREC1", inject_names=hostile)
    b = st.wait("bay-1", ("error",))
    assert b["sealed"] == 5
    refused = [p for p in b["problems"] if "file name refused" in p]
    assert len(refused) == 5, b["problems"]
    assert any(a["code"] == "recorder_unsafe_name" for a in st.dock.status()["alarms"])
    for e in st.store.audit.entries(action="erase"):
        assert json.loads(e["detail"])["file"] in {p.name for p in media.iterdir()} | set(sim.erased)
    assert not (tmp_path / "etc").exists()
    assert all("/" not in n and "\x00" not in n for n in sim.erased)


def test_overlong_name_is_refused_before_any_copy():
    from drivers.recorder import UnsafeName, safe_name

    with pytest.raises(UnsafeName):
        safe_name("录" * 86)  # 258 UTF-8 bytes
    from agent.store.store import _member

    with pytest.raises(Exception):
        _member("x" * 256)


@pytest.mark.parametrize("change", ["grow", "shrink"])
def test_file_changing_during_copy(env, media, change):
    data, ports, made = env
    big = make_big_file(media / f"{SERIAL}_20261127080000_0009.MP4", 8 << 20, seed=4)
    st = start_station(made, make_cfg(data, ports, erase_policy="after-local-verify", bay_rate_limit_mib=4, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1")
    deadline = time.monotonic() + 20
    while True:  # the file changes a little way into its copy (1 MiB of 8, at 4 MiB/s)
        b = st.bay("bay-1")
        if b.get("file_name") == big.name and b.get("bytes_done", 0) >= 1 << 20:
            break
        assert time.monotonic() < deadline, f"the copy of {big.name} did not get under way: {b}"
        time.sleep(0.02)
    with open(big, "r+b") as f:
        if change == "grow":
            f.seek(0, 2)
            f.write(b"\0" * 4096)
        else:
            f.truncate(3 << 20)
    b = st.wait("bay-1", ("error",), timeout=30)
    assert any("changed while it was copied" in p or "modified while it was copied" in p for p in b["problems"])
    assert big.name not in sim.erased and big.exists()
    names = [st.store.read_manifest(r["id"])["source"]["name"] for r in sealed_items(st.store)]
    assert big.name not in names and len(names) == 5
    assert st.store.items(state="receiving") == []


def test_corrupt_video_is_kept_byte_exact_and_flagged(env, media):
    data, ports, made = env
    bad = media / f"{SERIAL}_20261127070000_0008.MP4"
    bad.write_bytes(os.urandom(300_000))
    want = sha(bad)
    st = start_station(made, make_cfg(data, ports, erase_policy="never"))
    start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("error",))
    assert any("not decodable" in p for p in b["problems"])
    rows = {st.store.read_manifest(r["id"])["source"]["name"]: r for r in sealed_items(st.store)}
    m = st.store.read_manifest(rows[bad.name]["id"])
    assert m["metadata"]["decodable"] is False and rows[bad.name]["content_hash"] == want
    assert sha(Path(rows[bad.name]["path"]) / "files" / bad.name) == want
    good = next(n for n in rows if n.endswith("0001.MP4"))
    assert st.store.read_manifest(rows[good]["id"])["metadata"]["decodable"] is True


def test_two_recorders_claim_the_same_serial(env, media, tmp_path):
    data, ports, made = env
    other = tmp_path / "media2"
    shutil.copytree(media, other)
    st = start_station(made, make_cfg(data, ports))
    sim1 = start_sim(made, media, ports / "ttyREC1")
    st.wait_state("bay-1", ("uploading",))
    sim2 = start_sim(made, other, ports / "ttyREC2", officer_number="000999", officer_name="李四")
    b2 = st.wait("bay-2", ("error",))
    assert "序列号冲突" in b2["reason"] and "bay-1" in b2["reason"]
    reg = {r["serial"]: r for r in st.dock.registry.recorders()}
    assert reg[SERIAL]["conflict"] == 1
    assert any(a["code"] == "recorder_serial_conflict" for a in st.dock.status()["alarms"])
    # even once archived, nothing is erased from a recorder whose serial is in conflict
    for row in sealed_items(st.store):
        st.store.mark_archived(row["id"], receipt_for(row))
    b1 = st.wait("bay-1", ("done", "error"))        # bay-1 has made its final erase decisions
    assert sim1.erased == [] and sim2.erased == [] and b1["erased"] == 0
    assert st.store.audit.entries(action="erase") == []


def test_full_station_disk_refuses_docking(env, media):
    data, ports, made = env
    free_mib = shutil.disk_usage(data.parent).free >> 20
    st = start_station(made, make_cfg(data, ports, **{"storage.reserve_mb": free_mib + 1024}))
    sim = start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("error",))
    assert "磁盘空间不足" in b["reason"] and "nothing on the recorder is erased" in b["reason"]
    assert st.store.items() == [] and sim.erased == []
    assert any(a["code"] == "dock_disk_full" for a in st.dock.status()["alarms"])
    saved = json.loads((data / "dock" / "bays.json").read_text())
    assert saved["bays"][0]["state"] == "error" and saved["alarms"]


def test_mass_storage_only_recorder(env, media, tmp_path):
    data, ports, made = env
    mounts = tmp_path / "media-mounts"
    mounts.mkdir()
    mapping = [{"label": "REC_A", "serial": "7000001", "officer_number": "000555", "officer_name": "王五",
                "unit_number": "330100000001", "unit_name": "杭州市城市管理局"}]
    cfg = make_cfg(data, ports, bays=[{"name": "usb-1", "mount": str(mounts / "REC_A")},
                                      {"name": "usb-2", "mount": str(mounts / "REC_B")}],
                   mass_storage_map=mapping, erase_policy="never")
    st = start_station(made, cfg)
    shutil.copytree(media, mounts / "REC_A" / "DCIM")
    shutil.copytree(media, mounts / "REC_B")
    b = st.wait("usb-1", ("done",))
    assert b["serial"] == "7000001" and b["sealed"] == 5 and b["clock_offset_ms"] is None
    m = st.store.read_manifest(sealed_items(st.store)[0]["id"])
    assert m["metadata"]["collector"] == {"name": "王五", "id": "000555"}
    assert m["source"]["type"] == "recorder-mass-storage"
    b2 = st.wait("usb-2", ("error",))
    assert "not mapped" in b2["reason"]


def _many_bays(env, media, tmp_path, n: int, bad: dict[int, dict], mib: int = 4):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports, erase_policy="after-local-verify", copy_workers=2, probe=False))
    sims = {}
    for i in range(n):
        d = tmp_path / f"m{i}"
        shutil.copytree(media, d)
        make_big_file(d / f"{7000000 + i}_20261127080000_0009.MP4", mib << 20, seed=i)
        sims[i] = start_sim(made, d, ports / f"ttyREC{i}", serial=f"{7000000 + i}", **bad.get(i, {}))
    t0 = time.monotonic()
    results = {i: st.wait(f"bay-{i}", ("done", "error"), timeout=120) for i in range(n)}
    elapsed = time.monotonic() - t0
    for i, b in results.items():
        if i in bad:
            assert b["state"] == "error" and sims[i].erased == []
        else:
            assert b["state"] == "done", b
            assert b["sealed"] == 6 and len(sims[i].erased) == 5  # the important clip stays
    assert st.dock.pool.status()["peak"] <= 2
    assert len(sealed_items(st.store)) == 6 * (n - len(bad))
    verify_chain(st.store.items_dir, st.store.keyring())
    return elapsed


def test_six_bays_at_once_failing_bays_do_not_stall_others(env, media, tmp_path):
    bad = {1: {"silent": True}, 4: {"wrong_password": True}}
    _many_bays(env, media, tmp_path, 6, bad)


@pytest.mark.slow
def test_sixteen_bays_at_once(env, media, tmp_path):
    bad = {3: {"silent": True}, 7: {"garbage": True, "wrong_password": True}, 11: {"storage_full": True, "silent": True}}
    _many_bays(env, media, tmp_path, 16, bad, mib=32)


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs (root only): a station disk that really fills up."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=48m tmpfs {mnt} 2>/dev/null") != 0:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    os.system(f"umount -l {mnt}")


def test_disk_filling_up_mid_copy_keeps_the_partial_and_erases_nothing(env, media, small_disk):
    _, ports, made = env
    data = small_disk / "data"
    later = time.strftime("%Y%m%d", time.localtime()) + "235959"
    big = make_big_file(media / f"{SERIAL}_{later}_0009.MP4", 36 << 20, seed=5)
    want = sha(big)
    st = start_station(made, make_cfg(data, ports, erase_policy="after-local-verify", bay_rate_limit_mib=12, probe=False))
    sim = start_sim(made, media, ports / "ttyREC1")
    deadline = time.monotonic() + 20
    while st.bay("bay-1").get("file_name") != big.name and time.monotonic() < deadline:
        time.sleep(0.02)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # something else eats the disk while the big file is copied (unbuffered: nothing left to flush at close)
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    b = st.wait("bay-1", ("error",), timeout=30)
    assert "磁盘已满" in b["reason"] and "nothing erased" in b["reason"]
    assert any(a["code"] == "dock_disk_full" for a in st.dock.status()["alarms"])
    assert big.name not in sim.erased and big.exists()
    part = st.store.items(state="receiving")
    assert len(part) == 1 and (Path(part[0]["path"]) / "files" / big.name).stat().st_size > 0
    # room again, recorder docked again: the copy resumes and completes
    filler.unlink()
    sim.stop()
    st.wait_state("bay-1", ("error", "idle"), timeout=3)
    st.wait_left("bay-1")
    start_sim(made, media, ports / "ttyREC1")
    b = st.wait("bay-1", ("done",), timeout=30)
    assert b["resumed_bytes"] > 0
    row = next(r for r in sealed_items(st.store) if st.store.read_manifest(r["id"])["source"]["name"] == big.name)
    assert row["content_hash"] == want and row["id"] == part[0]["id"]
    assert not any(a["code"] == "dock_disk_full" for a in st.dock.status()["alarms"])


def test_erase_policy_command_applies_at_once(env, media):
    data, ports, made = env
    st = start_station(made, make_cfg(data, ports))
    sim = start_sim(made, media, ports / "ttyREC1")
    st.wait_state("bay-1", ("uploading",))
    handler = st.agent.commands["dock.erase_policy"]
    with pytest.raises(Exception, match="not one of"):
        handler({"policy": "sometimes"}, "operator:test")
    assert handler({"policy": "never"}, "operator:test")["applies"] == "now"
    for row in sealed_items(st.store):
        st.store.mark_archived(row["id"], receipt_for(row))
    b = st.wait("bay-1", ("done",))
    assert sim.erased == [] and b["erased"] == 0
    assert json.loads(st.store.audit.entries(action="config")[-1]["detail"])["new"] == "never"


def test_alarms_bay_state_and_ratio_go_out_through_the_ports(env, media, broker):
    """The dock publishes nothing itself: its ports (the health component, as `edge-agent run`
    wires it) put the alarm, the bay's state and the ratio on their retained topics, unchanged."""
    from tests.support.health import Capture, ContractUplink

    data, ports, made = env
    cap = Capture(broker.port, "edge/dev/dock-0001/#")
    up = ContractUplink(broker.port, "dock-0001")
    try:
        st = start_station(made, make_cfg(data, ports), uplink=up)
        start_sim(made, media, ports / "ttyREC1", wrong_password=True)
        st.wait("bay-1", ("error",))
        _, a = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/alarm/recorder_auth_failed.bay-1" and p)
        assert a["active"] is True and a["source"] == "dock" and a["key"] == "recorder_auth_failed.bay-1"
        assert a["message"]["zh"] == "管理员密码错误" and a["message"]["en"].startswith("wrong admin password")
        assert st.health.alarms.is_active("recorder_auth_failed", "bay-1")
        _, b = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/component/bay-1" and p and p["state"] == "error")
        assert b["name"] == "bay-1" and b["label"] == "故障 / Error" and b["serial"] == SERIAL
        _, r = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/ratio" and p)
        assert r["device"] == "dock-0001" and r["min_ratio_pct"] == 20 and "units" in r
        made["sims"][-1].stop()
        deadline = time.monotonic() + 10  # the station must see the recorder leave before the next one comes
        while st.bay("bay-1").get("docked") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not st.bay("bay-1").get("docked")
        start_sim(made, media, ports / "ttyREC1")
        st.wait_state("bay-1", ("uploading",))
        _, a = cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/alarm/recorder_auth_failed.bay-1" and p
                            and p["active"] is False)  # the next recorder clears it
        assert a["source"] == "dock" and not st.health.alarms.is_active("recorder_auth_failed", "bay-1")
        cap.wait_for(lambda t, p: t == "edge/dev/dock-0001/component/bay-1" and p and p["state"] == "uploading")
    finally:
        up.stop()
        cap.close()
