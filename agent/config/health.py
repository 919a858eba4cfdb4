"""``[health]``: health reports and the thresholds of their alarms."""

from __future__ import annotations

from pydantic import Field

from .base import ConfigModel


class HealthConfig(ConfigModel):
    interval_s: int = Field(30, ge=1, le=3600, description="Seconds between health reports.")
    backlog_alarm_s: int = Field(24 * 3600, ge=60, description="Raise an alarm when the oldest unarchived item is older (s).")
    pending_alarm_s: int = Field(7 * 24 * 3600, ge=60, description="Raise an alarm when an item waits for annotation longer (s).")
    clock_alarm: bool = Field(True, description="Raise clock_unsynced when the kernel reports the clock unsynchronised (NTP/PTP).")
    clock_drift_alarm_ms: int = Field(2000, ge=10, description="Raise clock_drift when the measured clock offset exceeds this (ms).")
    disk_warn_factor: int = Field(2, ge=1, le=100,
                                  description="Warn (disk_low, severity warning) below this many times storage.reserve_mb free; "
                                              "critical below the reserve itself.")
