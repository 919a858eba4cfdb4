"""``python -m tools.recorder_sim``: one simulated recorder on a pty until SIGINT/SIGTERM (the
flags are the constructor's keywords and faults: tools/recorder_sim/__init__.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from . import RecorderSim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.recorder_sim", description="body-worn recorder simulator on a pty")
    ap.add_argument("--link", required=True, help="symlink to create for the serial port, e.g. /tmp/x/ttyREC0")
    ap.add_argument("--media", required=True, help="directory of media files the recorder holds")
    ap.add_argument("--mount", help="directory where files appear after SetMSDC (default: a temp dir)")
    ap.add_argument("--serial", default="1234567")
    ap.add_argument("--officer", default="000123", help="officer number (警号, 6)")
    ap.add_argument("--officer-name", default="张三")
    ap.add_argument("--unit", default="330100000001", help="unit number (12)")
    ap.add_argument("--unit-name", default="杭州市城市管理局")
    ap.add_argument("--password", default="000000")
    ap.add_argument("--battery", type=int, default=76)
    ap.add_argument("--not-charging", action="store_true")
    ap.add_argument("--tz", default="+0800")
    ap.add_argument("--important", action="append", default=[], help="file name marked important (repeatable)")
    ap.add_argument("--locked", action="append", default=[], help="file name locked (repeatable)")
    ap.add_argument("--garbage", action="store_true", help="fault: garbage bytes around responses")
    ap.add_argument("--silent", action="store_true", help="fault: never answer")
    ap.add_argument("--corrupt", type=int, default=0, help="fault: first N responses with a bad CRC")
    ap.add_argument("--delay", type=float, default=0.0, help="fault: seconds before each response")
    ap.add_argument("--disconnect-file", help="fault: hang up while this file is read ...")
    ap.add_argument("--disconnect-at", type=int, default=0, help="... after this many bytes")
    ap.add_argument("--flip-bit-at", type=int, help="fault: with --disconnect-file, flip bit 0 of this byte before the unplug")
    ap.add_argument("--clock-offset", type=float, default=0.0, help="fault: device clock offset, seconds")
    ap.add_argument("--clock-fixed", choices=["1970", "2099"], help="fault: device clock starts at that year")
    ap.add_argument("--no-clock-read", action="store_true", help="fault: READ_CLOCK unknown to the recorder")
    ap.add_argument("--msdc-erase-fail", action="store_true", help="fault: ERASE answers 10 in mass-storage mode")
    ap.add_argument("--msdc-drop", type=float, metavar="S",
                    help="fault: the command channel goes away after SET_MSDC and comes back S seconds later")
    ap.add_argument("--msdc-no-path", action="store_true",
                    help="SET_MSDC answers no mount path (the station finds the volume by USB serial)")
    ap.add_argument("--full", action="store_true", help="fault: storage free 0")
    ap.add_argument("--wrong-password", action="store_true", help="fault: device password differs")
    ap.add_argument("--time-sync-fail", action="store_true")
    ap.add_argument("--msdc-fail", action="store_true")
    ap.add_argument("--inject-name", action="append", default=[], help="fault: extra name in the listing")
    ap.add_argument("--list-trailing", type=bytes.fromhex, default=b"", metavar="HEX",
                    help="fault: these bytes after the records of every file-list page")
    ap.add_argument("--list-short", action="store_true", help="fault: a file-list page announces one record more")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", default="1920x1080", help="recording resolution WxH")
    ap.add_argument("--id-code", default="JL0001", help="GetIDCode answer (ASCII, up to 6)")
    ap.add_argument("--unsupported", action="append", default=[],
                    help="fault: a function the recorder does not know (e.g. read_resolution; repeatable)")
    ap.add_argument("--short-answers", action="store_true", help="fault: query answers one byte short")
    ap.add_argument("--no-sd", action="store_true", help="fault: no SD card, SetMSDC fails")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sim = RecorderSim(
        a.media, a.link, serial=a.serial, officer_number=a.officer, officer_name=a.officer_name,
        unit_number=a.unit, unit_name=a.unit_name, password=a.password, battery_level=a.battery,
        charging=not a.not_charging, mount_dir=a.mount, tz=a.tz, important=a.important, locked=a.locked,
        garbage=a.garbage, silent=a.silent, corrupt_responses=a.corrupt, response_delay=a.delay,
        disconnect_file=a.disconnect_file, disconnect_at=a.disconnect_at, flip_bit_at=a.flip_bit_at,
        clock_offset=a.clock_offset,
        clock_fixed=a.clock_fixed, no_clock_read=a.no_clock_read, msdc_drop=a.msdc_drop, msdc_erase_fail=a.msdc_erase_fail,
        msdc_no_path=a.msdc_no_path, storage_full=a.full, wrong_password=a.wrong_password,
        time_sync_fail=a.time_sync_fail, msdc_fail=a.msdc_fail, inject_names=a.inject_name,
        list_trailing=a.list_trailing, list_short=a.list_short, seed=a.seed,
        resolution=tuple(int(x) for x in a.resolution.lower().split("x", 1)), id_code=a.id_code,
        unsupported=a.unsupported, short_answers=a.short_answers, no_sd=a.no_sd,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sim.start()
    print(f"recorder sim ready: port={sim.port_path} mount={sim.mount_dir} files={len(sim.files)}", flush=True)
    while not done.wait(0.5):
        if sim.disconnected.is_set():
            print("recorder sim: disconnected (fault)", flush=True)
            break
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
