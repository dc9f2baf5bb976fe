"""Benchmarks: frames per second and per-stage latency. Not built yet."""
