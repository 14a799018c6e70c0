"""Benchmarks; each writes a markdown table under bench/results/. Run from the repository root."""
