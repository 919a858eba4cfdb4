"""What `edge-agent uplink status` shows: items by state and the refusals (from the store) and the
running agent's connection figures, which the uplink writes to ``DATA_DIR/uplink-status.json``
every few seconds (:meth:`agent.uplink.Uplink.write_status`)."""

from __future__ import annotations

import json
from pathlib import Path

STATUS_FILE = "uplink-status.json"


def live_status(data_dir) -> dict | None:
    """The running (or last) agent's uplink figures; None when there are none or they are unreadable."""
    p = Path(data_dir) / STATUS_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def status_report(store) -> dict:
    """{"items_by_state": {state: n}, "rejected": [{"id", "error"}], "live": figures or None,
    "archive_keys": key ids pinned on this device (agent.uplink.trust)}."""
    from agent.common.errors import EdgeError
    from .trust import archive_trust

    try:
        pinned = archive_trust(store.cfg).key_ids
    except EdgeError:
        pinned = []
    return {"items_by_state": store.counts_by_state(), "rejected": store.refusals(),
            "live": live_status(store.data_dir), "archive_keys": pinned}
