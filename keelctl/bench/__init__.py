"""Throughput, FLOPs/MFU and peak memory of training steps against depth, per scheme."""

from keelctl.bench.throughput import BenchOptions, run_bench

__all__ = ["BenchOptions", "run_bench"]
