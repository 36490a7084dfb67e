"""Exit codes and one-line errors of the commands: runs held by another process, empty
paths, a plugin's profile, the plugins a sweep file imports."""
from __future__ import annotations

import pytest

from engine.cli import main
from engine.runs.locks import RunLock
from engine.runs.runner import build_requests
from tests.helpers import TINY_DIGITS

SETS = [a for o in TINY_DIGITS for a in ("--set", o)]


def test_run_exits_1_naming_the_runs_another_process_holds(tmp_path, capsys):
    out = tmp_path / "out"
    (request,) = build_requests("digits_tasks", ["ew"], [0], "quick", list(TINY_DIGITS), "cpu",
                                None)
    with RunLock(request.dir(out)):  # another process trains it
        code = main(["run", "-m", "ew", "-s", "0", "--device", "cpu", "--no-progress",
                     "--out", str(out), *SETS])
    err = capsys.readouterr().err
    assert code == 1 and "1 run(s) still pending" in err and str(request.dir(out)) in err


@pytest.mark.parametrize("command", [["run", "--out", ""], ["run", "--data-root", " "],
                                     ["sweep", "x.toml", "--out", ""], ["report", ""],
                                     ["report", "results", "--out", ""]])
def test_empty_paths_are_refused(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)  # where an empty path would have written
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2 and "an empty path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


PROFILE_PLUGIN = '''
from benchmarks.digits_tasks import DigitsTasks
from benchmarks.registry import register_benchmark


@register_benchmark("{name}")
class Bench(DigitsTasks):
    description = "digits_tasks with its own profiles (tests)"
    profiles = {profiles}
'''


@pytest.mark.parametrize("profiles, error", [
    ('{"quick": {"train": {"epoch": 2}}}', "unknown key 'train.epoch'"),
    ('"profiles.toml"', "train.epochs='two': expected an integer"),
])
def test_errors_in_a_plugins_profile_name_the_plugin(tmp_path, capsys, profiles, error):
    name = f"profiled_{len(profiles)}"
    plugin = tmp_path / f"{name}.py"
    plugin.write_text(PROFILE_PLUGIN.format(name=name, profiles=profiles))
    (tmp_path / "profiles.toml").write_text('[quick.train]\nepochs = "two"\n')
    code = main(["run", "-b", name, "-m", "ew", "--plugin", str(plugin), "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and error in err
    assert f"profile 'quick' of {name}" in err and str(plugin) in err


def test_a_sweep_file_says_which_plugins_it_imports(tmp_path, capsys):
    plugin = tmp_path / "announced_plugin.py"
    plugin.write_text("ANSWER = 42\n")
    sweep = tmp_path / "sweep.toml"
    sweep.write_text('plugins = ["announced_plugin.py"]\nbenchmarks = ["digits_tasks"]\n'
                     'methods = ["ew"]\nseeds = [0]\n')
    assert main(["sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert f"importing plugin file {plugin}" in capsys.readouterr().err
    assert main(["list", "benchmarks", "--sweep", str(sweep)]) == 0
    assert f"importing plugin file {plugin}" in capsys.readouterr().err
