"""Docking station (采集站) for body-worn recorders: bays, registry, ratio (docs/dock.md)."""

from __future__ import annotations


def make_component(agent):
    """The docking-station component of ``agent`` (kind = dock)."""
    from .station import DockStation

    return DockStation(agent)
