"""Benchmarks: what to train and how to score it. Importing the package registers every
built-in benchmark (one module each)."""
from benchmarks.base import Batch, Benchmark, MetricSpec, TaskSpec
from benchmarks.registry import BENCHMARKS, register_benchmark
from engine.registry import import_submodules

__all__ = ["BENCHMARKS", "Batch", "Benchmark", "MetricSpec", "TaskSpec", "register_benchmark"]

import_submodules(__name__)
