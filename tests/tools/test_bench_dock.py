"""tools/bench/dock.py at a tiny size: recorders docked at once -> sealed by the station -> (with the
archive) archived over MQTT at a private archive and verified there; everything it started is
stopped and its work directory removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.bench import dock

HAVE_MOSQUITTO = bool(shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists())


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed")
def test_docked_items_are_all_archived_and_verified(tmp_path):
    r = dock.run(bays=2, mib=8, workers=2, workdir=str(tmp_path), drop=False, archive=True)
    assert r["bays_done"] == 2 and r["errors"] == {}
    assert r["archive"] is True and r["sealed_with_uplink_running"] is True
    assert r["ledger_states"] == {"archived": 2} and r["items_archived"] == 2 and r["items_sealed"] == 2
    assert r["archived_verified_items"] == 2 and "archive_verify_error" not in r
    assert 0 < r["dock_to_all_sealed_s"] <= r["dock_to_all_archived_s"]
    assert r["archived_mb_s"] > 0 and r["ratio_vs_cp_sync"] > 0
    assert list(tmp_path.iterdir()) == []  # work directory (data, archive, broker config) removed


def test_no_archive_is_the_station_alone(tmp_path):
    r = dock.run(bays=2, mib=8, workers=2, workdir=str(tmp_path), drop=False, archive=False)
    assert r["bays_done"] == 2 and r["items_sealed"] == 2
    assert r["archive"] is False and r["sealed_with_uplink_running"] is False
    assert "dock_to_all_archived_s" not in r and r["dock_to_all_sealed_s"] > 0
    assert list(tmp_path.iterdir()) == []
