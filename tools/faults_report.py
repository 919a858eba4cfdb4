"""Print the table of the randomised fault-injection trials (`make faults`).

    python -m tools.faults_report                      # reads artifacts/faults.json
    python -m tools.faults_report --json other.json --write artifacts/faults.txt

tests/faults/test_faults_random.py writes artifacts/faults.json (and the same table to
artifacts/faults.txt). Exit status: 0 when no item was lost and no corrupt item accepted,
1 when either count is non-zero or a trial failed, 2 when there is no result file yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from pathlib import Path

DEFAULT_JSON = Path("artifacts") / "faults.json"

ROWS = (
    ("trials", "试验次数 / trials"),
    ("items_produced", "边缘产生条目 / items produced"),
    ("items_archived", "归档条目 / items archived"),
    ("items_lost", "丢失条目 / items lost (must be 0)"),
    ("corrupt_injected", "注入损坏条目 / corrupt items injected"),
    ("corrupt_accepted", "接受损坏条目 / corrupt items accepted (must be 0)"),
    ("duplicates", "重复归档 / items archived twice (must be 0)"),
    ("failed_trials", "失败试验 / failed trials (must be 0)"),
)


def _width(text: str) -> int:
    """Columns on a terminal: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def render(result: dict) -> str:
    """The table as text (the same in the test output, artifacts/faults.txt and this tool)."""
    vals = dict(result)
    vals["failed_trials"] = len(result.get("failures", []))
    width = max(_width(label) for _, label in ROWS)
    lines = ["故障注入结果 / fault-injection results", "-" * (width + 12)]
    for key, label in ROWS:
        lines.append(f"{_pad(label, width)}  {vals.get(key, 0):>8}")
    lines.append("-" * (width + 12))
    by = result.get("by_fault") or {}
    if by:
        lines.append("故障类型 / fault: trials")
        for name in sorted(by):
            lines.append(f"  {name:<24} {by[name]:>5}")
    meta = []
    if "seed" in result:
        meta.append(f"seed {result['seed']}")
    if "seconds" in result:
        meta.append(f"{result['seconds']:.0f} s")
    if result.get("skipped_faults"):
        meta.append("not run here: " + ", ".join(f"{k} ({v})" for k, v in result["skipped_faults"].items()))
    if meta:
        lines.append("; ".join(meta))
    for f in result.get("failures", [])[:20]:
        lines.append(f"FAILED trial {f.get('trial')} ({f.get('fault')}): {f.get('problem')}")
    verdict = ok(result)
    lines.append("结论 / verdict: " + ("通过 / PASS" if verdict else "未通过 / FAIL"))
    return "\n".join(lines)


def ok(result: dict) -> bool:
    return (result.get("items_lost", 0) == 0 and result.get("corrupt_accepted", 0) == 0
            and result.get("duplicates", 0) == 0 and not result.get("failures"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="result file (default artifacts/faults.json)")
    ap.add_argument("--write", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: {args.json}: no results yet; run `make faults` first / 尚无结果，请先运行 make faults",
              file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"error: {args.json}: not valid JSON ({exc})", file=sys.stderr)
        return 2
    if not isinstance(result, dict) or "trials" not in result:
        print(f"error: {args.json}: not a fault-injection result (no 'trials')", file=sys.stderr)
        return 2
    text = render(result)
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text + "\n", encoding="utf-8")
    return 0 if ok(result) else 1


if __name__ == "__main__":
    sys.exit(main())
