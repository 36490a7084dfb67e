"""Plugins: the worked example of docs/plugins.md runs exactly as written, and an installed
package's entry point is found without --plugin."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
        "--set", "data.train_size=64", "--set", "data.val_size=32", "--set", "data.test_size=32"]


def run_cli(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=300)


def doc_example() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


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


def test_plugin_hyperparameter_is_validated(tmp_path):
    plugin = tmp_path / "softmax_loss_weighting.py"
    plugin.write_text(doc_example())
    bad = run_cli("run", "--plugin", str(plugin), "-m", "softmax_loss", "--set",
                  "method.softmax_loss.temperature=-1", "--out", str(tmp_path / "r"), *TINY)
    assert bad.returncode == 2
    assert "temperature" in bad.stderr and "Traceback" not in bad.stderr


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
