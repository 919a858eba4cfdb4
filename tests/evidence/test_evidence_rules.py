"""Case-number, unit-code and device-id rules are one function shared by the edge and the archive:
anything the edge seals, the archive accepts; what the archive would refuse, the edge refuses at
ingest with a bilingual error naming the value and the rule."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings, strategies as st

from agent.archive.registry import check_id
from agent.archive.storage import safe_case
from agent.common.errors import EdgeError, MetadataError
from agent.evidence import manifest as mf, rules
from agent.wire import protocol as P
from tests.support.spine import META, ingest_args, make_config, make_store, run_cli


def edge_case(s):
    """The case number the edge would seal for input ``s``, or None if it refuses it."""
    try:
        return mf.check_case_number(s)
    except MetadataError:
        return None


def archive_case(s) -> bool:
    try:
        return safe_case(s) == s
    except P.ProtocolError:
        return False


_hostile = st.text(st.characters(), max_size=80) | st.sampled_from([
    "_pending", ".", "..", ".hidden", "_tmp", "a/b", "a\\b", "a\x00b", "tab\there", "\u202eevil", "\ufeffx",
    "zero\u200bwidth", "x\u2028y", " 杭司罚〔2026〕第1号 ", "x" * 64, "x" * 65, "中" * 64, "\U0001f600" * 64,
    "\ud800", "a\udfffb", "\x85", "杭司罚〔2026〕第0123号"])


@settings(max_examples=2000, deadline=None)
@given(_hostile)
@example("_pending")
@example("\U0001f600" * 64)
def test_case_number_edge_and_archive_agree(s):
    sealed = edge_case(s)
    if sealed is not None:  # anything the edge seals, the archive accepts
        assert sealed == s.strip()
        assert archive_case(sealed), (s, sealed)
    if archive_case(s):     # what the archive accepts, the edge accepts unchanged
        assert sealed == s
    # and both sides refuse with the same words
    if sealed is None and isinstance(s, str) and s.strip():
        v = s.strip()
        with pytest.raises(P.ProtocolError) as a:
            safe_case(v)
        with pytest.raises(MetadataError) as e:
            mf.check_case_number(v)
        assert str(a.value) == str(e.value)


_ids = st.text(st.characters(), max_size=70) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True)


@settings(max_examples=1000, deadline=None)
@given(_ids)
def test_unit_code_and_device_id_edge_and_archive_agree(s):
    def edge(dev, unit):
        try:
            mf.check_device(dev, unit)
            return True
        except MetadataError:
            return False

    def archive(kind, v):
        try:
            check_id(kind, v)
            return True
        except EdgeError:
            return False

    assert edge("dock-01", s) == archive("unit", s)
    assert edge(s, "330100000000") == archive("device", s)
    if edge(s, "330100000000"):  # every item id of a device the edge accepts is one the archive accepts
        assert archive("item", f"{s}-20261127090526-158fda")


def test_messages_are_bilingual_and_name_value_and_rule():
    with pytest.raises(MetadataError) as exc:
        mf.check_case_number("_pending")
    msg = str(exc.value)
    assert msg.startswith("案件编号 '_pending' 不可用：") and " / case number '_pending' refused: must not start with" in msg
    with pytest.raises(EdgeError, match=r"单位代码 '\.\./x' 不可用.* / unit code '\.\./x' refused: letters, digits"):
        check_id("unit", "../x")
    with pytest.raises(MetadataError, match="device id 'd{43}' refused: longer than 42 characters"):
        rules.check_device_id("d" * 43)


def test_ingest_refuses_what_the_archive_would_refuse(tmp_path):
    cfg = make_config(tmp_path)
    run_cli(cfg, "init", "--data-dir", str(tmp_path / "data"), "--device-id", "dock-01", check=True)
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x" * 100)
    for case, rule in (("_pending", "must not start with '.' or '_'"), ("a/b", "path separator"),
                       ("x\u202ey", "U+202E"), ("x" * 65, "longer than 64")):
        p = run_cli(cfg, *ingest_args(src, case=case))
        assert p.returncode != 0 and "case number" in p.stderr and rule in p.stderr and "案件编号" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not list((tmp_path / "data" / "spool" / "items").glob("*"))
    ok = run_cli(cfg, *ingest_args(src, case=" 杭司罚〔2026〕第0123号 "), check=True)
    item = tmp_path / "data" / "spool" / "items" / ok.stdout.strip()
    assert json.loads((item / mf.MANIFEST).read_bytes())["metadata"]["case_number"] == "杭司罚〔2026〕第0123号"
    p = run_cli(cfg, "items", "annotate", ok.stdout.strip(), "--case", "../x", "--reason", "t")
    assert p.returncode != 0 and "case number '../x' refused" in p.stderr, p.stderr


def test_store_refuses_a_device_id_the_archive_cannot_file(tmp_path):
    store = make_store(tmp_path, device__id="d" * 43)
    try:
        with pytest.raises(MetadataError, match="设备编号 .* / device id 'd{43}' refused: longer than 42"):
            store.new_item(dict(META, capture_start="2026-11-27T09:00:00+08:00"), {"type": "file"})
    finally:
        store.close()


def test_room_refuses_to_start_recording_under_a_device_id_the_archive_cannot_file(tmp_path):
    from tests.room.test_room_session import FIELDS
    from agent.config import Config
    from agent.evidence import keys
    from agent.room.service import RoomService
    from agent.runtime import Agent

    cfg = Config.defaults(**{"storage__data_dir": str(tmp_path / "data"), "storage__reserve_mb": 0,
                             "device__id": "r" * 43, "device__kind": "room"})
    agent = Agent(cfg)
    keys.generate(agent.store.key_path, agent.store.pub_path)
    agent.add(RoomService(agent))
    agent.start()
    try:
        with pytest.raises(MetadataError, match="device id 'r{43}' refused: longer than 42 characters"):
            agent.commands["room.start"](dict(FIELDS), "test")
        assert agent.store.items() == []
    finally:
        agent.stop()
