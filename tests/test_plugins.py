"""Plugins: the worked examples of docs/plugins.md (a method, a tabular benchmark) run exactly
as written, an installed package's entry point is found without --plugin, and a plugin that
lacks a piece is refused in one line."""
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from engine.errors import ConfigError, check_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "data.test_size=32"]


def run_cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def doc_example() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.slow
def test_documented_plugin_file_runs_as_written(tmp_path):
    plugin = tmp_path / "softmax_loss_weighting.py"
    plugin.write_text(doc_example())
    listed = run_cli("list", "methods", "--plugin", str(plugin))
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"softmax_loss\s+weighting", listed.stdout)
    out = tmp_path / "results"
    done = run_cli("run", "--plugin", str(plugin), "-b", "digits_tasks", "-m", "softmax_loss", "ew",
                   "-s", "0", "--set", "method.softmax_loss.temperature=2.0", "--out", str(out),
                   "--no-progress", *TINY)
    assert done.returncode == 0, done.stderr
    run_dirs = list((out / "digits_tasks" / "softmax_loss").iterdir())
    assert len(run_dirs) == 1
    assert '"temperature": 2.0' in (run_dirs[0] / "config.json").read_text()
    metrics = (run_dirs[0] / "metrics.jsonl").read_text()
    assert '"max_weight"' in metrics and '"weights"' in metrics
    # The report reads the run folders: it needs no --plugin.
    report = run_cli("report", str(out), "--format", "md", "--skip", "spectra,curves,conflict")
    assert report.returncode == 0, report.stderr
    assert "softmax_loss" in (out / "report" / "report.md").read_text()


