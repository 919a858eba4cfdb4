"""``dock.assign``: write an officer and unit from the roster into a docked recorder (WriteZFYInfo),
read it back, keep the station's assignment (registry) and audit it. ``edge-agent dock assign``
sends it over the control socket; docs/dock.md "Assigning a recorder".

The recorder is driven through the command set (``drivers.recorder.assign``): over the bay's own
connection while the bay is working on it (requests are serialised by the transport), else over a
connection opened for the purpose. Nothing is recorded as assigned unless the read-back equals
what was written.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING

from drivers.recorder import RecorderClient, RecorderError, ZfyInfo, assign

from agent.common.errors import EdgeError

if TYPE_CHECKING:  # pragma: no cover
    from .station import DockStation

log = logging.getLogger(__name__)
_LOCK = threading.Lock()  # one assignment at a time per station process


def assign_docked(station: "DockStation", args: dict, actor: str) -> dict:
    serial, number = args.get("serial"), args.get("officer")
    if not isinstance(serial, str) or not serial.strip() or not isinstance(number, str) or not number.strip():
        raise EdgeError('dock.assign 需要 {serial, officer} / dock.assign needs args {"serial": ..., "officer": ...}')
    serial, number = serial.strip(), number.strip()
    officer = station.registry.officer(number)
    if officer is None:
        raise EdgeError(f"警员不在名册 / officer {number} is not in the roster: import it first "
                        "(edge-agent roster import officers.csv); nothing was written")
    with station.lock:
        bay = next((b for b in station.bays.values() if b.st.docked and b.st.serial == serial), None)
    if bay is None:
        raise EdgeError(f"记录仪未接入 / recorder {serial} is not docked at this station (dock it, wait until its "
                        "bay shows the serial, then assign); nothing was written")
    if bay.mass_storage:
        raise EdgeError(f"U盘式记录仪无命令通道 / recorder {serial} in {bay.name} is plain mass storage: it cannot "
                        "be written; change its entry in dock.mass_storage_map instead")
    want = ZfyInfo(serial, number, officer["name"], officer["unit_code"], officer.get("unit_name") or "")
    try:
        want.encode()
    except ValueError as exc:
        raise EdgeError(f"不符合记录仪信息格式 / the roster entry does not fit the recorder's record (ZFY_INFO: "
                        f"officer number 6, name 32, unit number 12, unit name 32 GBK bytes): {exc}; nothing was "
                        "written") from None
    cfg = station.cfg.dock
    store = station.store
    with _LOCK:
        try:
            before, after = _write(bay, want, cfg)
        except RecorderError as exc:
            store.audit.append("assign", None, actor=actor, serial=serial, bay=bay.name, ok=False, error=str(exc),
                               wanted=asdict(want))
            raise EdgeError(f"写入记录仪失败 / writing the assignment into recorder {serial} failed: {exc}; the "
                            "station's assignment is unchanged") from None
        row = station.registry.assign(serial, after.officer_number, after.officer_name, after.unit_number,
                                      after.unit_name, actor=actor)
        store.audit.append("assign", None, actor=actor, serial=serial, bay=bay.name, ok=True,
                           before=asdict(before), after=asdict(after))
    with bay.lock:
        bay.st.officer_number, bay.st.officer_name = after.officer_number, after.officer_name
        bay.st.unit_number, bay.st.unit_name = after.unit_number, after.unit_name
        bay.st.assignment = {"recorder": asdict(after), "station": {k: row[k] for k in (
            "officer_number", "officer_name", "unit_number", "unit_name", "assigned_at")}, "agree": True}
    station.clear_alarm("recorder_officer_mismatch", bay)
    station.bay_changed(bay, important=True)
    log.info("bay %s: recorder %s assigned to %s %s (unit %s) by %s", bay.name, serial, after.officer_number,
             after.officer_name, after.unit_number, actor)
    return {"serial": serial, "bay": bay.name, "before": asdict(before), "after": asdict(after),
            "assigned_at": row["assigned_at"]}


def _write(bay, want: ZfyInfo, cfg):
    """On the bay's connection while its worker holds one; on a connection of our own otherwise,
    or when the worker closed its connection under us (it finished between the look and the use)."""
    client = bay.client if bay.busy else None
    if client is not None:
        try:
            client.authenticate(cfg.admin_password)
            return assign(client, want.officer_number, want.officer_name, want.unit_number, want.unit_name)
        except RecorderError:
            if not client.transport.closed:
                raise
            log.info("bay %s: its connection closed during the assignment; opening one", bay.name)
    with RecorderClient(bay.st.path, timeout=cfg.serial_timeout_ms / 1000, retries=3) as own:
        own.authenticate(cfg.admin_password)
        return assign(own, want.officer_number, want.officer_name, want.unit_number, want.unit_name)
