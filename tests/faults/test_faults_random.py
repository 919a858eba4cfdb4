"""Randomised fault-injection trials (`make faults`; slow). Each trial produces a few items, picks a
fault and a moment at random, heals it, waits until everything is archived and checks the
invariants (tests/faults/harness.py). At the end a table (trials, items produced, archived, lost,
corrupt items accepted) is printed and written to artifacts/faults.txt and artifacts/faults.json.

    FAULT_TRIALS=200 (default)  number of trials
    FAULT_SEED=N                reproduce a run (default: random, printed in the table)
    FAULT_BLOCK=20              trials per cluster (a fresh broker/archive/agents after each block,
                                and after any failed trial)
    FAULT_TRIAL_TIMEOUT=120     seconds a trial may take to drain
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.faults.harness import Clock, Cluster, HarnessError, NetLink, Tmpfs, wait_for
from tools.faults_report import render

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
MB = 1_000_000
CRASH_POINTS = ("copy:8mib", "seal:after-sig", "seal:after-manifest", "seal:after-rename", "seal:after-ledger")

pytestmark = pytest.mark.slow
# result key -> Outcome attribute
_FIELD = {"items_produced": "produced", "items_archived": "archived", "items_lost": "lost",
          "corrupt_injected": "corrupt_injected", "corrupt_accepted": "corrupt_accepted",
          "corrupt_refused": "corrupt_refused", "duplicates": "duplicates"}


class Trials:
    """One block: a cluster with two agents — A (in its own network namespace, under libfaketime,
    its data on a small tmpfs, where available) and B (plain) — and the faults it can take."""

    def __init__(self, tmp: Path, rng: random.Random):
        self.rng = rng
        self.skipped: dict[str, str] = {}
        why_net, why_clock, why_disk = NetLink.unavailable(), Clock.unavailable(), Tmpfs.unavailable()
        self.link = None if why_net else NetLink()
        # an open broker on purpose: the trials inject corrupt chunks as a stranger on a device's
        # transfer topics while its agent runs (the shipped ACL would refuse the stranger, and a
        # rogue with the device's own login would end the agent's session: one login, one session)
        self.cl = Cluster(tmp, netlink=self.link, shipped=False)
        if self.link:
            self.cl.extra.append(self.link)
        self.clock = None if why_clock else Clock(tmp / "clock")
        self.fs = None
        if not why_disk:
            self.fs = Tmpfs(tmp / "disk", 192)
            self.cl.extra.append(self.fs)
        for name, why in (("network_loss", why_net), ("clock_jump", why_clock), ("disk_full", why_disk)):
            if why:
                self.skipped[name] = why
        try:
            self.cl.start()
            self.a = self.cl.add_node("dock-0001", clock=self.clock, keepalive=5,
                                      data_dir=(self.fs.path / "data") if self.fs else None).start()
            self.b = self.cl.add_node("dock-0002", netlink=None).start()
        except BaseException:
            self.cl.close()
            raise
        self.faults = {
            "agent_kill_transfer": self.agent_kill_transfer,
            "agent_kill_ingest": self.agent_kill_ingest,
            "ingest_crash_point": self.ingest_crash_point,
            "archive_kill": self.archive_kill,
            "broker_kill": self.broker_kill,
            "broker_down": self.broker_down,
            "archive_crash_point": self.archive_crash_point,
            "agent_crash_point": self.agent_crash_point,
            "corrupt_chunk": self.corrupt_chunk,
            "forged_manifest": self.forged_manifest,
            "swapped_content": self.swapped_content,
            "damaged_at_edge": self.damaged_at_edge,
        }
        if self.link:
            self.faults["network_loss"] = self.network_loss
        if self.clock:
            self.faults["clock_jump"] = self.clock_jump
        if self.fs:
            self.faults["disk_full"] = self.disk_full

    def close(self) -> None:
        self.cl.close()

    # helpers
    def node(self):
        return self.rng.choice([self.a, self.b])

    def produce(self, node=None, n: int | None = None):
        node = node or self.node()
        return node.ingest(n or self.rng.randint(1, 3), lambda: self.rng.randint(50_000, 2 * MB))

    def some_moment_in_transfer(self) -> None:
        """A random moment: usually while a transfer is under way, sometimes before or after."""
        try:
            self.cl.wait_transfer_started(timeout=8, min_bytes=self.rng.randint(1, 400_000))
        except HarnessError:
            pass  # already drained: the fault hits an idle system, also a moment
        time.sleep(self.rng.uniform(0, 0.5))

    # the faults
    def agent_kill_transfer(self):
        node = self.node()
        self.produce(node, self.rng.randint(2, 3))
        self.some_moment_in_transfer()
        node.kill()
        time.sleep(self.rng.uniform(0, 1.5))
        node.start()

    def agent_kill_ingest(self):
        node = self.node()
        self.produce(node, 1)
        proc = node.ingest_cli(self.rng.randint(2, 40) * MB, wait=False)
        time.sleep(self.rng.uniform(0.3, 3.0))  # before, mid-copy, mid-seal or after
        proc_was_alive = proc.alive()
        node.kill()  # the agent and its ingest together: a power cut at the dock
        node.start()
        return {"ingest_killed": proc_was_alive}

    def ingest_crash_point(self):
        node = self.node()
        point = self.rng.choice(CRASH_POINTS)
        size = 10 * MB if point == "copy:8mib" else self.rng.randint(50_000, 1 * MB)
        p = node.ingest_cli(size, wait=False, env={"EDGE_AGENT_CRASH_AT": point})
        p.wait(120)
        self.produce(node, 1)  # the agent still runs; the next seal must not fork the chain
        if self.rng.random() < 0.5:
            node.kill()
            node.start()
        return {"point": point}

    def archive_kill(self):
        self.produce(self.a)
        self.produce(self.b)
        self.some_moment_in_transfer()
        self.cl.kill_archive()
        time.sleep(self.rng.uniform(0, 2))
        self.cl.start_archive()

    def archive_crash_point(self):
        """The archive killed between moving an item into place and recording it."""
        self.cl.restart_archive(env={"EDGE_AGENT_CRASH_AT": "archive:after-rename"})
        self.produce()
        wait_for(lambda: not self.cl.archive.alive(), 60, "the archive at its crash point", self.cl.logs())
        time.sleep(self.rng.uniform(0, 1))
        self.cl.start_archive()

    def agent_crash_point(self):
        """The agent killed after the archive answered "stored", before its ledger says archived."""
        node = self.node()
        node.kill()
        node.start(extra_env={"EDGE_AGENT_CRASH_AT": "uplink:before-mark-archived"})
        self.produce(node)
        wait_for(lambda: not node.alive(), 60, "the agent at its crash point", node.logs())
        node.start()

    def broker_kill(self):
        self.produce()
        self.some_moment_in_transfer()
        self.cl.restart_broker(downtime=self.rng.uniform(0, 2))

    def broker_down(self):
        self.produce()
        self.some_moment_in_transfer()
        self.cl.kill_broker()
        self.produce()  # sealed while offline
        down = self.rng.uniform(2, 8)
        time.sleep(down)
        self.cl.broker.restart(kill=True)
        return {"down_s": round(down, 1)}

    def network_loss(self):
        self.produce(self.a, self.rng.randint(2, 3))
        self.some_moment_in_transfer()
        self.link.down()
        down = self.rng.uniform(1, 8)
        time.sleep(down)
        self.link.up()
        return {"down_s": round(down, 1)}

    def clock_jump(self):
        offset = self.rng.choice(["+1h", "-1h"])
        self.produce(self.a, 2)
        self.some_moment_in_transfer()
        self.clock.set(offset)
        time.sleep(1.2)
        self.a.ingest_cli(self.rng.randint(50_000, 500_000))  # sealed under the jumped clock
        if self.rng.random() < 0.5:
            self.a.kill()
            self.a.start()
        self.clock.set("+0")
        return {"offset": offset}

    def disk_full(self):
        self.produce(self.a, 1)
        ballast = self.fs.fill(leave_bytes=self.rng.randint(0, 3 * 2**20), name="ballast")
        try:
            proc = self.a.ingest_cli(self.rng.randint(1, 6) * MB, wait=False)
            rc = proc.wait(120)
            text = proc.text()
            if rc != 0:
                assert "Traceback" not in text, text
                assert "磁盘" in text, text  # 磁盘已满 / disk full, 磁盘空间不足 / disk reserve reached
            time.sleep(self.rng.uniform(0, 2))
        finally:
            ballast.unlink()
        if not self.a.alive():  # systemd would restart it
            self.a.start()
        return {"ingest_rc": rc}

    def corrupt_chunk(self):
        ans = self.cl.inject_corrupt_chunk(self.node())
        assert ans.status in ("error", "rejected"), ans

    def forged_manifest(self):
        ans = self.cl.inject_forged_manifest(self.node())
        assert ans.status == "rejected", ans

    def swapped_content(self):
        ans = self.cl.inject_swapped_content(self.node())
        # a block that is not the sealed one is refused on arrival, never written (as test_faults.py)
        assert ans.status in ("rejected", "incomplete") or (
            ans.status == "error" and "differs from the signed manifest" in (ans.reason or "")), ans

    def damaged_at_edge(self):
        node = self.node()
        node.kill()
        ids = node.ingest(2, lambda: self.rng.randint(50_000, 500_000))
        node.damage_item(self.rng.choice(ids))
        node.start()

    def run_one(self, name: str) -> dict:
        return self.faults[name]() or {}


TRIALS = int(os.environ.get("FAULT_TRIALS", "200"))


def _write(result: dict, log_lines: list[str]) -> str:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    table = render(result)
    (ARTIFACTS / "faults.txt").write_text(table + "\n", encoding="utf-8")
    (ARTIFACTS / "faults-trials.log").write_text("\n".join(log_lines) + "\n", encoding="utf-8")
    return table


@pytest.mark.timeout(600 + 90 * TRIALS)  # bounded: each trial drains within FAULT_TRIAL_TIMEOUT
def test_random_faults(tmp_path):
    trials = TRIALS
    seed = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(1 << 30))
    block = int(os.environ.get("FAULT_BLOCK", "20"))
    drain = float(os.environ.get("FAULT_TRIAL_TIMEOUT", "120"))
    rng = random.Random(seed)
    t0 = time.monotonic()
    totals = {"trials": 0, "items_produced": 0, "items_archived": 0, "items_lost": 0, "corrupt_injected": 0,
              "corrupt_accepted": 0, "corrupt_refused": 0, "duplicates": 0}
    by_fault: dict[str, int] = {}
    failures: list[dict] = []
    skipped: dict[str, str] = {}
    log_lines: list[str] = []
    n = 0
    blocks = 0
    while n < trials:
        blocks += 1
        tr = Trials(tmp_path / f"block{blocks}", rng)
        skipped.update(tr.skipped)
        last = None
        try:
            for _ in range(min(block, trials - n)):
                n += 1
                name = rng.choice(sorted(tr.faults))
                by_fault[name] = by_fault.get(name, 0) + 1
                ts = time.monotonic()
                try:
                    info = tr.run_one(name)
                    tr.cl.wait_archived(drain)
                    last = tr.cl.check()
                    problems = last.problems
                except Exception as exc:  # any failure of a trial is recorded, the run goes on
                    problems = [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
                    info = {}
                    try:
                        last = tr.cl.check()
                    except Exception:
                        pass
                log_lines.append(f"trial {n:4d} {name:20s} {time.monotonic() - ts:6.1f} s {info} "
                                 f"{'OK' if not problems else 'FAIL: ' + problems[0]}")
                print(log_lines[-1], flush=True)
                if problems:
                    failures.append({"trial": n, "fault": name, "problem": problems[0], "block": blocks})
                if last is not None:  # the numbers so far (this block's latest check), kept on disk
                    now = {k: v + getattr(last, _FIELD[k]) for k, v in totals.items() if k in _FIELD}
                    _write({**totals, **now, "trials": n, "by_fault": by_fault, "failures": failures, "seed": seed,
                            "blocks": blocks, "seconds": round(time.monotonic() - t0, 1), "skipped_faults": skipped,
                            "partial": True}, log_lines)
                if problems:
                    break  # a fresh cluster for the next trials
        finally:
            if last is not None:
                for key, attr in _FIELD.items():
                    totals[key] += getattr(last, attr)
            tr.close()
    totals["trials"] = n
    result = {**totals, "by_fault": by_fault, "failures": failures, "seed": seed, "blocks": blocks,
              "seconds": round(time.monotonic() - t0, 1), "skipped_faults": skipped,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    table = _write(result, log_lines)
    print("\n" + table)
    assert totals["items_lost"] == 0, table
    assert totals["corrupt_accepted"] == 0, table
    assert totals["duplicates"] == 0, table
    assert not failures, table
