"""The training core: one run, from its resolved config to the files it writes. It imports
methods and benchmarks, never the orchestration of runs (``engine.runs``), the command line
(``engine.cli``) or ``analysis``."""
