"""Probe a recorder on a SCSI generic node with the configured vendor tables, reading only.

For a technician with a real recorder (and for writing a new vendor table): INQUIRY, the table it
matches, then each read function of the command set, one line each, the error text where one
fails. Never writes (no WriteZFYInfo, no SyncDevTime); SetMSDC only with ``--msdc``.

    python -m tools.recorder_probe /dev/sg2 [--config /etc/edge-agent/agent.toml] [--password 000000] [--json]
        [--msdc] [--udev]
    python -m tools.recorder_probe --simulate MEDIA_DIR [...]    # the same, on tools/recorder_sim's SCSI device

``--udev`` adds what udev pairs with the node (pyudev, where udev runs): the recorder's USB serial,
its command channel and volumes with their mount points, or why a node is refused.

Library: ``probe(device, profiles, password)`` takes any object with the SG_IO seam's ``execute``
(``drivers.recorder.sgio.SgDevice`` or the simulator's ``SimSgDevice``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, is_dataclass

from drivers.recorder import Function, Recorder, RecorderError, Unsupported
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
    """{device, inquiry, table, password, results: {function: value | {"error": text}}, failed: [...]}
    (``failed`` empty: the check passed; see :func:`failures`)."""
    out: dict = {"device": device.path}
    vendor, product, rev = inquiry(device)
    out["inquiry"] = {"vendor": vendor, "product": product, "revision": rev}
    profile = choose_profile(profiles, vendor, product, usb_vid, usb_pid)
    if profile is None:
        out["table"] = None
        out["failed"] = ["table"]
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
        except Unsupported as exc:  # the recorder does not offer it: noted, not a failure
            results[fn.value] = {"error": str(exc), "unsupported": True}
        except RecorderError as exc:
            results[fn.value] = {"error": str(exc)}
    out["results"] = results
    out["failed"] = failures(out)
    return out


def failures(out: dict) -> list[str]:
    """What fails the check: no table, a refused password, a function of the table that errs (one the
    recorder does not offer, ILLEGAL REQUEST / result 15, is noted but does not fail it)."""
    if not out.get("table"):
        return ["table"]
    bad = [] if out.get("password") in (None, "accepted") else ["password"]
    for name, value in (out.get("results") or {}).items():
        if isinstance(value, dict) and "error" in value and not value.get("unsupported") \
                and value["error"] != "not in this vendor table":
            bad.append(name)
    return bad


def udev_view(device_path: str) -> dict:
    """What udev pairs with this sg node: {usb_serial, usb_port, command, volumes: {devnode: mount}}
    or {error}. Needs a udev daemon and pyudev (the station's own functions, drivers/recorder/udev.py)."""
    from drivers.recorder import udev

    mode, why = udev.detection_mode()
    if mode != "udev":
        return {"error": why}
    nodes = udev.list_nodes()
    recorders, refused = udev.match_nodes(nodes)
    rec = next((r for r in recorders if r.sg and udev.same_node(r.sg, device_path)), None)
    if rec is None:
        why = next((w for d, w in refused if udev.same_node(d, device_path)), "udev shows no USB recorder on this node")
        return {"error": why}
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        info = ""
    return {"usb_serial": rec.usb_serial, "usb_port": rec.usb_port, "usb_id": f"{rec.vid}:{rec.pid}",
            "command": rec.command, "volumes": {v: udev.mount_point(v, info) for v in rec.volumes}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.recorder_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("device", nargs="?", help="SCSI generic node of the recorder, e.g. /dev/sg2")
    ap.add_argument("--config", help="agent.toml whose [scsi] tables to use (default: the built-in ones)")
    ap.add_argument("--password", help="admin password (default: dock.admin_password of the config)")
    ap.add_argument("--usb", metavar="VID:PID", default=":", help="USB ids, for tables matched by USB ids")
    ap.add_argument("--msdc", action="store_true", help="also SetMSDC (switches the recorder to mass storage)")
    ap.add_argument("--udev", action="store_true", help="also show what udev pairs with the node (USB serial, volumes)")
    ap.add_argument("--simulate", metavar="MEDIA", help="probe tools/recorder_sim's SCSI device serving MEDIA "
                                                        "instead of a node (the simulator's password is 000000)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    a = ap.parse_args(argv)
    if not a.device and not a.simulate:
        ap.error("give the sg node (e.g. /dev/sg2), or --simulate MEDIA")
    from agent import config as config_mod
    from agent.common.errors import ConfigError
    from drivers.recorder.sgio import SgDevice

    try:
        cfg = config_mod.load(a.config) if a.config else config_mod.Config.defaults()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    vid, _, pid = a.usb.partition(":")
    sim = None
    try:
        if a.simulate:
            from tools.recorder_sim import RecorderSim

            try:
                sim = RecorderSim(a.simulate, None, probe=False).start()
            except (ValueError, OSError) as exc:
                print(f"error: --simulate: {exc}", file=sys.stderr)
                return 2
            dev = sim.sg_device(a.device or "/dev/sg-sim")
        else:
            dev = SgDevice(a.device)
        try:
            out = probe(dev, cfg.scsi.profiles(), a.password or cfg.dock.admin_password, msdc=a.msdc,
                        usb_vid=vid, usb_pid=pid)
        finally:
            dev.close()
    except RecorderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if sim is not None:
            sim.stop()
    if a.udev:
        out["udev"] = udev_view(dev.path) if not a.simulate else {"error": "--simulate: no udev device"}
    if a.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 1 if out.get("failed", ["table"]) else 0
    print(f"{out['device']}: INQUIRY {out['inquiry']['vendor']!r} {out['inquiry']['product']!r} "
          f"{out['inquiry']['revision']!r} -> table {out.get('table') or '-'}")
    if not out.get("table"):
        print(out["error"])
        return 1
    print(f"  password: {out.get('password', '-')}")
    for name, value in out["results"].items():
        print(f"  {name}: {value}")
    if "udev" in out:
        print(f"  udev: {out['udev']}")
    if out["failed"]:
        print(f"FAILED / 未通过: {', '.join(out['failed'])}")
        return 1
    print("ok / 通过")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