@pytest.mark.slow
def test_plugin_hyperparameter_is_validated(tmp_path):
    plugin = tmp_path / "softmax_loss_weighting.py"
    plugin.write_text(doc_example())
    bad = run_cli("run", "--plugin", str(plugin), "-m", "softmax_loss", "--set",
                  "method.softmax_loss.temperature=-1", "--out", str(tmp_path / "r"), *TINY)
    assert bad.returncode == 2
    assert "temperature" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_entry_point_plugin_is_found_without_flag(tmp_path):
    site = tmp_path / "site"
    (site / "fake_mtl_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "fake_mtl_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-mtl-plugin\nVersion: 0.1\n")
    (site / "fake_mtl_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[mtl_harness.plugins]\nfake = fake_mtl_plugin\n")
    (site / "fake_mtl_plugin.py").write_text(doc_example().replace('"softmax_loss"', '"ep_softmax"'))
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = run_cli("list", "methods", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "ep_softmax" in listed.stdout


def test_missing_plugin_is_a_clear_error(tmp_path):
    result = run_cli("list", "--plugin", str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert "nope.py" in result.stderr and "Traceback" not in result.stderr


def doc_examples() -> list[str]:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_documented_domains_are_checked_as_written():
    """The config example of docs/plugins.md: its declared domains and its validate() refuse
    values in the documented words, its defaults pass."""
    (block,) = [e for e in doc_examples() if "class MyConfig(MethodConfig)" in e]
    namespace = {"__name__": "documented_config"}
    exec(compile(block, "docs/plugins.md", "exec"), namespace)
    config_cls = namespace["MyConfig"]
    check_config(config_cls(), "method.my_method")
    text = (ROOT / "docs" / "plugins.md").read_text()
    for changes, message in (
            ({"beta": 1.0}, "method.my_method.beta=1.0 is out of range; expected a value in "
                            "[0, 1)"),
            ({"scale": "max"}, "method.my_method.scale='max' is not valid; expected one of "
                               "mean, sum"),
            ({"tol": 0.0}, "method.my_method.tol=0.0 is out of range; expected a value in "
                           "(0, inf)"),
            ({"every": 0}, "method.my_method.every=0 is out of range; expected a value in "
                           "[1, inf)"),
            ({"min_weight": 2.0, "max_weight": 1.0}, "method.my_method.min_weight=2.0 exceeds "
                                                     "method.my_method.max_weight=1.0")):
        with pytest.raises(ConfigError) as info:
            check_config(config_cls(**changes), "method.my_method")
        assert str(info.value) == message
    for documented in re.findall(r"`(method\.my_method\.[^`]*)`", text):
        assert documented in {"method.my_method.beta=1.0 is out of range; expected a value in "
                              "[0, 1)", "method.my_method.scale='max' is not valid; expected "
                              "one of mean, sum"}, documented


PROBE_PROFILES = """
import sys
from engine.registry import load_plugin
from engine.runs.runner import build_requests
load_plugin(sys.argv[1])
for profile in ("quick", "long"):
    (request,) = build_requests(sys.argv[2], ["ew"], [0], profile, [], "cpu", None)
    print(profile, request.config.train.epochs, request.config.train.lr,
          request.config.data.train_size)
build_requests(sys.argv[2], ["ew"], [0], "paper", [], "cpu", None)
"""


@pytest.mark.slow
def test_plugin_benchmark_ships_its_profiles_as_tables_or_a_toml_file(tmp_path):
    (bench_example,) = [e for e in doc_examples() if 'register_benchmark("small_digits")' in e]
    tables = tmp_path / "small_digits.py"
    tables.write_text(bench_example)
    # The same profiles as a TOML file next to the plugin.
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "profiles.toml").write_text(
        '[quick.train]\nepochs = 2\nbatch_size = 32\n[quick.data]\ntrain_size = 256\n'
        '[long.train]\nepochs = 20\nlr = 5e-4\n[long.data]\ntrain_size = 256\n')
    tables_block = bench_example[bench_example.index("    profiles = {"):]
    (folder / "toml_digits.py").write_text(
        bench_example.replace('"small_digits"', '"toml_digits"')
        .replace(tables_block, '    profiles = "profiles.toml"\n'))
    for plugin, name in ((tables, "small_digits"), (folder / "toml_digits.py", "toml_digits")):
        probe = subprocess.run([sys.executable, "-c", PROBE_PROFILES, str(plugin), name],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = probe.stdout.splitlines()
        assert lines == ["quick 2 0.001 256", "long 20 0.0005 256"], probe.stderr
        assert f"benchmark '{name}' has no profile 'paper'; available: long, quick" in probe.stderr


@pytest.mark.slow
def test_sweep_file_names_its_plugins_for_sweep_and_list(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "softmax_loss_weighting.py").write_text(doc_example())
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('plugins = ["plugins/softmax_loss_weighting.py"]\n'
                     'benchmarks = ["digits_tasks"]\nmethods = ["softmax_loss", "ew"]\n'
                     'seeds = [0]\n')
    dry = run_cli("sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "digits_tasks  softmax_loss  seed 0" in dry.stdout
    listed = run_cli("list", "methods", "--sweep", str(sweep), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"softmax_loss\s+weighting", listed.stdout)


@pytest.mark.slow
def test_unknown_name_without_plugins_hints_at_the_flag():
    result = run_cli("run", "-m", "softmax_loss", "-s", "0")
    assert result.returncode == 2
    assert "no plugin is loaded" in result.stderr and "--plugin" in result.stderr


@pytest.mark.slow
def test_a_plugin_without_description_is_a_one_line_error(tmp_path):
    plugin = tmp_path / "bare.py"
    plugin.write_text(doc_example().replace('    description = "Weigh tasks by the softmax of '
                                            'their losses (weights sum to T)"\n', ""))
    result = run_cli("list", "--plugin", str(plugin))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert "method 'softmax_loss'" in result.stderr and "`description`" in result.stderr
    assert str(plugin) in result.stderr


@pytest.mark.slow
def test_a_method_breaking_the_contract_fails_its_run_in_one_line(tmp_path):
    plugin = tmp_path / "short_weights.py"
    plugin.write_text(doc_example().replace("return Weighted(weights=weights)",
                                            "return Weighted(weights=weights[:2])"))
    out = tmp_path / "results"
    done = run_cli("run", "--plugin", str(plugin), "-m", "softmax_loss", "-s", "0",
                   "--out", str(out), "--no-progress", *TINY)
    assert done.returncode == 2  # the plugin's mistake: a user error, like a bad config
    (run_dir,) = (out / "digits_tasks" / "softmax_loss").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["reason"] == ("method softmax_loss: weigh() must return Weighted whose "
                                 "weights are a tensor of shape [3]; got a tensor of shape [2] "
                                 "(see docs/plugins.md)")


def test_a_method_named_like_a_module_attribute_is_refused():
    """The trainer keeps methods in an nn.ModuleDict: a name such as `half` or `train` would
    collide with nn.Module's own attributes in the middle of the first run."""
    from engine.errors import UserError
    from methods.base import Weighting
    from methods.registry import register_method

    class Half(Weighting):
        description = "a weighting named like nn.Module.half"

    with pytest.raises(UserError, match="'half' .* is an attribute of torch.nn.Module"):
        register_method("half")(Half)


# --------------------------------------------------------------------------- benchmarks

def tabular_example() -> tuple[str, list[str]]:
    """The worked benchmark example of docs/plugins.md and the commands of the bash block
    that follows it."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    (block,) = [m for m in re.finditer(r"```python\n(.*?)```", text, re.S)
                if 'register_benchmark("my_tabular")' in m.group(1)]
    commands = re.compile(r"```bash\n(.*?)```", re.S).search(text, block.end()).group(1)
    return block.group(1), [line for line in commands.replace("\\\n", " ").splitlines()
                            if line.strip()]


@pytest.mark.slow
def test_documented_benchmark_plugin_trains_through_the_cli_as_written(tmp_path):
    code, commands = tabular_example()
    (tmp_path / "my_tabular.py").write_text(code)
    assert len(commands) == 3 and all(c.startswith("python run_bench.py ") for c in commands)
    out = tmp_path / "results"
    done = []
    for command in commands:
        argv = shlex.split(command)[2:]
        if argv[0] == "run":  # the documented command, on a tiny budget
            argv += ["--out", str(out), "--no-progress", "--set", "train.epochs=1"]
        done.append(run_cli(*argv, cwd=tmp_path))
        assert done[-1].returncode == 0, f"{command}\n{done[-1].stderr}"
    listed, compared, long = done
    assert re.search(r"my_tabular\s+task shift, single-input\s+no download\s+wine cultivar",
                     listed.stdout)
    header = next(line for line in compared.stdout.splitlines() if line.startswith("method"))
    for column in ("alcohol mae (% vol) ↓", "alcohol rmse (% vol) ↓", "cultivar acc (%) ↑",
                   "Δp_task (%) ↑"):
        assert column in header, header
    rows = {line.split()[0]: line for line in compared.stdout.splitlines()
            if line.split()[:1] in (["stl"], ["ew"], ["pcgrad"])}
    assert set(rows) == {"stl", "ew", "pcgrad"} and all(r.split()[-1] == "3" for r in rows.values())
    bench = out / "my_tabular"
    for method in ("stl", "ew", "pcgrad"):
        assert len(list((bench / method).iterdir())) == (4 if method == "ew" else 3)
    run_dir = next((bench / "pcgrad").iterdir())
    record = json.loads((run_dir / "benchmark.json").read_text())
    assert record["split_sizes"] == {"train": 106, "val": 35, "test": 37}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["tasks"]["alcohol"]["mae"] == {"higher_is_better": False, "unit": "% vol"}
    # The third command: the `long` profile of the plugin, and a data option from --set.
    (long_dir,) = [d for d in (bench / "ew").iterdir()
                   if json.loads((d / "config.json").read_text())["profile"] == "long"]
    config = json.loads((long_dir / "config.json").read_text())
    assert config["data"] == {"seed": 0, "hidden": 128, "width": 64}
    assert (config["train"]["lr"], config["train"]["weight_decay"]) == (1e-3, 1e-4)


def test_a_benchmark_lacking_a_mandatory_piece_is_refused_at_registration():
    from benchmarks.base import Benchmark, TensorBenchmark
    from benchmarks.registry import register_benchmark
    from engine.errors import UserError

    @dataclass
    class Options:
        seed: int = 0

    class NoHead(TensorBenchmark):
        description = "a benchmark without heads"
        Config = Options

        def make_encoder(self):
            return torch.nn.Linear(2, 2)

    class NoData(Benchmark):
        description = "a benchmark that serves no batches"
        Config = Options
        make_encoder = NoHead.make_encoder

        def make_head(self, task):
            return torch.nn.Linear(2, 1)

    class PlainConfig(NoData):
        Config = type("PlainOptions", (), {"seed": 0})
        split_size = TensorBenchmark.split_size
        batches_per_epoch = TensorBenchmark.batches_per_epoch
        batches = TensorBenchmark.batches

    for cls, needs in ((NoHead, "needs `make_head(task)` (see docs/plugins.md)"),
                       (NoData, "needs `split_size()`, `batches_per_epoch()` and `batches()` "
                                "(or subclass TensorBenchmark and set self.splits)"),
                       (PlainConfig, "needs a `Config` dataclass")):
        with pytest.raises(UserError) as refused:
            register_benchmark(f"test_{cls.__name__.lower()}")(cls)
        message = str(refused.value)
        assert needs in message and "\n" not in message, message
        assert message.startswith(f"benchmark 'test_{cls.__name__.lower()}' ({__file__})")


def _built(**parts):
    """A TensorBenchmark instance with the given attributes, as its __init__ left them."""
    from benchmarks.base import TensorBenchmark

    bench = TensorBenchmark.__new__(TensorBenchmark)
    bench.__dict__.update(parts)
    return bench


def _split(*tasks):
    from benchmarks.base import TensorSplit

    return TensorSplit(torch.zeros(4, 2), {t: torch.zeros(4) for t in tasks})


def _task(name, metrics=None):
    from benchmarks.base import TaskSpec
    from benchmarks.metrics import MAE, RegressionMeter, mse

    return TaskSpec(name, mse, (MAE,) if metrics is None else metrics, RegressionMeter)


@pytest.mark.parametrize("parts, error", [
    ({}, "__init__ must set self.tasks to a non-empty tuple of TaskSpec, got nothing"),
    ({"tasks": ()}, "got an empty tuple"),
    ({"tasks": ("first", "second")}, "got a tuple of str"),
    ({"tasks": ("A", "A")}, "task names must differ; a is used twice"),
    ({"tasks": ("train",)}, "task name 'train' cannot name a head"),
    ({"tasks": ("a.b",)}, "task name 'a.b' cannot name a head"),
    ({"tasks": ("no_metrics",)}, "task 'no_metrics' needs a non-empty tuple of MetricSpec"),
    ({"tasks": ("a",), "splits": {"train": "S", "test": "S"}},
     "must set self.splits to {'train', 'val', 'test'} -> TensorSplit, got train, test"),
    ({"tasks": ("a", "b"), "splits": {"train": "S", "val": "Sa", "test": "S"}},
     "the val split has no targets for task(s) b"),
])
def test_a_benchmark_whose_init_left_a_piece_out_is_refused_in_one_line(parts, error):
    from benchmarks.registry import check_built
    from engine.errors import UserError

    tasks = {"a": _task("a"), "b": _task("b"), "A": _task("a"), "train": _task("train"),
             "a.b": _task("a.b"), "no_metrics": _task("no_metrics", metrics=())}
    splits = {"S": _split("a", "b"), "Sa": _split("a")}
    if "tasks" in parts:
        parts["tasks"] = tuple(tasks.get(t, t) for t in parts["tasks"])
    if "splits" in parts:
        parts["splits"] = {k: splits[v] for k, v in parts["splits"].items()}
    with pytest.raises(UserError) as refused:
        check_built(_built(**parts))
    assert error in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    check_built(_built(tasks=(_task("a"), _task("b")),
                       splits={s: _split("a", "b") for s in ("train", "val", "test")}))


def test_metric_names_must_be_those_the_meter_computes():
    from benchmarks.registry import check_metric_names
    from engine.errors import UserError

    bench = _built(tasks=(_task("a"),))
    check_metric_names(bench, {"a": {"mae": 0.5}})
    with pytest.raises(UserError, match="the meter of task 'a' computed mae, rmse but its "
                                         "TaskSpec declares the metrics mae; they must be"):
        check_metric_names(bench, {"a": {"mae": 0.5, "rmse": 0.7}})


@pytest.mark.slow
def test_the_documented_benchmark_without_a_piece_is_a_one_line_error(tmp_path):
    code, _ = tabular_example()
    head = code.index("    def make_head(")
    plugin = tmp_path / "headless.py"
    plugin.write_text(code[:head] + code[code.index("    def extra_record(", head):])
    listed = run_cli("list", "benchmarks", "--plugin", str(plugin))
    assert listed.returncode == 2 and "Traceback" not in listed.stderr
    assert listed.stderr.strip() == (f"error: benchmark 'my_tabular' ({plugin}) needs "
                                     f"`make_head(task)` (see docs/plugins.md)")
    # A meter whose metric names differ from the TaskSpec's fails the run at its first
    # evaluation, in one line, instead of leaving a run that no table can read.
    plugin = tmp_path / "renamed.py"
    plugin.write_text(code.replace('MetricSpec("rmse"', 'MetricSpec("rms_error"'))
    out = tmp_path / "results"
    done = run_cli("run", "--plugin", str(plugin), "-b", "my_tabular", "-m", "ew", "-s", "0",
                   "--out", str(out), "--no-progress", "--set", "train.epochs=1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (run_dir,) = (out / "my_tabular" / "ew").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"] == (
        f"benchmark 'my_tabular' ({plugin}): the meter of task 'alcohol' computed mae, rmse "
        f"but its TaskSpec declares the metrics mae, rms_error; they must be the same names "
        f"(see docs/plugins.md)")
