"""The scale simulation (tools/scale_sim/): a small fleet through Mosquitto as shipped (identities
and ACL of `archive broker-config`, anonymous off) to two real `edge-agent archive serve --share`
processes on one root, each enrolled with a key and broker identity of its own; every item
archived exactly once and verified, every receipt signed by the receiver that stored the item;
the checker itself catches duplicates, holes, corruption and a receipt from the wrong key; bad
arguments are refused."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from tools import scale_sim
from tools.scale_sim.check import check_archive, check_receipts

pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()),
                                reason="mosquitto not installed")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One quick run kept on disk: 6 devices (each the complete uplink component, as in
    `edge-agent run`) x 2 items x 64 KiB, K = 2 receivers."""
    work = tmp_path_factory.mktemp("scale")
    res = scale_sim.simulate(devices=6, items=2, item_kib=64, receivers=[2], workers=2, probe_mib=0,
                             timeout=120, workdir=str(work), keep=True, full_uplink=True)
    return res


def test_two_receivers_archive_every_item_exactly_once(sim):
    assert sim["ok"], sim["runs"][0]["check"]
    run = sim["runs"][0]
    assert run["receivers"] == 2 and run["devices"] == 6
    assert run["stored"] == run["items"] == 12
    assert run["check"] == {"ok": True, "problems": [], "problem_count": 0, "stored": 12, "verified": 12,
                            "receipts": 12, "receipt_keys": run["items_per_receiver"]}
    # both receivers of the shared subscription did work (finish messages are spread round robin),
    # and each signed the receipts of the items it stored with its own key
    assert set(run["items_per_receiver"]) == {"rx-1", "rx-2"}, run["items_per_receiver"]
    assert sum(run["items_per_receiver"].values()) == 12
    # the broker as shipped: anonymous off, each device logged in as itself, each receiver as itself
    rdir = Path(run["logs"])
    conf = (rdir / "broker" / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "acl_file" in conf and "password_file" in conf
    logins = re.findall(r"New client connected from \S+ as (\S+) \(.*?u'([^']*)'\)",
                        (rdir / "broker" / "mosquitto.log").read_text())
    users = {cid: user for cid, user in logins}
    assert {u for u in users.values()} == {f"sim-{i:04d}" for i in range(6)} | {"rx-1", "rx-2", "monitor"}, users
    assert all(cid == user for cid, user in users.items() if user != "monitor"), users
    assert run["devices_done"] == 6 and not run["timed_out"]
    assert run["receiver_cpu_s_total"] > 0 and run["mb_s"] > 0

    # independently of the checker: one directory and one database row per item
    root = Path(sim["workdir"]) / "fleet" / "archive"
    dirs = [m.parent.name for m in root.rglob("manifest.json") if not m.relative_to(root).parts[0].startswith("_")]
    assert len(dirs) == len(set(dirs)) == 12
    con = sqlite3.connect(str(root / "archive.db"))
    try:
        assert con.execute("SELECT count(*), count(DISTINCT item) FROM items").fetchone() == (12, 12)
    finally:
        con.close()


def test_checker_catches_duplicates_missing_and_corruption(sim, tmp_path):
    root0 = Path(sim["workdir"]) / "fleet" / "archive"
    root = tmp_path / "archive"
    shutil.copytree(root0, root)
    fleet = {}
    con = sqlite3.connect(str(root / "archive.db"))
    try:
        for dev, item, unit in con.execute("SELECT device, item, unit FROM items ORDER BY device, seq"):
            fleet.setdefault(dev, {"unit": unit, "items": []})["items"].append(item)
    finally:
        con.close()
    assert check_archive(root, fleet)["ok"]

    items = sorted(m.parent for m in root.rglob("manifest.json") if not m.relative_to(root).parts[0].startswith("_"))
    dup, corrupt = items[0], items[1]
    shutil.copytree(dup, dup.parent.parent / "copy-case" / dup.name)            # a second copy
    f = next((corrupt / "files").iterdir())
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))                                                   # one flipped byte
    fleet[next(iter(fleet))]["items"].append("sim-9999-never-stored")           # a hole
    rep = check_archive(root, fleet)
    text = "\n".join(rep["problems"])
    assert not rep["ok"]
    assert f"{dup.name}: 2 directories" in text
    assert f"{corrupt.name}: does not verify" in text
    assert "sim-9999-never-stored: 0 rows" in text


