"""Probe a recorder on a SCSI generic node with the configured vendor tables, reading only.

For a technician with a real recorder (and for writing a new vendor table): INQUIRY, the table it
matches, then each read function of the command set, one line each, the error text where one
fails. Never writes (no WriteZFYInfo, no SyncDevTime); SetMSDC only with ``--msdc``.

    python -m tools.recorder_probe /dev/sg2 [--config /etc/edge-agent/agent.toml] [--password 000000] [--json]

Library: ``probe(device, profiles, password)`` takes any object with the SG_IO seam's ``execute``
(``drivers.recorder.sgio.SgDevice`` or the simulator's ``SimSgDevice``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, is_dataclass

from drivers.recorder import Function, Recorder, RecorderError
from drivers.recorder.scsi import ScsiTransport, choose_profile, inquiry

READS = (
    (Function.INIT_DEVICE, "init_device"),
    (Function.GET_ID_CODE, "get_id_code"),
    (Function.GET_ZFY_INFO, "get_zfy_info"),
    (Function.READ_BATTERY, "battery"),
    (Function.READ_RESOLUTION, "read_resolution"),
)


def probe(device, profiles, password: str | None, *, msdc: bool = False, usb_vid: str = "",
          usb_pid: str = "") -> dict:
    """{device, inquiry, table, password, results: {function: value | {"error": text}}}."""
    out: dict = {"device": device.path}
    vendor, product, rev = inquiry(device)
    out["inquiry"] = {"vendor": vendor, "product": product, "revision": rev}
    profile = choose_profile(profiles, vendor, product, usb_vid, usb_pid)
    if profile is None:
        out["table"] = None
        out["error"] = (f"无匹配的厂商命令表 / no vendor SCSI table matches INQUIRY {vendor!r} {product!r}; "
                        "add one to [[scsi.vendors]]")
        return out
    out["table"] = profile.name
    rec = Recorder(ScsiTransport(device, profile))
    results: dict = {}
    if password:
        try:
            rec.authenticate(password)
            out["password"] = "accepted"
        except RecorderError as exc:
            out["password"] = str(exc)
    calls = list(READS) + ([(Function.SET_MSDC, "set_msdc")] if msdc else [])
    for fn, method in calls:
        if not rec.supports(fn):
            results[fn.value] = {"error": "not in this vendor table"}
            continue
        try:
            value = getattr(rec, method)()
            results[fn.value] = asdict(value) if is_dataclass(value) else value
        except RecorderError as exc:
            results[fn.value] = {"error": str(exc)}
    out["results"] = results
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.recorder_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("device", help="SCSI generic node of the recorder, e.g. /dev/sg2")
    ap.add_argument("--config", help="agent.toml whose [scsi] tables to use (default: the built-in ones)")
    ap.add_argument("--password", help="admin password (default: dock.admin_password of the config)")
    ap.add_argument("--usb", metavar="VID:PID", default=":", help="USB ids, for tables matched by USB ids")
    ap.add_argument("--msdc", action="store_true", help="also SetMSDC (switches the recorder to mass storage)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    a = ap.parse_args(argv)
    from agent import config as config_mod
    from agent.common.errors import ConfigError
    from drivers.recorder.sgio import SgDevice

    try:
        cfg = config_mod.load(a.config) if a.config else config_mod.Config.defaults()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vid, _, pid = a.usb.partition(":")
    try:
        dev = SgDevice(a.device)
        try:
            out = probe(dev, cfg.scsi.profiles(), a.password or cfg.dock.admin_password, msdc=a.msdc,
                        usb_vid=vid, usb_pid=pid)
        finally:
            dev.close()
    except RecorderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0 if out.get("table") else 1
    print(f"{out['device']}: INQUIRY {out['inquiry']['vendor']!r} {out['inquiry']['product']!r} "
          f"{out['inquiry']['revision']!r} -> table {out.get('table') or '-'}")
    if not out.get("table"):
        print(out["error"])
        return 1
    print(f"  password: {out.get('password', '-')}")
    for name, value in out["results"].items():
        print(f"  {name}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
