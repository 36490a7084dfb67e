#!/usr/bin/env python
"""Benchmark and compare multi-task optimization methods (see README.md and --help)."""
import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
