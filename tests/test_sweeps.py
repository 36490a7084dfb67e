"""Sweep files: parsing, expansion into runs, and bad input refused with its line and key."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.cli.cmd_sweep import status_table
from engine.errors import ConfigError
from engine.runs.executors import RunResult
from engine.runs.sweep import expand, find_line, load_sweep, toml_literal

TINY_SET = """
[set]
"train.epochs" = 1
train.max_steps_per_epoch = 2
data.train_size = 64
data.val_size = 32
data.test_size = 32
train.batch_size = 16
"""


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_expansion_applies_method_grids_only_to_their_methods(tmp_path):
    path = write(tmp_path, """
        benchmarks = ["digits_tasks"]
        methods = ["ew", "pcgrad+repmtl", "repmtl"]
        seeds = [0, 1]
        profile = "quick"

        [set]
        "train.epochs" = 3
        method.repmtl.lambda_csa = 0.5

        [grid]
        method.repmtl.lambda_tsr = [0.7, 1.1]
        "train.lr" = [0.001, 0.01]
        """)
    runs = expand(load_sweep(path), tmp_path / "out")
    # ew: 2 lr x 2 seeds; each repmtl method: 2 lambda x 2 lr x 2 seeds.
    assert len(runs) == 4 + 8 + 8
    by_method: dict[str, list] = {}
    for spec, request in runs:
        by_method.setdefault(spec.method, []).append((spec, request))
        assert request.config.train.epochs == 3
        assert spec.run_dir == str(request.dir(tmp_path / "out"))
    assert sorted({(r.config.train.lr, r.config.seed) for _, r in by_method["ew"]}) == \
        [(0.001, 0), (0.001, 1), (0.01, 0), (0.01, 1)]
    for name in ("pcgrad+repmtl", "repmtl"):
        configs = [r.config.methods["repmtl"] for _, r in by_method[name]]
        assert sorted({c.lambda_tsr for c in configs}) == [0.7, 1.1]
        assert {c.lambda_csa for c in configs} == {0.5}
    assert len({spec.run_dir for spec, _ in runs}) == len(runs)
    variants = {spec.variant for spec, _ in by_method["repmtl"]}
    assert "lambda_tsr=0.7 lr=0.01" in variants


def test_find_line_handles_quoted_dotted_and_table_keys():
    text = textwrap.dedent("""
        methods = [
            "ew",
            "pcgrad",
        ]
        [grid]
        "train.lr" = [1]
        [grid.method.repmtl]  # a comment
        lambda_tsr = [0.7]
        """).lstrip()
    assert find_line(text, "methods") == 1
    assert find_line(text, "methods", "pcgrad") == 3
    assert find_line(text, "grid.train.lr") == 6
    assert find_line(text, "grid.method.repmtl.lambda_tsr") == 8
    assert find_line(text, "grid.nothing") is None


@pytest.mark.parametrize("value", [0.7, 1e-3, 3, True, "x\"y", [1, 2.5], float("inf")])
def test_toml_literal_round_trips(value):
    from engine.core.config import parse_value

    assert parse_value(toml_literal(value)) == value


BAD = {
    "unknown top-level key": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                              'seed = [1]\n', 4, "seed", "did you mean seeds"),
    "empty grid": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n[grid]\n'
                   '"train.lr" = []\n', 5, "grid.train.lr", "empty"),
    "unknown method": ('benchmarks = ["digits_tasks"]\nmethods = [\n  "ew",\n  "pcgard",\n]\n'
                       'seeds = [0]\n', 4, "methods", "pcgard"),
    "unknown benchmark": ('benchmarks = ["digit_tasks"]\nmethods = ["ew"]\nseeds = [0]\n', 1,
                          "benchmarks", "did you mean digits_tasks"),
    "grid value of the wrong type": (
        'benchmarks = ["digits_tasks"]\nmethods = ["repmtl"]\nseeds = [0]\n\n[grid]\n'
        'method.repmtl.lambda_tsr = [0.7, "high"]\n', 6, "grid.method.repmtl.lambda_tsr",
        "expected a number"),
    "unknown config key": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                           '[set]\ntrain.epoch = 2\n', 5, "set.train.epoch", "train.epochs"),
    "unknown section": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                        '[set]\ntrian.epochs = 2\n', 5, "set.trian.epochs", "train."),
    "component of no method": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                               '[grid]\nmethod.cagrad.c = [0.4]\n', 5, "grid.method.cagrad.c",
                               "no method of the sweep"),
    "method key without component": (
        'benchmarks = ["digits_tasks"]\nmethods = ["repmtl"]\nseeds = [0]\n[grid]\n'
        'method.lambda_tsr = [0.4]\n', 5, "grid.method.lambda_tsr", "method.<component>"),
    "grid that is not a list": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                                '[grid]\n"train.lr" = 0.1\n', 5, "grid.train.lr", "list"),
    "value twice in a grid": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                              '[grid]\n"train.lr" = [0.1, 0.1]\n', 5, "grid.train.lr", "twice"),
    "negative seed": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0, -1]\n', 3,
                      "seeds", "-1"),
    "out-of-range value": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                           '[grid]\n"train.epochs" = [2, 0]\n', 5, "grid.train.epochs",
                           "out of range"),
    "unknown slurm key": ('benchmarks = ["digits_tasks"]\nmethods = ["ew"]\nseeds = [0]\n'
                          '[slurm]\npartitions = "gpu"\n', 5, "slurm.partitions", "partition"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_is_refused_naming_line_and_key(tmp_path, case):
    text, line, key, hint = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        expand(load_sweep(path), tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: {key}:"), message
    assert hint in message


def test_invalid_toml_and_missing_keys(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML.*line 2"):
        load_sweep(write(tmp_path, 'seeds = [0]\nmethods = ew\n'))
    with pytest.raises(ConfigError, match="benchmarks"):
        load_sweep(write(tmp_path, 'methods = ["ew"]\nseeds = [0]\n'))


def test_benchmark_on_disk_needs_its_data_root(tmp_path):
    path = write(tmp_path, 'benchmarks = ["nyuv2"]\nmethods = ["ew"]\nseeds = [0]\n'
                           'data_root = "/no/such/folder"\n')
    with pytest.raises(ConfigError, match=r":4: data_root: .*/no/such/folder.* does not exist"):
        expand(load_sweep(path), tmp_path)
    assert len(expand(load_sweep(path), tmp_path, check_data=False)) == 1


def test_dry_run_flags_a_missing_data_folder_and_still_lists(tmp_path, capsys):
    path = write(tmp_path, 'benchmarks = ["nyuv2"]\nmethods = ["ew"]\nseeds = [0]\n'
                           'data_root = "/no/such/folder"\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "1 runs:" in captured.out
    assert (f"warning: the sweep itself will refuse to start: {path}:4: data_root: the data "
            f"folder of nyuv2, /no/such/folder, does not exist") in captured.err
    assert main(["sweep", str(path), "--out", str(out), "--dry-run",
                 "--data-root", str(tmp_path)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_bad_sweep_starts_no_run(tmp_path, capsys):
    path = write(tmp_path, 'benchmarks = ["digits_tasks"]\nmethods = ["ew", "nope"]\n'
                           'seeds = [0]\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--no-progress"]) == 2
    assert f"{path}:2: methods: unknown method 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    path = write(tmp_path, 'benchmarks = ["digits_tasks"]\nmethods = ["ew", "repmtl"]\n'
                           'seeds = [0, 1]\n[grid]\nmethod.repmtl.lambda_tsr = [0.7, 0.9]\n'
                 + TINY_SET)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 runs: 0 complete, 0 failed, 0 diverged, 6 pending" in text
    assert text.count("lambda_tsr=0.7") == 2 and text.count("digits_tasks  ew  seed") == 2
    assert not out.exists()


def test_paper_sweep_files_expand(tmp_path):
    sweeps = Path(__file__).resolve().parent.parent / "benchmarks" / "sweeps"
    names = {p.stem for p in sweeps.glob("*.toml")}
    assert {"digits_tasks", "repmtl_ablation", "nyuv2", "cityscapes", "office31",
            "officehome"} <= names
    counts = {}
    for path in sorted(sweeps.glob("*.toml")):
        counts[path.stem] = len(expand(load_sweep(path), tmp_path, check_data=False))
    # 23 baselines + repmtl + stl, three seeds, less the methods refused under the paper's
    # settings: MTAdam everywhere (Adam), IGBv2 on NYUv2 and Cityscapes (a learning-rate
    # decay), GradDrop on the multi-input Office benchmarks.
    assert counts["nyuv2"] == counts["cityscapes"] == 23 * 3
    assert counts["office31"] == counts["officehome"] == 23 * 3
    assert counts["repmtl_ablation"] == 2 * 4 * 3


def test_status_table_counts_states():
    from engine.runs.sweep import RunSpec

    specs = [RunSpec("b", m, 0, "quick", (), "cpu", None, h, f"/r/{m}", (), "")
             for m, h in (("ew", "1"), ("uw", "2"), ("dwa", "3"), ("rlw", "4"))]
    results = [RunResult("b/ew", "/r/ew", "complete", "complete"),
               RunResult("b/uw", "/r/uw", "failed", "failed", "RuntimeError: boom"),
               RunResult("b/dwa", "/r/dwa", "skipped", "diverged", "non-finite loss")]
    table = status_table(specs, results)
    last = next(line for line in table.splitlines() if line.startswith("total"))
    assert last.split() == ["total", "1", "1", "1", "1"]
    assert "RuntimeError: boom" in table and "--retry-failed" in table
