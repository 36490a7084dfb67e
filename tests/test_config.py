"""Config resolution: profile <- --set, type checks, unknown keys, hashing."""
from dataclasses import dataclass

import pytest

from benchmarks.digits_tasks import DigitsTasksConfig
from benchmarks.registry import PROFILE_DIR
from engine.core.config import parse_value, resolve
from engine.errors import ConfigError
from methods.base import MethodConfig


@dataclass
class ToyMethodConfig(MethodConfig):
    c: float = 0.4
    mode: str = "a"
    sigmas: tuple[float, ...] = (1.0, 2.0)


def build(overrides, methods=None, seed=0, profile="quick"):
    return resolve("digits_tasks", "toy", seed, profile, overrides, DigitsTasksConfig,
                   methods if methods is not None else {"toy": ToyMethodConfig()}, PROFILE_DIR)


def test_profile_then_overrides():
    config = build(["train.lr=0.01", "train.epochs=3"])
    assert config.train.lr == 0.01 and config.train.epochs == 3
    assert config.train.batch_size == 64  # from the quick profile
    assert config.data.train_size == 4000


def test_method_keys_full_and_short():
    assert build(["method.toy.c=0.5"]).methods["toy"].c == 0.5
    assert build(["method.c=0.7"]).methods["toy"].c == 0.7
    assert build(["method.sigmas=[1, 100]"]).methods["toy"].sigmas == (1.0, 100.0)
    assert build(["method.sigmas=3,4"]).methods["toy"].sigmas == (3.0, 4.0)


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "expected a number"),
    ("train.epochs=1.5", "expected an integer"),
    ("engine.deterministic=maybe", "expected true or false"),
    ("train.lrr=0.1", "did you mean train.lr"),
    ("trian.lr=0.1", "unknown section"),
    ("train.lr", "malformed"),
    ("method.toy.cc=1", "did you mean method.toy.c"),
    ("method.other.c=1", "not part of the method"),
    ("train.epochs=0", "out of range"),
    ("train.optimizer=rmsprop", "expected one of sgd, adam, adamw"),
    ("engine.head_convs=fast", "expected one of second_order, builtin"),
    ("engine.cpu_malloc=jemalloc", "expected one of reuse, system"),
])
def test_bad_overrides_are_refused_with_a_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        build([override])


def test_seed_must_be_non_negative_integer():
    with pytest.raises(ConfigError, match="non-negative"):
        build([], seed=-1)


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: imbalanced, quick"):
        build([], profile="nope")


def test_hash_ignores_seed_and_device_but_not_hyperparameters():
    a, b = build([], seed=0), build([], seed=5)
    assert a.hash() == b.hash()
    assert build(["method.toy.c=0.5"]).hash() != a.hash()
    assert build(["train.lr=0.5"]).hash() != a.hash()


def test_parse_value_literals():
    assert parse_value("1e-3") == 1e-3
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("loop") == "loop"


def test_late_engine_keys_leave_earlier_run_folders_valid():
    # Keys added after runs were on disk change the hash only when set away from default.
    base = build([]).hash()
    assert build(["engine.cpu_malloc=reuse", "engine.head_convs=second_order"]).hash() == base
    assert build(["engine.head_convs=builtin"]).hash() != base
    assert build(["engine.cpu_malloc=system"]).hash() != base
