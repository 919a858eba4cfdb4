"""Docking station (采集站) for body-worn recorders: bays, registry, ratio (docs/dock.md)."""

from __future__ import annotations


def make_component(agent, alarms, report):
    """The docking-station component of ``agent`` (kind = dock); ``alarms`` and ``report`` are its
    ports (agent/common/ports.py: ``AlarmPort``, ``ReportPort``), handed in by the runtime."""
    from .station import DockStation

    return DockStation(agent, alarms, report)
