"""Receivers enrolled at the centre, each with its own signing key and broker identity
(agent/archive/receivers.py): two receivers with different keys serve one device through a real
broker with the generated identities and ACL; a receipt signed by a revoked key, or by a key the
device never pinned, is ignored and the item waits for a receiver it trusts."""

from __future__ import annotations

import json
import sqlite3

import pytest

from agent.archive import receivers
from agent.archive.receiver import Receiver
from agent.archive.storage import ArchiveStore
from agent.common.errors import EdgeError
from agent.evidence import keys
from agent.wire import broker_auth
from agent.wire.client import ConnSettings
from agent.wire.receipts import ArchiveSigner
from tests.support.uplink import InProc, UNIT, add_items, run, states, wait_for


def _receipt_key(t: InProc, item: str) -> str:
    con = sqlite3.connect(str(t.store.data_dir / "ledger.db"), timeout=30)
    try:
        (text,) = con.execute("SELECT receipt FROM items WHERE id = ?", [item]).fetchone()
    finally:
        con.close()
    return json.loads(text)["key_id"]


def test_two_receivers_with_own_keys_serve_one_device_and_a_revoked_or_unknown_key_is_ignored(tmp_path, make_broker):
    root = tmp_path / "archive"
    ArchiveStore(root, create=True).close()
    a = receivers.add(root, "rx-a")
    b = receivers.add(root, "rx-b")
    assert a["key_id"] != b["key_id"]
    b_key = keys.load_private(root / "_archive" / "receivers" / "rx-b.key")  # what a thief of rx-b keeps
    auth = broker_auth.generate(tmp_path / "broker", ["dock-0001"], receivers=["rx-a", "rx-b", "rx-c"])
    pw = {i.name: i.password for i in auth.identities}
    assert {"rx-a", "rx-b", "rx-c", "archive"} <= set(pw)
    mq = make_broker(password_file=auth.passwd, acl_file=auth.acl)
    t = InProc(tmp_path, mq.port, mqtt__username="dock-0001", mqtt__password=pw["dock-0001"])
    run(["archive", "enroll", "dock-0001", str(t.store.pub_path), "--unit", UNIT, "--root", str(root),
         "--pin-to", str(t.store.data_dir)], check=True)
    pinned = {p.name for p in (t.store.data_dir / "keys" / "archive").glob("*.pub")}
    assert f"receiver-rx-a-{a['key_id']}.pub" in pinned and f"receiver-rx-b-{b['key_id']}.pub" in pinned
    c = receivers.add(root, "rx-c")  # enrolled after the device: the device never pinned it
    running: list[Receiver] = []

    def serve(rid: str, *, signer_key=None) -> Receiver:
        st = ArchiveStore(root, receiver=rid)
        rx = Receiver(st, ConnSettings("127.0.0.1", mq.port, rid, keepalive=10, username=rid, password=pw[rid]),
                      receiver_id=rid if signer_key is None else "rx-thief")
        if signer_key is not None:  # a receiver host that kept rx-b's key after the revocation
            rx.signer = ArchiveSigner(signer_key, "rx-b")
        rx.start()
        assert rx.conn.wait_connected(20), rx.conn.last_error
        running.append(rx)
        return rx

    def halt(rx: Receiver) -> None:
        rx.stop()
        rx.store.close()
        running.remove(rx)

    try:
        (i1,) = add_items(t.store, tmp_path, [200_000], seed=1)
        rx = serve("rx-a")
        assert rx.signer.key_id == a["key_id"]
        t.start_agent()
        t.wait_archived([i1], 90)
        assert _receipt_key(t, i1) == a["key_id"]
        halt(rx)

        (i2,) = add_items(t.store, tmp_path, [150_000], seed=2)
        rx = serve("rx-b")
        t.wait_archived([i2], 90)
        assert _receipt_key(t, i2) == b["key_id"]
        halt(rx)
        up = t.uplink

        # revoked at the centre: rx-b cannot start any more; on the device: its key is refused
        out = run(["archive", "receiver", "revoke", "rx-b", "--root", str(root), "--json"], check=True)
        assert json.loads(out.stdout)["key_id"] == b["key_id"]
        with pytest.raises(EdgeError, match="revoked"):
            Receiver(ArchiveStore(root, receiver="rx-b"), ConnSettings("127.0.0.1", mq.port, "rx-b"), receiver_id="rx-b")
        out = run(["uplink", "revoke-archive", b["key_id"], "--json"], config=t.config, check=True)
        assert b["key_id"] not in json.loads(out.stdout)["pinned"]
        # the running uplink re-reads its pinned and revoked keys (every 10 s): no restart needed
        wait_for(lambda: b["key_id"] not in up.stats()["archive_keys"], 60, "the revocation taken up")

        (i3,) = add_items(t.store, tmp_path, [120_000], seed=3)
        for thief in ({"signer_key": b_key}, {}):  # the revoked key, then rx-c's key (never pinned)
            seen = up.stats()["answers_ignored"]
            rx = serve("rx-b", **thief) if thief else serve("rx-c")
            assert thief or rx.signer.key_id == c["key_id"]
            wait_for(lambda: up.stats()["answers_ignored"] > seen, 90, "the untrusted receiver's answers ignored")
            assert states(t.config)[i3] != "archived"
            halt(rx)

        serve("rx-a")
        t.wait_archived([i3], 120)
        assert _receipt_key(t, i3) == a["key_id"]
        assert set(up.stats()["archive_keys"]) == {keys.key_id(keys.load_public(root / "_archive" / "archive.pub")),
                                                   a["key_id"]}
    finally:
        for rx in list(running):
            halt(rx)
        t.close()


def test_receiver_enrolment_bad_input_is_refused_and_listed(tmp_path):
    root = tmp_path / "archive"
    ArchiveStore(root, create=True).close()
    with pytest.raises(EdgeError, match="receiver id"):
        receivers.add(root, "a/b")
    receivers.add(root, "rx-1")
    with pytest.raises(EdgeError, match="enrolled already"):
        receivers.add(root, "rx-1")
    with pytest.raises(EdgeError, match="no enrolled receiver"):
        receivers.revoke(root, "rx-9")
    kid = receivers.revoke(root, "rx-1")["key_id"]
    assert not (root / "_archive" / "receivers" / "rx-1.key").exists()
    out = json.loads(run(["archive", "receiver", "list", "--root", str(root), "--json"], check=True).stdout)
    assert out == [{"receiver": "rx-1", "key_id": kid, "state": "revoked", "private_key_here": False,
                    "public": str((root / "_archive" / "revoked" / f"rx-1-{kid}.pub").resolve())}]
    # the revoked key cannot come back under another id
    with pytest.raises(EdgeError, match="revoked"):
        receivers.add(root, "rx-2", pub=root / "_archive" / "revoked" / f"rx-1-{kid}.pub")
    assert receivers.enrolled(root) == {}
