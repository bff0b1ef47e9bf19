"""Benchmarks: scripts that print figures (medians of repeated runs, ratios against a reference)."""
