"""Health, alarms and the device's retained state (issue 6).

``make_component(agent)`` builds the health component, sets ``agent.health`` to it and returns it;
other components raise and clear alarms through ``agent.health.alarms`` (see alarms.py).
"""

from __future__ import annotations


def make_component(agent):
    from .publisher import HealthComponent

    comp = HealthComponent(agent)
    agent.health = comp
    return comp
