"""Fault-injection suites (issue 7, "Proof suites"): real broker, archive and agents as processes,
killed and disturbed on purpose; see tests/faults/harness.py and docs/faults.md."""
