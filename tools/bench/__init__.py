"""Benchmarks (python -m tools.bench.<name>)."""
