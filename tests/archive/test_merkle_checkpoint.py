"""The archive-wide checkpoint (docs/custody.md "The archive's own checkpoint", docs/evidence-format.md
"The archive's checkpoint"): a signed Merkle root over every item and tombstone the archive ever
stored; `archive audit OLD_CHECKPOINT` proves the store extends it, and names an item deleted
behind the archive's back. The last test is an independent verifier written from the format
document with the standard library and `cryptography` only."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import sqlite3

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from agent.archive.merkle import leaf_hash
from agent.archive.retention import Retention
from agent.archive.storage import ArchiveStore
from agent.common.errors import VerifyError
from tests.archive.test_archive_db_contract import _archive, _edge, backend, pg_url  # noqa: F401 (fixtures)
from tests.support.uplink import InProc, add_items, run

DEV = "dock-0001"


def test_audit_names_an_item_deleted_behind_the_archives_back(broker, tmp_path):
    t = InProc(tmp_path, broker.port)
    ids = add_items(t.store, tmp_path, [3_000, 4_000, 5_000])
    t.enroll()
    t.start_archive()
    try:
        t.start_agent()
        t.wait_archived(ids)
        p = run(["archive", "checkpoint", "--root", str(t.root)])
        assert p.returncode == 0, p.stderr
        old = tmp_path / "kept-elsewhere.json"
        old.write_text(p.stdout)
        assert json.loads(p.stdout)["size"] == 3
        ids += add_items(t.store, tmp_path, [6_000, 7_000], seed=1)
        t.wait_archived(ids)
        # the signed checkpoint is published on the broker too (made by the receiver's schedule)
        cp = t.receivers[0].publish_store_checkpoint()
        assert cp["size"] == 5
    finally:
        t.close()
    args = ["archive", "audit", str(old), "--root", str(t.root)]
    ok = run(args)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "store now: 5 leaves" in ok.stdout and "consistency proof 3 -> 5" in ok.stdout and \
        "verdict: ok" in ok.stdout, ok.stdout

    # an insider deletes item 2: its row and its files
    con = sqlite3.connect(str(t.root / "archive.db"))
    path = con.execute("SELECT path FROM items WHERE item = ?", [ids[1]]).fetchone()[0]
    # the leaf of item 2: items of the first batch may be stored in any order (transfer lanes)
    leaf = con.execute("SELECT idx FROM merkle_leaves WHERE item = ?", [ids[1]]).fetchone()[0]
    assert 1 <= leaf <= 3
    with con:
        con.execute("DELETE FROM items WHERE item = ?", [ids[1]])
    shutil.rmtree(t.root / path)
    bad = run(args)
    assert bad.returncode == 1, bad.stdout
    assert f"item {ids[1]} (device {DEV}, seq 2, leaf {leaf}): archived, and its row is gone from the index" in bad.stdout
    assert "verdict: FAILED, 1 problem(s)" in bad.stdout, bad.stdout
    st = ArchiveStore(t.root)
    try:
        # the files alone, the row kept
        shutil.rmtree(next(t.root.rglob(ids[2])))
        rep = st.audit_against(old.read_bytes())
        assert not rep["ok"] and any(f"item {ids[2]}" in p and "files are gone" in p for p in rep["problems"])
        # ... and the leaf too: the log no longer gives the signed root
        with con:
            con.execute("DELETE FROM merkle_leaves WHERE item = ?", [ids[1]])
            con.execute("UPDATE merkle_leaves SET idx = idx - 1 WHERE idx > ?", [leaf])
        rep = st.audit_against(old.read_bytes())
        assert any("the first 3 leaves no longer give the root signed" in p for p in rep["problems"]), rep
        # a checkpoint altered (or not this archive's) is refused
        forged = json.loads(old.read_text())
        forged["size"] = 2
        with pytest.raises(VerifyError, match="bad signature"):
            st.audit_against(json.dumps(forged).encode())
    finally:
        st.close()
        con.close()


def test_checkpoint_and_audit_on_both_backends(backend, tmp_path):  # noqa: F811
    store = _edge(tmp_path)
    ids = add_items(store, tmp_path, [2_000, 3_000, 1_000, 5_000])
    st = ArchiveStore(tmp_path / "archive", db=backend)
    try:
        st.registry.enroll(DEV, store.pub_path.read_bytes(), UNIT := store.cfg.device.unit_code)
        assert UNIT
        empty = json.dumps(st.make_checkpoint()).encode()
        for i in ids[:2]:
            assert _archive(st, store, i).status == "stored"
        old = json.dumps(st.make_checkpoint()).encode()
        for i in ids[2:]:
            assert _archive(st, store, i).status == "stored"
        assert st.audit_against(empty)["ok"] and st.audit_against(old)["ok"]
        rep = st.audit_against(old)
        assert (rep["old"]["size"], rep["current"]["size"]) == (2, 4)
        # items stored before the log existed get their leaves when the next checkpoint is made
        with st.db.atomic() as db:
            db.execute("DELETE FROM merkle_leaves WHERE idx > 2")
        assert st.merkle_catch_up() == 2 and st.audit_against(old)["ok"]
        # items deleted by their retention rule are accounted for by their tombstones
        far = dt.datetime.now().astimezone() + dt.timedelta(days=3650)
        gone = Retention(st, clock=lambda: far).run(actor="t")["deleted"]
        assert len(gone) == 4, gone
        rep = st.audit_against(old)
        assert rep["ok"], rep["problems"]
        assert [r["kind"] for r in st.leaves()] == ["item"] * 4 + ["tombstone"] * 4
        assert st.make_checkpoint()["size"] == 8
        old = json.dumps(st.make_checkpoint()).encode()
        assert st.audit_against(old)["ok"]
        with st.db.atomic() as db:
            db.execute("DELETE FROM tombstones WHERE item = ?", [ids[0]])
        rep = st.audit_against(old)
        assert not rep["ok"] and any(ids[0] in p and "tombstone is gone" in p for p in rep["problems"]), rep
        with pytest.raises(VerifyError, match="bad signature"):
            st.audit_against(old.replace(b'"size": 8', b'"size": 7'))
    finally:
        st.close()
        store.close()


# --- an independent verifier, from docs/evidence-format.md only -----------------------------------
def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 2.1: the Merkle Tree Hash of a list of leaf inputs."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def check_proof(proof: dict, old_root: bytes, new_root: bytes) -> bool:
    """The consistency proof as documented: its shape from the two sizes, the subset hashes folded
    to the old root, the rule walked to the new root."""
    start, m, n, bit, steps = 0, proof["metadata"]["prior_size"], proof["metadata"]["size"], 0, []
    while not (m == n or (m == 0 and n == 1)):
        k = 1
        while k * 2 < n:
            k *= 2
        if m < k:
            steps.append((bit, 0))
            n, bit = k, 0
        else:
            steps.append((bit, 1))
            start, m, n, bit = start + k, m - k, n - k, 1
    steps.reverse()
    if proof["rule"] != [bit] + [b for b, _ in steps] or \
            proof["subset"] != [1 if m == n else 0] + [x for _, x in steps]:
        return False
    path = [bytes.fromhex(h) for h in proof["path"]]
    old = [h for h, m in zip(path, proof["subset"]) if m]
    acc = old[0]
    for h in old[1:]:
        acc = node(h, acc)
    new = path[0]
    for bit, h in zip(proof["rule"], path[1:]):
        new = node(new, h) if bit == 0 else node(h, new)
    return acc == old_root and new == new_root


def signed_ok(cp: dict, pem: bytes) -> bool:
    body = {k: cp[k] for k in ("format", "archive", "size", "root", "time", "key_id")}
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    try:
        load_pem_public_key(pem).verify(base64.b64decode(cp["sig"]), data)
        return True
    except Exception:
        return False


def test_an_independent_verifier_from_the_format_document(tmp_path):
    store = _edge(tmp_path)
    ids = add_items(store, tmp_path, [1_000] * 7)
    st = ArchiveStore(tmp_path / "archive")
    try:
        st.registry.enroll(DEV, store.pub_path.read_bytes(), store.cfg.device.unit_code)
        cps = []
        for n, i in enumerate(ids, 1):
            assert _archive(st, store, i).status == "stored"
            if n in (1, 3, 4, 7):
                cps.append(st.make_checkpoint())
        leaves = [r["leaf"].encode() for r in st.leaves()]
        assert [json.loads(x)["item"] for x in leaves] == ids
        assert all(leaf_hash(x).hex() == r["hash"] for x, r in zip(leaves, st.leaves()))
        pem = (st.root / "_archive" / "archive.pub").read_bytes()
        for cp in cps:
            assert signed_ok(cp, pem) and mth(leaves[:cp["size"]]).hex() == cp["root"]
        assert not signed_ok(dict(cps[0], size=2), pem)
        for a in cps:
            for b in cps:
                if 0 < a["size"] < b["size"]:
                    old = tmp_path / "old.json"
                    old.write_text(json.dumps(a))
                    rep = st.audit_against(old.read_bytes())
                    proof = rep["consistency_proof"]
                    if b["size"] == len(ids):
                        assert check_proof(proof, bytes.fromhex(a["root"]), bytes.fromhex(b["root"]))
                        assert not check_proof(proof, bytes.fromhex(a["root"]), hashlib.sha256(b"x").digest())
                        assert not check_proof(dict(proof, rule=proof["rule"][::-1]), bytes.fromhex(a["root"]),
                                               bytes.fromhex(b["root"])) or proof["rule"] == proof["rule"][::-1]
    finally:
        st.close()
        store.close()


def test_published_record_carries_a_proof_from_the_checkpoint_published_before(tmp_path):
    """What `archive serve` publishes on P/archive/checkpoint (edge-archive-consistency/1): the new
    checkpoint, the one published before it and the RFC 6962 proof between them, which a witness
    checks with the two signed roots only (agent/wire/archive_checkpoint.py)."""
    from agent.wire.archive_checkpoint import check_checkpoint, check_consistency, parse_published

    store = _edge(tmp_path)
    ids = add_items(store, tmp_path, [1_000] * 5)
    st = ArchiveStore(tmp_path / "archive")
    try:
        st.registry.enroll(DEV, store.pub_path.read_bytes(), store.cfg.device.unit_code)
        pubs = st.archive_keys()
        for i in ids[:2]:
            assert _archive(st, store, i).status == "stored"
        first = st.published_record(st.make_checkpoint())
        assert first["previous"] is None and first["proof"] is None
        st.note_published(first["checkpoint"])
        for i in ids[2:]:
            assert _archive(st, store, i).status == "stored"
        rec = parse_published(json.dumps(st.published_record(st.make_checkpoint())).encode())
        old, new = (check_checkpoint(rec[k], pubs) for k in ("previous", "checkpoint"))
        assert (old["size"], new["size"]) == (2, 5) and rec["proof"]["metadata"]["prior_size"] == 2
        check_consistency(old, new, rec["proof"])
        assert check_proof(rec["proof"], bytes.fromhex(old["root"]), bytes.fromhex(new["root"]))
        # a proof does not fit another pair of roots, nor a log that shrank
        with pytest.raises(VerifyError, match="consistency proof from 2 to 5 leaves fails"):
            check_consistency(dict(old, root=new["root"]), new, rec["proof"])
        with pytest.raises(VerifyError, match="the log shrank"):
            check_consistency(new, old, None)
        # text no canonical JSON can hold (a lone surrogate, as the fuzzer sends): refused as not
        # verifiable, VerifyError like any forgery, never an error that reaches the monitor's bug guard
        with pytest.raises(VerifyError, match="cannot canonicalise"):
            check_checkpoint(dict(new, archive="rx\udc80"), pubs)
        # `archive audit` takes the published record as it came off the broker
        f = tmp_path / "published.json"
        f.write_text(json.dumps(rec))
        assert st.audit_against(f.read_bytes())["ok"]
    finally:
        st.close()
        store.close()
