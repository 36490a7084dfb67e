"""Plugins: the worked example of docs/plugins.md runs exactly as written, and an installed
package's entry point is found without --plugin."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    (bench_example,) = [e for e in doc_examples() if "register_benchmark" in e]
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
