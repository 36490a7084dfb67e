"""A method asks the step context only for what its ``needs`` declare; the space of an
aggregator and the needs of a configured method follow from the class."""
from __future__ import annotations

import pytest
import torch

from engine.errors import UserError
from methods.base import Aggregated, Aggregator, MethodConfig, Needs, Weighted, Weighting
from methods.registry import METHODS
from tests.method_support import one_engine_step


class _Undeclared(Weighting):
    """Asks for the Jacobian without declaring it."""

    name = "undeclared"
    description = "test"

    def weigh(self, ctx):
        ctx.jacobian()
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))


class _Declared(_Undeclared):
    needs = Needs(jacobian=True)


class _SecondOrder(Weighting):
    """Declares the representation gradients but takes them with a graph."""

    name = "second"
    description = "test"
    needs = Needs(rep_grads=True)

    def weigh(self, ctx):
        ctx.rep_grads(create_graph=True)
        return Weighted(weights=torch.ones_like(ctx.losses.detach()))


NAMES = ("first", "second", "sum")


def test_an_undeclared_request_is_refused_naming_method_and_need():
    with pytest.raises(UserError) as info:
        one_engine_step(_Undeclared(MethodConfig(), NAMES), "loop")
    message = str(info.value)
    assert "'undeclared' called ctx.jacobian()" in message and "jacobian=True" in message
    assert "\n" not in message
    one_engine_step(_Declared(MethodConfig(), NAMES), "loop")  # declared: fine
    with pytest.raises(UserError, match="second_order=True"):
        one_engine_step(_SecondOrder(MethodConfig(), NAMES), "loop")


def test_the_space_follows_from_the_needs():
    assert METHODS.get("mgda_ub").space == "rep" and METHODS.get("pcgrad").space == "param"

    class RepAggregator(Aggregator):
        needs = Needs(rep_grads=True, shared_representation=True)

        def aggregate(self, grads, ctx):
            return Aggregated(direction=grads.sum(0))

    assert RepAggregator.space == "rep"
    with pytest.raises(TypeError, match="contradicts its needs"):
        class Wrong(Aggregator):  # noqa: F841
            space = "rep"


def test_needs_follow_the_config_through_the_class():
    gradnorm = METHODS.get("gradnorm")
    assert gradnorm.needs == Needs(task_grads=True)
    all_layers = gradnorm(gradnorm.Config(layer="all"), NAMES)
    assert all_layers.needs == Needs(jacobian=True) == gradnorm.needs_for(all_layers.config)
    assert gradnorm.needs == Needs(task_grads=True)  # the class is unchanged
    assert gradnorm(gradnorm.Config(), NAMES).needs == Needs(task_grads=True)


def test_run_report_is_declared_on_every_method():
    assert METHODS.get("ew")(METHODS.get("ew").Config(), NAMES).run_report() == {}
    cagrad = METHODS.get("cagrad")(METHODS.get("cagrad").Config(), NAMES)
    assert set(cagrad.run_report()) == {"solves", "solver_failures"}
