"""The training engine, in three layers, each importing only the ones below it:

- ``engine.core``: one training run (the trainer, the gradient engine, models, config,
  checkpoints and the run folder's files);
- ``engine.runs``: many runs (building them from a request, sweeps, executors, locks, the
  leaderboard's planning, step-time measurement);
- ``engine.cli``: the command line.

``engine.errors`` and ``engine.registry`` sit below all three: they are the only engine
modules that methods, benchmarks and datasets import (tests/test_layers.py checks it).
"""
