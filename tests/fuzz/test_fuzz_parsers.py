"""Every parser that takes bytes from outside gives a clean error, never a crash: config files,
manifests and signatures, annotations, central commands, recorder frames. `make fuzz` runs
10,000 cases each (HYPOTHESIS_PROFILE=fuzz); the default run is shorter."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from agent import config as config_mod
from agent.wire.commands import CommandGate, sign_command
from agent.common.errors import EdgeError
from agent.evidence import keys, manifest as mf
from agent.evidence.verify import verify_item
from drivers.recorder.protocol import FrameDecoder, encode_frame

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)

toml_like = st.one_of(
    st.text(max_size=300),
    st.builds(lambda s, k, v: f"[{s}]\n{k} = {v}\n",
              st.sampled_from(list(config_mod.SCHEMA) + ["x", "device.x", ""]),
              st.sampled_from([k for sec in config_mod.SCHEMA.values() for k in sec] + ["zz", "a.b"]),
              st.sampled_from(['"x"', "1", "-5", "true", "[1,2]", '"../etc"', '"\\u0000"', "1.5", "{a=1}",
                               '"' + "字" * 300 + '"', "99999999999999999999"])),
)


@given(toml_like)
def test_config_parser(text):
    try:
        cfg = config_mod.loads(text)
    except EdgeError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert cfg.device.id


@pytest.fixture(scope="module")
def signed_item():
    from tests.support.spine import META, make_store
    from agent.store.ingest import ingest

    tmp = Path(tempfile.mkdtemp())
    store = make_store(tmp, evidence__block_size=4096)
    src = tmp / "a.mp4"
    src.write_bytes(b"abc" * 3000)
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    return store, store.items_dir / m["item_id"]


@given(st.one_of(st.binary(max_size=400), json_values.map(lambda v: json.dumps(v).encode())),
       st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_manifest_and_signature_parsers(signed_item, manifest_bytes, sig_bytes):
    store, item = signed_item
    with tempfile.TemporaryDirectory() as d:
        target = Path(d)
        (target / "files").mkdir()
        (target / mf.MANIFEST).write_bytes(manifest_bytes)
        (target / mf.SIGNATURE).write_bytes(sig_bytes)
        with pytest.raises(EdgeError):
            verify_item(target, store.keyring())


@given(json_values)
def test_manifest_fields_mutated_and_resigned(signed_item, junk):
    """Even with a valid signature (a key holder's bug), malformed manifests give clean errors."""
    store, item = signed_item
    base = json.loads((item / mf.MANIFEST).read_bytes())
    with tempfile.TemporaryDirectory() as d:
        target = Path(d)
        import shutil
        shutil.copytree(item / "files", target / "files")
        for key in ("metadata", "segments", "files", "hash_alg", "device", "item_hash", "session"):
            m = dict(base)
            m[key] = junk
            try:
                data = mf.encode(m)
            except EdgeError:
                continue
            (target / mf.MANIFEST).write_bytes(data)
            (target / mf.SIGNATURE).write_bytes(mf.signature_record(store.private_key, data))
            try:
                verify_item(target, store.keyring())
            except EdgeError:
                pass
            except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
                pytest.fail(f"{key}={junk!r}: crash {exc!r}")


@pytest.fixture(scope="module")
def gate():
    from tests.support.spine import make_store

    tmp = Path(tempfile.mkdtemp())
    store = make_store(tmp)
    op = keys.generate(tmp / "op.key", tmp / "ops" / "op.pub")
    return CommandGate(store, "dock-01", tmp / "ops", 300, {"rebirth": lambda a, w: {}}), op


@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_command_parser_never_raises(gate, payload):
    g, _ = gate
    resp = g.handle(payload)
    assert resp["ok"] is False and resp["error"]


@given(st.dictionaries(st.sampled_from(["cmd", "args", "device", "ts", "nonce", "key_id", "sig"]), json_values))
def test_command_fields_tampered(gate, changes):
    g, op = gate
    obj = json.loads(sign_command(op, "rebirth", {}, "dock-01"))
    obj.update(changes)
    resp = g.handle(json.dumps(obj).encode())
    if changes:
        assert isinstance(resp["ok"], bool)


@given(st.lists(st.binary(max_size=64), max_size=20), st.integers(0, 255), st.binary(max_size=100))
def test_recorder_frame_decoder(chunks, cmd, payload):
    dec = FrameDecoder()
    good = encode_frame(cmd, 7, payload)
    frames = []
    for c in chunks:
        frames += dec.feed(c)
    frames += dec.feed(good)
    assert any(f.payload == payload and f.cmd == cmd for f in frames) or len(chunks) > 0
