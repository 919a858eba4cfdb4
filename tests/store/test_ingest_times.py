"""Capture times at ingest (issue 16 item 1): times are compared as instants with zones, the
duration comes from the media (FFmpeg through PyAV), and an end before the start is refused
naming both values, with nothing copied. Real clips made by ffmpeg (tools/media.py)."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from agent.common.errors import MetadataError
from agent.common.timeutil import parse_iso
from agent.store.ingest import ingest, media_duration
from tests.support.spine import META, make_config, make_store, run_cli
from tools.media import make_audio, make_clip, make_photo

CN = dt.timezone(dt.timedelta(hours=8))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    clip = make_clip(d / "clip.mp4", seconds=7, size="160x120", rate=10)
    wav = make_audio(d / "talk.wav", seconds=3)
    jpg = make_photo(d / "still.jpg", size="160x120")
    end = dt.datetime(2026, 11, 27, 9, 30, 0, tzinfo=CN).timestamp()
    for p in (clip, wav, jpg):
        os.utime(p, (end, end))
    return {"clip": clip, "wav": wav, "jpg": jpg, "end": end}


def _meta(**times):
    return {**META, **times}


def test_media_duration_is_read_from_the_file(media, tmp_path):
    assert media_duration(media["clip"]) == pytest.approx(7, abs=0.15)
    assert media_duration(media["wav"]) == pytest.approx(3, abs=0.05)
    assert media_duration(media["jpg"]) == 0
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    assert media_duration(junk) is None


def test_without_times_the_clip_ends_at_its_mtime_and_starts_its_duration_earlier(tmp_path, media):
    store = make_store(tmp_path)
    m = ingest(store, [media["clip"]], _meta(), content="media")
    start, end = parse_iso(m["metadata"]["capture_start"]), parse_iso(m["metadata"]["capture_end"])
    assert end.timestamp() == media["end"]
    assert (end - start).total_seconds() == pytest.approx(7, abs=1), (start, end)
    assert m["metadata"]["duration_ms"] == pytest.approx(7000, abs=150)


def test_a_given_start_takes_its_end_from_the_media(tmp_path, media):
    store = make_store(tmp_path)
    m = ingest(store, [media["clip"]], _meta(capture_start="2026-11-27T09:00:00+08:00"), content="media")
    assert m["metadata"]["capture_start"] == "2026-11-27T09:00:00+08:00"
    assert m["metadata"]["capture_end"] == "2026-11-27T09:00:07+08:00", "not the file's mtime, not the start"


def test_a_given_end_alone_keeps_the_media_span(tmp_path, media):
    store = make_store(tmp_path)
    m = ingest(store, [media["wav"]], _meta(capture_end="2026-11-27T02:00:03Z"), content="media")
    assert m["metadata"]["capture_end"] == "2026-11-27T02:00:03Z"
    assert parse_iso(m["metadata"]["capture_start"]) == dt.datetime(2026, 11, 27, 2, 0, 0, tzinfo=dt.timezone.utc)


def test_times_in_different_zones_compare_as_instants(tmp_path, media):
    """09:00+08:00 is 01:00Z: an end of 01:30Z is after it, though as text "2026-11-27T01..." < "2026-11-27T09..."."""
    store = make_store(tmp_path)
    m = ingest(store, [media["clip"]], _meta(capture_start="2026-11-27T09:00:00+08:00",
                                            capture_end="2026-11-27T01:30:00+00:00"), content="media")
    assert m["metadata"]["capture_start"] == "2026-11-27T09:00:00+08:00"
    assert m["metadata"]["capture_end"] == "2026-11-27T01:30:00+00:00", "kept as given, not replaced"


def test_end_before_start_is_refused_naming_both_and_nothing_is_kept(tmp_path, media):
    store = make_store(tmp_path)
    with pytest.raises(MetadataError) as e:
        # as text the end sorts after the start; as instants it is 7 h 30 min before it
        ingest(store, [media["clip"]], _meta(capture_start="2026-11-27T09:00:00+00:00",
                                            capture_end="2026-11-27T09:30:00+08:00"), content="media")
    msg = str(e.value)
    assert "2026-11-27T09:30:00+08:00" in msg and "2026-11-27T09:00:00+00:00" in msg
    assert "capture end" in msg and "capture start" in msg and "采集结束时间" in msg
    assert store.items() == [] and not any(store.incoming.iterdir())


def test_a_time_without_zone_or_not_a_time_is_refused(tmp_path, media):
    store = make_store(tmp_path)
    with pytest.raises(MetadataError, match="no UTC offset"):
        ingest(store, [media["clip"]], _meta(capture_start="2026-11-27T09:00:00"), content="media")
    with pytest.raises(MetadataError, match="not an ISO 8601 time: 'yesterday'"):
        ingest(store, [media["clip"]], _meta(capture_end="yesterday"), content="media")
    assert store.items() == []


def test_several_files_span_from_the_first_start_to_the_last_end(tmp_path, media):
    store = make_store(tmp_path)
    later = media["end"] + 60
    wav2 = tmp_path / "talk2.wav"
    wav2.write_bytes(media["wav"].read_bytes())
    os.utime(wav2, (later, later))
    m = ingest(store, [media["clip"], wav2], _meta(), content="media")
    start, end = parse_iso(m["metadata"]["capture_start"]), parse_iso(m["metadata"]["capture_end"])
    assert end.timestamp() == later
    assert (end - start).total_seconds() == pytest.approx(67, abs=1)
    assert m["metadata"]["duration_ms"] == pytest.approx(10000, abs=200)


def test_cli_end_before_start_exits_1_with_both_values(tmp_path, media):
    cfg = make_config(tmp_path)
    assert run_cli(cfg, "init").returncode == 0
    p = run_cli(cfg, "ingest", str(media["clip"]), "--case", META["case_number"], "--collector", "张三",
                "--collector-id", "33010001", "--place", META["place"], "--proof", META["proof"],
                "--captured-at", "2026-11-27T10:00:00+08:00", "--captured-until", "2026-11-27T09:59:59+08:00")
    assert p.returncode == 1, p.stdout
    assert "2026-11-27T09:59:59+08:00" in p.stderr and "2026-11-27T10:00:00+08:00" in p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert json.loads(run_cli(cfg, "items", "list", "--json", check=True).stdout) == []
