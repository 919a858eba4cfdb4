"""Docking station (采集站) for body-worn recorders: bays, registry, ratio (docs/dock.md)."""

from __future__ import annotations


def make_component(agent, alarms, report, receipts=None):
    """The docking-station component of ``agent`` (kind = dock); ``alarms``, ``report`` and
    ``receipts`` are its ports (agent/common/ports.py: ``AlarmPort``, ``ReportPort``,
    ``ReceiptPort``), handed in by the runtime. Without ``receipts`` no after-archive erase happens."""
    from .station import DockStation

    return DockStation(agent, alarms, report, receipts)
