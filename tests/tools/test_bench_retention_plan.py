"""tools/bench/retention_plan.py: the plan over an index filled directly (no manifests) lists what
the filled rows say, within the target scaled to 100,000 items, and the aggregator reads its row."""

from __future__ import annotations

from tools.bench import __main__ as bench
from tools.bench import retention_plan


def test_retention_plan_bench_small():
    r = retention_plan.run(items=1000)
    assert r["unreadable"] == 0 and r["items"] == 1000
    # every row is either listed (normal or important, due, kept or held) or permanent (evidence)
    assert r["listed"] + r["permanent"] == 1000 and r["permanent"] > 0 and r["due"] > 0 and r["held"] > 0
    assert r["pass"] is True, r
    (row,) = bench.rows_generic("retention_plan", r)
    assert row.figure == "seconds_per_100k_items" and row.target == "<= 10.0" and row.ok is True