def test_receipt_check_catches_a_receipt_from_another_key(sim):
    """A device's receipt re-signed by the archive root's key (pinned by no device here), or by
    the other receiver's key (enrolled, but not the receiver that stored the item), fails the
    receipt check; the untouched receipts pass."""
    from agent.archive.storage import ArchiveStore
    from agent.evidence import keys
    from agent.wire.receipts import ArchiveSigner

    base = Path(sim["workdir"]) / "fleet"
    root = base / "archive"
    fleet = {}
    for dev in sorted(p.name for p in (base / "devices").iterdir()):
        con = sqlite3.connect(str(base / "devices" / dev / "ledger.db"))
        try:
            ids = [r[0] for r in con.execute("SELECT id FROM items ORDER BY device_seq")]
        finally:
            con.close()
        fleet[dev] = {"items": ids, "data_dir": str(base / "devices" / dev)}
    good = check_receipts([root], fleet, [None])
    assert good["ok"] and good["checked"] == 12 and set(good["signed_by"]) == {"rx-1", "rx-2"}, good

    con = sqlite3.connect(str(root / "archive.db"))
    try:
        dev, item, rid = con.execute("SELECT device, item, receiver FROM items ORDER BY item LIMIT 1").fetchone()
    finally:
        con.close()
    other = {"rx-1": "rx-2", "rx-2": "rx-1"}[rid]
    store = ArchiveStore(root, receiver="test")
    try:
        root_key = store.signing_key
    finally:
        store.close()
    ledger = Path(fleet[dev]["data_dir"]) / "ledger.db"
    saved = ledger.read_bytes()
    for key, problem in ((root_key, f"{item}: receipt on {dev} does not verify against an enrolled receiver's key"),
                         (keys.load_private(root / "_archive" / "receivers" / f"{other}.key"),
                          f"{item}: receipt signed by key ")):
        con = sqlite3.connect(str(ledger))
        try:
            rc = json.loads(con.execute("SELECT receipt FROM items WHERE id = ?", (item,)).fetchone()[0])
            body = {k: v for k, v in rc.items() if k not in ("sig", "key_id", "format", "archive", "nonce")}
            forged = ArchiveSigner(key, rc["archive"]).receipt(body, nonce=rc["nonce"])
            with con:
                con.execute("UPDATE items SET receipt = ? WHERE id = ?", (json.dumps(forged), item))
        finally:
            con.close()
        try:
            bad = check_receipts([root], fleet, [None])
        finally:
            ledger.write_bytes(saved)
        assert not bad["ok"] and bad["checked"] == 11 and len(bad["problems"]) == 1, bad
        assert bad["problems"][0].startswith(problem), bad["problems"]
    assert f"stored by receiver {rid}" in bad["problems"][0]


@pytest.mark.parametrize("args, message", [
    (["--devices", "0"], "--devices 0: must be 1..1000"),
    (["--devices", "1001"], "--devices 1001: must be 1..1000"),
    (["--receivers", "1,x"], "expected numbers separated by commas"),
    (["--receivers", "9"], "each must be 1..8"),
    (["--items", "0"], "--items 0: must be 1..100"),
    (["--item-kib", "0"], "--item-kib 0: must be 1.."),
    (["--timeout", "0"], "--timeout 0"),
    (["--probe-mib", "-1"], "--probe-mib -1"),
    (["--repeat", "0"], "--repeat 0: must be 1..10"),
    (["--ramp", "-1"], "--ramp -1.0: must be 0..600 s"),
    (["--device-kbps", "-5"], "--device-kbps -5: must be 0"),
    (["--dir", "/nonexistent/scale"], "--dir /nonexistent/scale: no such directory"),
    (["--db", "mysql://u@h/db"], "--db mysql://u@h/db: give a postgresql://"),
])
def test_bad_arguments_are_refused_with_one_line(args, message, capsys):
    assert scale_sim.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_lightweight_devices_one_receiver_and_probe(tmp_path):
    """The lightweight device (the transfer alone) and the single-device probe, K = 1."""
    res = scale_sim.simulate(devices=3, items=1, item_kib=32, receivers=[1], workers=1, probe_mib=1,
                             timeout=120, workdir=str(tmp_path))
    assert res["ok"], [r["check"] for r in res["runs"]]
    assert res["device_mode"] == "lite" and res["runs"][0]["stored"] == 3
    assert res["probe"]["ok"] and res["probe"]["stored"] == 1 and res["probe"]["device_mb_s"]["median"] > 0
    assert res["workdir"] is None and not list(tmp_path.iterdir())  # cleaned up


