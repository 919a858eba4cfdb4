"""Receivers on many hosts: three `archive serve` processes, each its own host where network
namespaces can be made (a veth pair each), sharing the broker ($share/archive/...), one
PostgreSQL index and one storage, killed with SIGKILL at random and restarted while devices send.

Each receiver runs as production enrols it: `archive receiver add RID` (its own signing key),
`archive broker-config` (its own broker user), `archive enroll --pin-to --broker-dir` (every device
pins every receiver's key); the broker logs each receiver in under its own name, never the shared
`archive` identity.

Every item is archived exactly once, byte-identical, verifies (chain included); every receipt a
device holds verifies against the key of an enrolled receiver and names the sealed manifest; the
edge still holds every item (tests/faults/harness.py's invariants, read from PostgreSQL).

By default: 6 items from 2 devices, 2 receivers, 2 kills each followed by a restart. Slow
(``-m slow``): 20 items from 4 devices, 3 kills; 200 items from 10 devices, 20 kills.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from agent.evidence import keys, manifest as mf
from agent.wire.receipts import ArchiveTrust
from tests.faults.harness import NetLink
from tests.support.centre import Centre


def _storm(c: Centre, devices: int, per_device: int, kills: int, seed: int, timeout: float) -> dict:
    rng = random.Random(seed)
    names = [f"dock-{n + 1:04d}" for n in range(devices)]
    nodes = [c.add_node(d) for d in names]
    # every device pinned every receiver's key (and only those beside the root's)
    rx_keys = {r.name: keys.key_id(keys.load_public(c.root / "_archive" / "receivers" / f"{r.name}.pub"))
               for r in c.receivers}
    assert len(set(rx_keys.values())) == len(c.receivers)
    for node in nodes:
        pinned = {p.name for p in (node.data_dir / "keys" / "archive").glob("receiver-*.pub")}
        assert pinned == {f"receiver-{rid}-{kid}.pub" for rid, kid in rx_keys.items()}, (node.device, pinned)
    for node in nodes:
        node.ingest(per_device, lambda: rng.randrange(150_000, 700_000))
    for node in nodes:
        node.start()
    c.wait_transfer_started(60)
    mid = 0
    for _ in range(kills):
        time.sleep(rng.uniform(0.3, 1.2))  # the fault's timing, not a wait for an outcome
        up = [r for r in c.receivers if r.connected()]  # a receiver at work, not one still starting
        r = rng.choice(up or c.receivers)
        mid += c.receiving() > 0  # a transfer under way at the moment of the kill
        r.kill()
        r.start()
    for r in c.receivers:
        r.wait_connected(120)
    c.wait_archived(timeout)
    out = c.check().assert_ok()
    assert out.produced == devices * per_device and out.archived == out.produced, out.counts()
    # byte-identical: every stored file equals the device's sealed file
    rows = {r["item"]: r for r in c.archive_rows()}
    for node in nodes:
        for r in node.rows():
            man = json.loads((Path(r["path"]) / mf.MANIFEST).read_bytes())
            for f in man["files"]:
                got = (c.root / rows[r["id"]]["path"] / mf.FILES_DIR / f["name"]).read_bytes()
                assert got == (Path(r["path"]) / mf.FILES_DIR / f["name"]).read_bytes(), (r["id"], f["name"])
    # every receipt valid: an enrolled receiver's key (not the root's: no receiver signs with it),
    # this device and item, the sealed manifest and files
    trust = ArchiveTrust.load(sorted((c.root / "_archive" / "receivers").glob("*.pub")))
    receipts = c.receipts()
    assert len(receipts) == out.produced
    signed_by = set()
    for node, r, rc in receipts:
        signed_by.add(rc["key_id"])
        man = json.loads((Path(r["path"]) / mf.MANIFEST).read_bytes())
        trust.check_receipt(rc, device=node.device, item=r["id"], nonce=rc.get("nonce"),
                            manifest_hash=r["manifest_hash"],
                            files=[{"name": f["name"], "size": f["size"], "hash": f["hash"]} for f in man["files"]])
    stored_by = {r["receiver"] for r in rows.values()}
    assert signed_by <= set(rx_keys.values()) and {rx_keys[rid] for rid in stored_by} <= signed_by, \
        (signed_by, stored_by)
    # the broker saw each receiver log in under its own name, never the shared archive identity
    users = set(re.findall(r"as (rx-[\w-]+) \(p\d, c\d, k\d+, u'([^']*)'\)", c.broker.log_path.read_text()))
    assert {u for _rid, u in users} == set(rx_keys) and all(rid == u for rid, u in users), users
    return {"mid": mid, "stored_by": stored_by, "starts": sum(r.starts for r in c.receivers)}


def test_receivers_killed_and_restarted_on_one_postgresql(tmp_path):
    """The storm in small: two receivers, each with its own identity and key and (where namespaces
    can be made) its own host, one PostgreSQL index; two SIGKILLs, each restarted at once."""
    with Centre(tmp_path, devices=["dock-0001", "dock-0002"], receivers=2, own_identities=True) as c:
        assert c.namespaces == (NetLink.unavailable() is None)
        c.start()
        got = _storm(c, devices=2, per_device=3, kills=2, seed=1703, timeout=120)
        assert got["starts"] == 2 + 2 and got["mid"] >= 1, got


@pytest.mark.slow
def test_three_receivers_killed_at_random(tmp_path):
    with Centre(tmp_path, devices=[f"dock-{n + 1:04d}" for n in range(4)], receivers=3, own_identities=True) as c:
        # each receiver its own host on the network where namespaces can be made (root, iproute2)
        assert c.namespaces == (NetLink.unavailable() is None)
        if c.namespaces:
            assert len({r.netlink.agent_ip for r in c.receivers}) == 3
        c.start()
        got = _storm(c, devices=4, per_device=5, kills=3, seed=17, timeout=180)
        assert got["starts"] == 3 + 3 and got["mid"] >= 1, got
        assert len(got["stored_by"]) >= 2, got  # the work was shared


@pytest.mark.slow
def test_three_receivers_killed_twenty_times(tmp_path):
    with Centre(tmp_path, devices=[f"dock-{n + 1:04d}" for n in range(10)], receivers=3, own_identities=True) as c:
        c.start()
        got = _storm(c, devices=10, per_device=20, kills=20, seed=1717, timeout=900)
        assert got["starts"] == 3 + 20 and got["mid"] >= 10, got
        assert len(got["stored_by"]) == 3, got

