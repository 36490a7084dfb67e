"""Multi-task optimization methods: the registry, the contract, and every built-in method.

Importing the package registers every module in it (one method per file)."""
from engine.registry import import_submodules
from methods.base import (Aggregated, Aggregator, GramianAggregator, Method, MethodConfig, Needs,
                          Regularizer, StepContext, Weighted, Weighting)
from methods.registry import METHODS, Composition, parse_method, register_method

__all__ = ["Aggregated", "Aggregator", "Composition", "GramianAggregator", "METHODS", "Method",
           "MethodConfig", "Needs", "Regularizer", "StepContext", "Weighted", "Weighting",
           "parse_method", "register_method"]

import_submodules(__name__)
