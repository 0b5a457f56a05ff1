"""Benchmarks: each module runs against real services and prints its figures."""