def test_two_receivers_with_the_index_on_postgresql(tmp_path):
    """`--db postgresql://…`: a fresh database per run with the enrolment, shared by both receivers
    (`archive serve --db`), read and checked through the index interface, dropped after the run."""
    from agent.common.pg import read_once

    res = scale_sim.simulate(devices=3, items=1, item_kib=32, receivers=[2], probe_mib=0, timeout=120,
                             workdir=str(tmp_path), db="postgresql://postgres@127.0.0.1:5432/edge_scale_test")
    run = res["runs"][0]
    assert res["ok"] and res["index"] == "postgresql", run["check"]
    assert run["check"]["stored"] == run["check"]["verified"] == 3
    assert sum(run["items_per_receiver"].values()) == 3
    assert run["check"]["receipts"] == 3 and run["check"]["receipt_keys"] == run["items_per_receiver"]
    left = read_once("postgresql://postgres@127.0.0.1:5432/postgres",
                     "SELECT datname FROM pg_database WHERE datname LIKE 'edge_scale_test%'")
    assert left == [], "the run's database is dropped"


def test_shards_each_receiver_its_own_root_and_prefix(tmp_path):
    """The sharded layout: K = 2 receivers, each with its own root, topic prefix and broker as
    shipped (identities and ACL per prefix); each device's items land in its shard's root only,
    with a receipt from its shard's receiver."""
    res = scale_sim.simulate(devices=4, items=1, item_kib=32, receivers=[2], probe_mib=0, timeout=120,
                             workdir=str(tmp_path), keep=True, shards=True)
    run = res["runs"][0]
    assert res["ok"] and res["layout"] == "shards", run["check"]
    assert run["stored"] == 4 and set(run["items_per_receiver"]) == {"rx-1", "rx-2"}
    assert run["check"]["receipt_keys"] == {"rx-1": 2, "rx-2": 2}
    base = Path(res["workdir"]) / "fleet"
    for k, devs in ((1, {"sim-0000", "sim-0002"}), (2, {"sim-0001", "sim-0003"})):
        con = sqlite3.connect(str(base / f"archive-s{k}" / "archive.db"))
        try:
            assert {r[0] for r in con.execute("SELECT device FROM items")} == devs
        finally:
            con.close()


def test_summary_takes_medians_and_compares_like_with_like():
    def run(k, mb, steady):
        return {"receivers": k, "mb_s": mb, "steady_mb_s": steady, "items_s": mb, "steady_items_s": steady,
                "mb_per_receiver_cpu_s": 50.0, "ok": True}
    s = scale_sim.summarize([run(1, 10, 20), run(2, 15, 30), run(1, 12, 24), run(2, 9, 18)])
    assert s["1"]["mb_s"] == 22 and s["1"]["mb_s_range"] == [20, 24] and s["1"]["rate"] == "steady"
    assert s["2"]["mb_s"] == 24 and s["2"]["runs"] == 2
    # one run too short for a steady window: every K falls back to the overall rate
    s = scale_sim.summarize([run(1, 10, 20), run(2, 15, None)])
    assert s["1"]["rate"] == "overall" and (s["1"]["mb_s"], s["2"]["mb_s"]) == (10, 15)


def test_table_lists_every_run(sim):
    text = scale_sim.table(sim)
    lines = text.splitlines()
    assert lines[0].split()[0] == "K" and lines[1].split()[0] == "2"
    assert lines[1].rstrip().endswith("OK")
    md = scale_sim.markdown(sim).splitlines()
    assert md[0].startswith("| K | wall s |") and md[2].startswith("| 2 |") and "12/12 once, verified" in md[2]
