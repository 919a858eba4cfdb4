"""One strict reading of the evidence format (issue 14, section 5): canonical bytes only, no
duplicate or unknown field, no wrong type, the chain fields consistent, annotations signed by the
item's own device or an annotator of its unit. Each refusal is shown at ``verify`` (library and
CLI) here; tests/archive/test_archive_strict.py shows the same refusals at a real archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, settings, strategies as st

from agent.common.errors import VerifyError
from agent.evidence import hashing, keys, manifest as mf, strict
from agent.evidence.verify import verify_item
from agent.store.ingest import ingest
from tests.support.spine import META, make_store, run_cli


@pytest.fixture
def store(tmp_path):
    s = make_store(tmp_path, evidence__block_size=4096)
    yield s
    s.close()


def _item(store, tmp_path, size=10_000) -> tuple[Path, bytes]:
    src = tmp_path / "clip.mp4"
    src.write_bytes(bytes(i % 251 for i in range(size)))
    m = ingest(store, [src], dict(META, capture_start="2026-11-27T09:00:00+08:00"))
    item = store.items_dir / m["item_id"]
    return item, (item / mf.MANIFEST).read_bytes()


def _write(item: Path, data: bytes, key) -> None:
    """Replace the manifest by ``data`` and sign it with ``key``: only the strict reading can refuse it."""
    (item / mf.MANIFEST).write_bytes(data)
    (item / mf.SIGNATURE).write_bytes(mf.signature_record(key, data))


# the non-canonical and malformed variants of one good manifest: (name, bytes from the good ones, message)
def variants(raw: bytes) -> list[tuple[str, bytes, str]]:
    """Variants of a manifest of one file of at least two 4096-byte blocks (block_size 4096)."""
    doc = json.loads(raw)
    assert doc["block_size"] == 4096 and len(doc["segments"]) >= 2

    def canon(change) -> bytes:
        d = json.loads(raw)
        change(d)
        return rfc8785.dumps(d)

    return [
        ("duplicate key", raw.replace(b'{"block_size":4096,', b'{"block_size":4096,"block_size":4096,', 1),
         "duplicate key 'block_size'"),
        ("duplicate key, nested", raw.replace(b'"device":{', b'"device":{"id":"dock-02",', 1),
         "duplicate key 'id'"),
        ("white space", json.dumps(doc, sort_keys=True, ensure_ascii=False).encode(), "not in canonical form"),
        ("pretty", json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1).encode(), "not in canonical form"),
        ("key order", json.dumps(dict(reversed(list(doc.items()))), ensure_ascii=False,
                                 separators=(",", ":")).encode(), "not in canonical form"),
        ("escaped non-ASCII", json.dumps(doc, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode(),
         "not in canonical form"),
        ("escaped slash", raw.replace(b'"/', b'"\\/', 1), "not in canonical form"),
        ("trailing newline", raw + b"\n", "not in canonical form"),
        ("BOM", b"\xef\xbb\xbf" + raw, "not valid JSON"),
        ("float", raw.replace(b'"block_size":4096', b'"block_size":4096.0', 1), "not an integer"),
        ("lone surrogate", raw.replace(b'"place":"', b'"place":"\\ud800', 1), "no RFC 8785 canonical form"),
        ("unknown field", canon(lambda d: d.update(extra=1)), "unknown field(s) 'extra'"),
        ("unknown device field", canon(lambda d: d["device"].update(role="x")), "device: unknown field(s) 'role'"),
        ("unknown segment field", canon(lambda d: d["segments"][0].update(note="x")),
         "segments[0]: unknown field(s) 'note'"),
        ("missing field", canon(lambda d: d.pop("gaps")), "missing field(s) 'gaps'"),
        ("wrong type", canon(lambda d: d.update(device_seq="1")), "device_seq: must be an integer"),
        ("bool for int", canon(lambda d: d["files"][0].update(size=True)), "files[0].size: must be an integer"),
        ("seq 1 with prev", canon(lambda d: d.update(prev_manifest_hash="ab" * 32)),
         "must be null for device_seq 1"),
        ("seq 2 without prev", canon(lambda d: d.update(device_seq=2)), "missing for device_seq 2"),
        ("segments overlap", canon(lambda d: d["segments"][1].update(offset=0)), "segments[1].offset: 0, expected 4096"),
        ("bad case number", canon(lambda d: d["metadata"].update(case_number="_pending")),
         "case number '_pending' refused"),
        ("encryption not an object", canon(lambda d: d.update(encryption="none")), "encryption: must be an object"),
        # the mandatory metadata's content (docs/evidence-format.md, "Strict reading" 7)
        ("blank proof", canon(lambda d: d["metadata"].update(proof="   ")), "证明对象 proof object: missing"),
        ("proof too long", canon(lambda d: d["metadata"].update(proof="现" * 201)), "longer than 200 characters"),
        ("control character in place", canon(lambda d: d["metadata"].update(place="文三路\u0007")),
         "control characters are not allowed"),
        ("collector id too long", canon(lambda d: d["metadata"]["collector"].update(id="3" * 33)),
         "longer than 32 characters"),
        ("capture end before start", canon(lambda d: d["metadata"].update(capture_end="2026-11-27T00:59:59Z")),
         "is before the start"),
        ("unknown offset source", canon(lambda d: d["metadata"].update(clock_offset_ms=5, clock_offset_source="guess")),
         "clock_offset_source: one of"),
    ]


def test_every_variant_is_refused_by_verify_with_its_reason(store, tmp_path):
    item, raw = _item(store, tmp_path)
    assert verify_item(item, store.keyring()).device_seq == 1
    assert strict.parse_manifest(raw) == json.loads(raw)
    for name, data, reason in variants(raw):
        assert data != raw, name
        _write(item, data, store.private_key)
        with pytest.raises(VerifyError) as exc:
            verify_item(item, store.keyring())
        assert reason in str(exc.value), (name, str(exc.value))
    _write(item, raw, store.private_key)
    verify_item(item, store.keyring())


def test_cli_verify_names_the_rule(store, tmp_path):
    item, raw = _item(store, tmp_path)
    cfg = tmp_path / "agent.toml"
    for name, data, reason in variants(raw)[:1] + variants(raw)[2:3]:
        _write(item, data, store.private_key)
        p = run_cli(cfg, "verify", str(item), "--key", str(store.pub_path))
        assert p.returncode == 1 and reason in p.stderr and "Traceback" not in p.stderr, (name, p.stderr)


def test_signature_file_read_strictly(store, tmp_path):
    item, raw = _item(store, tmp_path)
    sig = json.loads((item / mf.SIGNATURE).read_bytes())
    for data, reason in (
        (b'{"alg":"ed25519","alg":"ed25519","key_id":"%s","sig":"%s"}' % (sig["key_id"].encode(), sig["sig"].encode()),
         "duplicate key 'alg'"),
        (json.dumps(dict(sig, by="me")).encode(), "unknown field(s) 'by'"),
        (json.dumps(dict(sig, key_id=7)).encode(), "key_id: must be 16 lower-case hex"),
    ):
        (item / mf.SIGNATURE).write_bytes(data)
        with pytest.raises(VerifyError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            verify_item(item, store.keyring())


def _annotate_with(item: Path, key, changes: dict, seq: int = 1, prev: str | None = None) -> None:
    raw = (item / mf.MANIFEST).read_bytes()
    m = json.loads(raw)
    rec = mf.make_annotation(item_id=m["item_id"], manifest_hash_hex=hashing.hexdigest("sha256", raw), seq=seq,
                             prev=prev, time="2026-11-27T10:00:00+08:00", actor="officer:33010001",
                             changes=changes, reason="test", hash_alg="sha256")
    data = hashing.canonical(rec)
    adir = item / mf.ANNOTATIONS_DIR
    adir.mkdir(exist_ok=True)
    (adir / f"{seq:04d}.json").write_bytes(data)
    (adir / f"{seq:04d}.sig").write_bytes(mf.signature_record(key, data))


def test_annotation_signed_by_another_device_is_refused(store, tmp_path):
    item, raw = _item(store, tmp_path)
    kdir = tmp_path / "keys"
    kdir.mkdir()
    (kdir / "dock-01.pub").write_bytes(store.pub_path.read_bytes())
    other = keys.generate(tmp_path / "b.key", kdir / "dock-02.pub")
    _annotate_with(item, other, {"proof": "改写 / rewritten by another device"})
    ring = keys.KeyRing.from_paths(keys_dir=kdir)
    with pytest.raises(VerifyError, match=f"signed by the key {keys.key_id(other.public_key())} of device dock-02, "
                                          "not by the item's device dock-01"):
        verify_item(item, ring)
    p = run_cli(tmp_path / "agent.toml", "verify", str(item), "--keys", str(kdir))
    assert p.returncode == 1 and "of device dock-02" in p.stderr, p.stderr
    # the item's own device key: accepted
    _annotate_with(item, store.private_key, {"proof": "补正 / completed"})
    assert verify_item(item, ring).annotations == 1


def test_annotator_key_enrolled_for_the_unit(store, tmp_path):
    item, raw = _item(store, tmp_path)
    unit = json.loads(raw)["device"]["unit_code"]
    kdir = tmp_path / "keys"
    (kdir / "annotators" / unit).mkdir(parents=True)
    (kdir / "annotators" / "330999000000").mkdir(parents=True)
    (kdir / "dock-01.pub").write_bytes(store.pub_path.read_bytes())
    clerk = keys.generate(tmp_path / "clerk.key", kdir / "annotators" / unit / "clerk-7.pub")
    stranger = keys.generate(tmp_path / "s.key", kdir / "annotators" / "330999000000" / "clerk-9.pub")
    ring = keys.KeyRing.from_paths(keys_dir=kdir)
    _annotate_with(item, clerk, {"case_number": "杭司罚〔2026〕第0999号"})
    assert verify_item(item, ring).annotations == 1
    _annotate_with(item, stranger, {"proof": "x"})
    with pytest.raises(VerifyError, match="enrolled for unit 330999000000, not for the item's unit"):
        verify_item(item, ring)
    # an annotator never signs a manifest
    (item / mf.ANNOTATIONS_DIR / "0001.json").unlink()
    (item / mf.ANNOTATIONS_DIR / "0001.sig").unlink()
    _write(item, raw, clerk)
    with pytest.raises(VerifyError, match="annotator key .* never a manifest"):
        verify_item(item, ring)


def test_annotation_read_strictly(store, tmp_path):
    item, _ = _item(store, tmp_path)
    _annotate_with(item, store.private_key, {"proof": "补正"})
    verify_item(item, store.keyring())
    a = item / mf.ANNOTATIONS_DIR / "0001.json"
    good = a.read_bytes()
    rec = json.loads(good)
    for data, reason in (
        (json.dumps(rec, sort_keys=True).encode(), "not in canonical form"),
        (rfc8785.dumps(dict(rec, by="x")), "unknown field(s) 'by'"),
        (rfc8785.dumps(dict(rec, prev="ab" * 32)), "must be null for seq 1"),
        (rfc8785.dumps(dict(rec, set={"device": "x"})), "'device' cannot be annotated"),
        (good.replace(b'{"actor"', b'{"actor":"x","actor"', 1), "duplicate key 'actor'"),
    ):
        a.write_bytes(data)
        (item / mf.ANNOTATIONS_DIR / "0001.sig").write_bytes(mf.signature_record(store.private_key, data))
        with pytest.raises(VerifyError) as exc:
            verify_item(item, store.keyring())
        assert reason in str(exc.value), (reason, str(exc.value))


def test_what_the_edge_seals_is_strict(store, tmp_path):
    """Every manifest the store seals passes the strict reading (the seal runs it before signing)."""
    item, raw = _item(store, tmp_path, size=0)
    m = strict.parse_manifest(raw)
    assert [s["size"] for s in m["segments"]] == [0]
    item2, raw2 = _item(store, tmp_path, size=4096 * 2 + 1)
    m2 = strict.parse_manifest(raw2)
    assert [s["size"] for s in m2["segments"]] == [4096, 4096, 1]
    assert m2["prev_manifest_hash"] == hashing.hexdigest("sha256", raw)


# --- canonical form, generated -------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53) + 1, 2 ** 53 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_canonical_round_trip_and_any_other_form_refused(obj):
    data = rfc8785.dumps(obj)
    assert strict.loads_canonical(data, "x") == obj
    for other in (json.dumps(obj).encode(), json.dumps(obj, ensure_ascii=False, indent=1).encode(),
                  json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()):
        if other != data:
            with pytest.raises(strict.FormatError, match="not in canonical form"):
                strict.loads_canonical(other, "x")


# --- hostile input: a refusal, never a crash ------------------------------------------------------
_GOOD = None


def _good_manifest() -> bytes:
    global _GOOD
    if _GOOD is None:
        import tempfile
        d = Path(tempfile.mkdtemp())
        s = make_store(d, evidence__block_size=4096)
        try:
            _GOOD = _item(s, d)[1]
        finally:
            s.close()
    return _GOOD


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_hostile_bytes_are_refused_never_crash(data):
    """Random bytes, and real manifests with bytes flipped, cut or spliced: the strict reading
    answers with a FormatError (the wire parser with a ProtocolError), never another exception."""
    from agent.wire import protocol as P

    good = _good_manifest()
    kind = data.draw(st.sampled_from(["random", "flip", "cut", "splice", "json"]))
    if kind == "random":
        raw = data.draw(st.binary(max_size=2000))
    elif kind == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        raw = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
    elif kind == "cut":
        raw = good[:data.draw(st.integers(0, len(good) - 1))]
    elif kind == "splice":
        i = data.draw(st.integers(0, len(good)))
        raw = good[:i] + data.draw(st.binary(min_size=1, max_size=40)) + good[i:]
    else:
        raw = rfc8785.dumps(data.draw(_json))
    for parse in (strict.parse_manifest, strict.parse_annotation):
        try:
            parse(raw)
        except strict.FormatError:
            pass
    try:
        P.parse_manifest(raw, dict(P.manifest_props(b"{}")), item="x", device="dock-01")
    except P.ProtocolError:
        pass
