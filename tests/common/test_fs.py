"""Crash-safe writes never go through a planted symlink (issue 14 §4)."""

from __future__ import annotations

import os

import pytest

from agent.common.fs import atomic_write, atomic_write_at


def test_atomic_write_steps_around_a_planted_temporary_name_and_replaces_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    d = tmp_path / "d"
    d.mkdir()
    (d / f".state.json.tmp-{os.getpid()}").symlink_to(outside / "a")       # dangling: O_CREAT would follow it
    (outside / "b").write_bytes(b"keep")
    (d / "other.json").symlink_to(outside / "b")                           # the name itself is a link
    atomic_write(d / "state.json", b"one", mode=0o640)
    atomic_write(d / "other.json", b"two")
    assert (d / "state.json").read_bytes() == b"one" and (d / "state.json").stat().st_mode & 0o777 == 0o640
    assert not (d / "other.json").is_symlink() and (d / "other.json").read_bytes() == b"two"
    assert sorted(os.listdir(outside)) == ["b"] and (outside / "b").read_bytes() == b"keep"
    assert (d / f".state.json.tmp-{os.getpid()}").is_symlink()              # left as found, not written
    assert sorted(os.listdir(d)) == sorted(["state.json", "other.json", f".state.json.tmp-{os.getpid()}"])


def test_a_new_file_never_replaces_what_is_there(tmp_path):
    (tmp_path / "x").symlink_to(tmp_path / "target")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            atomic_write_at(fd, "x", b"data", replace=False)
        atomic_write_at(fd, "y", b"data", replace=False)
    finally:
        os.close(fd)
    assert not (tmp_path / "target").exists() and (tmp_path / "y").read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == ["x", "y"]
