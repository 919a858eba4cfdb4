"""`edge-agent ingest` as a technician runs it (issue 16 item 11): stdout is the item id alone,
an empty or non-media file is refused unless --kind other, a duplicate is refused before anything
is copied (size, first and last MiB, then the whole hash), and nothing is lost on a refusal."""

from __future__ import annotations

import json
import os

import pytest

from agent.common.errors import DuplicateError
from agent.store import ingest as ingest_mod
from agent.store.ingest import find_duplicate, ingest, probe_media
from tests.support.spine import META, make_config, make_store, run_cli
from tools.media import make_clip

CASE = META["case_number"]


def _args(path, *extra, case=CASE):
    return ["ingest", str(path), "--case", case, "--collector", "张三", "--collector-id", "33010001",
            "--place", META["place"], "--proof", META["proof"], "--captured-at", "2026-11-27T09:00:00+08:00", *extra]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1, size="160x120")


@pytest.fixture
def cfg(tmp_path):
    path = make_config(tmp_path)
    assert run_cli(path, "init").returncode == 0
    return path


def _items(cfg):
    return json.loads(run_cli(cfg, "items", "list", "--json", check=True).stdout)


def test_stdout_is_the_item_id_alone(cfg, clip):
    p = run_cli(cfg, *_args(clip))  # no -q: the bar would go to stderr, and only on a terminal
    assert p.returncode == 0, p.stderr
    assert p.stdout == p.stdout.strip() + "\n" and p.stdout.startswith("dock-01-"), repr(p.stdout)
    assert p.stderr == ""
    clip2 = clip.with_name("clip2.mp4")
    clip2.write_bytes(clip.read_bytes())
    j = run_cli(cfg, *_args(clip2, "--json", case="杭司罚〔2026〕第0124号"))
    assert j.returncode == 0, j.stderr
    out = json.loads(j.stdout)
    assert out["files"][0]["name"] == "clip2.mp4" and out["files"][0]["size"] == clip.stat().st_size


def test_empty_or_non_media_file_is_refused_unless_kind_other(cfg, tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(50_000))
    p = run_cli(cfg, *_args(empty))
    assert p.returncode == 1 and "empty file (0 bytes), not a recording" in p.stderr and "--kind other" in p.stderr
    p = run_cli(cfg, *_args(junk))
    assert p.returncode == 1 and "not an audio or video file" in p.stderr and "--kind other" in p.stderr
    assert _items(cfg) == [], "a refused file leaves no item behind"
    assert empty.read_bytes() == b"" and junk.stat().st_size == 50_000, "and the source is untouched"
    ok = run_cli(cfg, *_args(junk, "--kind", "other"))
    assert ok.returncode == 0, ok.stderr
    shown = json.loads(run_cli(cfg, "items", "show", ok.stdout.strip(), "--json").stdout)
    assert shown["manifest"]["source"]["content"] == "other"
    assert run_cli(cfg, *_args(empty, "--kind", "other", case="杭司罚〔2026〕第0200号")).returncode == 0


def test_probe_media(clip, tmp_path):
    assert probe_media(clip) is None
    text = tmp_path / "note.mp4"
    text.write_text("not a video\n")
    assert probe_media(text)


def test_duplicate_is_refused_before_the_copy(cfg, clip, monkeypatch):
    first = run_cli(cfg, *_args(clip)).stdout.strip()
    again = run_cli(cfg, *_args(clip))
    assert again.returncode == 1 and first in again.stderr and "nothing copied" in again.stderr
    assert [r["id"] for r in _items(cfg)] == [first], "no discarded copy: refused before the copy"
    assert run_cli(cfg, *_args(clip, case="另案-2")).returncode == 0, "another case may hold the same file"


def test_same_ends_different_middle_is_not_a_duplicate(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    meta = dict(META, capture_start="2026-11-27T09:00:00+08:00")
    a = tmp_path / "a" / "x.bin"
    b = tmp_path / "b" / "x.bin"
    a.parent.mkdir()
    b.parent.mkdir()
    data = bytearray(os.urandom(3 << 20))
    a.write_bytes(data)
    data[(3 << 20) // 2] ^= 0xFF  # same size, same first and last MiB
    b.write_bytes(data)
    first = ingest(store, [a], meta)["item_id"]
    whole = []
    real = ingest_mod._whole_hash
    monkeypatch.setattr(ingest_mod, "_whole_hash", lambda alg, p: whole.append(p) or real(alg, p))
    assert find_duplicate(store, b, b.stat().st_size, CASE) is None
    assert whole == [b], "the ends matched, so the whole hash decided"
    whole.clear()
    assert find_duplicate(store, a, a.stat().st_size, CASE) == first
    c = tmp_path / "c.bin"
    c.write_bytes(os.urandom(3 << 20))
    assert find_duplicate(store, c, c.stat().st_size, CASE) is None and whole == [a], "different ends: no full read"
    second = ingest(store, [b], meta)["item_id"]
    assert second != first
    with pytest.raises(DuplicateError, match="nothing copied"):
        ingest(store, [a], meta)
    assert [r["state"] for r in store.items()] == ["sealed", "sealed"]
    store.close()
