"""Benchmarks: each module runs with one command and records its table in RESULTS.md."""
