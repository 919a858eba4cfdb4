"""Removal of a device's last item or of an item's last annotation: the hash chains alone cannot
show it (what is left is a valid, shorter chain), the signed chain checkpoint does. The agent's
checkpoint carries the device's annotation total; the archive keeps the latest as
ROOT/_checkpoints/DEVICE.json; ``verify --chain --checkpoints`` compares (docs/evidence-format.md)."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.evidence import hashing, keys
from agent.wire import checkpoint
from tests.support.uplink import UNIT, InProc, add_items, agent_config, open_store, run, wait_for


def test_checkpoint_carries_the_annotation_total(tmp_path):
    store = open_store(agent_config(tmp_path, 1883))
    ids = add_items(store, tmp_path, [1000, 2000])
    pub = store.private_key.public_key()
    assert checkpoint.parse(checkpoint.make(store), pub).annotations == 0
    store.annotate(ids[0], {"proof": "补正 1"}, "t")
    store.annotate(ids[0], {"proof": "补正 2"}, "t")
    store.annotate(ids[1], {"note": "n"}, "t")
    cp = checkpoint.parse(checkpoint.make(store), pub, device="dock-0001")
    assert (cp.count, cp.annotations) == (2, 3)
    # a ledger from before the count: taken from the audit log once
    with store.ledger.atomic() as db:
        db.execute("DELETE FROM meta WHERE key = 'annotations_total'")
    assert store.annotations_total() == 3
    # the count is signed: lowering it breaks the signature
    forged = json.loads(checkpoint.make(store))
    forged["annotations"] = 2
    with pytest.raises(checkpoint.CheckpointError, match="bad signature"):
        checkpoint.parse(json.dumps(forged).encode(), pub)
    # an older agent's checkpoint (no annotations field) still parses and verifies
    old = {k: v for k, v in forged.items() if k not in ("annotations", "sig")}
    old["sig"] = keys.sign(store.private_key, hashing.canonical(old))
    assert checkpoint.parse(json.dumps(old).encode(), pub).annotations is None
    with pytest.raises(checkpoint.CheckpointError, match="unknown field"):
        checkpoint.parse(json.dumps(dict(old, extra=1)).encode(), pub)
    with pytest.raises(checkpoint.CheckpointError, match="duplicate key"):
        checkpoint.parse(b'{"count":1,"count":2}', pub)
    store.close()


def test_removed_last_item_or_last_annotation_is_detected(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [10_000, 20_000, 30_000])
    t.store.annotate(ids[1], {"proof": "补正 1"}, "t")
    t.store.annotate(ids[1], {"proof": "补正 2"}, "t")
    t.enroll()
    t.start_archive()
    try:
        t.start_agent()
        t.wait_archived(ids)
        cpf = t.root / "_checkpoints" / "dock-0001.json"

        def announced():
            try:
                cp = json.loads(cpf.read_bytes())
                return cp["count"] == 3 and cp["annotations"] == 2
            except (OSError, ValueError):
                return False
        wait_for(announced, 20, "the archive keeps the device's checkpoint")
        miss = {r["device"]: r for r in t.archive.missing()}["dock-0001"]
        assert (miss["announced"], miss["annotations_announced"], miss["annotations_held"]) == (3, 2, 2)
    finally:
        t.close()
    args = ["verify", "--chain", str(t.root / UNIT), "--keys", str(t.root / "keys")]
    with_cp = args + ["--checkpoints", str(t.root / "_checkpoints")]
    ok = run(with_cp)
    assert ok.returncode == 0 and "ok: device dock-0001: 3 items" in ok.stdout, ok.stderr
    # an item's last annotation removed: a valid, shorter annotation chain ...
    item2 = next((t.root / UNIT).rglob(ids[1]))
    saved = tmp_path / "saved"
    saved.mkdir()
    for n in ("0002.json", "0002.sig"):
        shutil.move(str(item2 / "annotations" / n), str(saved / n))
    assert run(args).returncode == 0  # the chains alone cannot see it
    p = run(with_cp)
    assert p.returncode == 1 and "announces 2 annotations, 1 found" in p.stderr, p.stderr
    for n in ("0002.json", "0002.sig"):
        shutil.move(str(saved / n), str(item2 / "annotations" / n))
    assert run(with_cp).returncode == 0
    # the device's last item removed
    item3 = next((t.root / UNIT).rglob(ids[2]))
    shutil.move(str(item3), str(saved / ids[2]))
    assert run(args).returncode == 0
    p = run(with_cp)
    assert p.returncode == 1 and "announces 3 items, the chain ends at seq 2" in p.stderr, p.stderr
    # a checkpoint that is not the device's signature is refused, not trusted
    cp = json.loads((t.root / "_checkpoints" / "dock-0001.json").read_bytes())
    (t.root / "_checkpoints" / "dock-0001.json").write_text(json.dumps(dict(cp, count=2)))
    p = run(with_cp)
    assert p.returncode == 1 and "bad signature" in p.stderr, p.stderr
