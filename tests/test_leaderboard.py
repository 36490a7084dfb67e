"""The leaderboard: run records as data, the protocol's stages and selection, the command."""
from __future__ import annotations

import gzip
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks  # noqa: F401  (registers the benchmarks)
import methods  # noqa: F401  (registers the methods)
from analysis.leaderboard import Row, compare, leaderboard_frame
from analysis.measures import detectable_difference
from analysis.records import RunRecord, machine, read_records, write_records
from engine.core import results as R
from engine.errors import ConfigError, DataError, UserError
from engine.runs import leaderboard as L
from engine.runs import leaderboard_report as LR

ROOT = Path(__file__).resolve().parent.parent

TINY_PROTOCOL = """
profile = "quick"
set = { "train.epochs" = 2, "data.train_size" = 200, "data.val_size" = 100, "data.test_size" = 100 }
lr_grid = [1e-3, 3e-3]
tuning_seed = 0
seeds = [0, 1]
selection = "val_delta_p_task_last_epoch"
default_knob = [{ "train.weight_decay" = 1e-3 }]
front_weights = [0.2]
[knobs]
cagrad = [{ "method.cagrad.c" = 0.2 }]
[benchmarks]
synthetic = ["stl", "ew", "cagrad", "fixed"]
"""


def tiny_protocol(tmp_path: Path) -> L.Protocol:
    path = tmp_path / "protocol.toml"
    path.write_text(TINY_PROTOCOL)
    return L.load_protocol(path)


def record(method: str, seed: int, overrides: tuple[str, ...], val: dict, test: dict | None = None,
           status: str = "complete", config_hash: str = "h") -> RunRecord:
    tasks = {"a": {"acc": {"higher_is_better": True, "unit": "%"}},
             "b": {"err": {"higher_is_better": False, "unit": ""}}}
    curve = lambda m: [{"a": {"acc": m[0]}, "b": {"err": m[1]}}]  # noqa: E731
    return RunRecord(method, seed, status, tuple(sorted(overrides)), config_hash, {}, tasks,
                     {"val": curve(val) if status == "complete" else [],
                      "test": curve(test or val) if status == "complete" else []},
                     0.01, {"torch": "x", "torch_threads": 1, "git_commit": None, "device": "cpu"})


# --------------------------------------------------------------------------- records

def test_records_round_trip_with_the_same_bytes(tmp_path):
    recs = [record("ew", 1, ("train.lr=0.001",), (90.0, 1.0)),
            record("ew", 0, ("train.lr=0.001",), (91.0, 0.9)),
            record("pcgrad", 0, ("train.lr=0.003",), (0, 0), status="diverged")]
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_records(a, "bench", "p1", recs)
    write_records(b, "bench", "p1", list(reversed(recs)))
    assert a.read_bytes() == b.read_bytes()  # order and timestamp do not change the file
    back = read_records(a, "bench", "p1")
    assert sorted(r.key for r in back) == sorted(r.key for r in recs)
    assert {r.key: r for r in back}[("ew", ("train.lr=0.001",), 0)].final("val") == \
        {"a": {"acc": 91.0}, "b": {"err": 0.9}}
    assert read_records(tmp_path / "missing.jsonl.gz", "bench", "p1") == []


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"not gzip"), "not a readable gzipped records file"),
    (lambda p: p.write_bytes(gzip.compress(b'{"format": 1, "benchmark": "bench", "protocol": "p1"}\n{oops\n')),
     ":2: not a JSON line"),
    (lambda p: p.write_bytes(gzip.compress(b'{"format": 1, "benchmark": "bench", "protocol": "p1"}\n{"method": "ew"}\n')),
     ":2: not a run record"),
    (lambda p: p.write_bytes(gzip.compress(b'{"format": 99, "benchmark": "bench", "protocol": "p1"}\n')),
     "records of format 99"),
    (lambda p: p.write_bytes(gzip.compress(b'{"format": 1, "benchmark": "other", "protocol": "p1"}\n')),
     "records of benchmark 'other'"),
    (lambda p: p.write_bytes(gzip.compress(b'{"format": 1, "benchmark": "bench", "protocol": "p0"}\n')),
     "made under protocol p0"),
])
def test_a_damaged_or_foreign_records_file_is_a_one_line_error(tmp_path, damage, message):
    path = tmp_path / "r.jsonl.gz"
    damage(path)
    with pytest.raises(DataError, match=message) as info:
        read_records(path, "bench", "p1")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- protocol

def test_protocol_hash_covers_the_shared_settings_not_the_method_lists(tmp_path):
    base = tiny_protocol(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(TINY_PROTOCOL.replace('"cagrad", "fixed"', '"fixed"'))
    assert L.load_protocol(other).hash() == base.hash()
    other.write_text(TINY_PROTOCOL.replace("lr_grid = [1e-3, 3e-3]", "lr_grid = [1e-3]"))
    assert L.load_protocol(other).hash() != base.hash()


def test_the_shipped_protocol_lists_every_method_or_excludes_it_with_a_reason():
    from methods.registry import METHODS

    protocol = L.load_protocol()
    ranked = set(protocol.methods("multi_mnist", tasks=2))
    for name in METHODS.names():
        if L.is_builtin(name):
            assert (name in ranked or name in protocol.exclude or name == L.FRONT
                    or L.too_few_tasks(name, 2)), name
    # Krum and the trimmed mean need three tasks: ranked where there are, not on two.
    assert {"krum", "trimmed_mean"} <= set(protocol.methods("yeast", tasks=14)) - ranked
    assert {"krum", "trimmed_mean"} <= set(protocol.methods("digits_tasks", tasks=3))
    assert not L.too_few_tasks("pcgrad", 2) and L.too_few_tasks("krum", 2)
    labels = [e.label for e in protocol.entries("multi_mnist", tasks=2)]
    assert labels[:2] == ["stl", "ew"]  # the base and the reference come first
    assert [x for x in labels if x.startswith("fixed")] == [f"fixed w={w:g}"
                                                            for w in protocol.front_weights]
    assert not any(x.startswith("fixed") for x in
                   (e.label for e in protocol.entries("multi_mnist", tasks=3)))
    for name, sets in protocol.knobs.items():  # every knob names a real hyperparameter
        from engine.runs.runner import build_requests
        for overrides in sets:
            build_requests("synthetic", [name], [0], "quick", list(overrides), "cpu", None,
                           check_data=False)


def test_stages_select_on_validation_and_never_on_test(tmp_path):
    protocol = tiny_protocol(tmp_path)
    board = L.Board(protocol, "synthetic", 1e-3)
    fixed = protocol.fixed
    lr = lambda v: tuple(sorted(fixed + (f"train.lr={v}",)))  # noqa: E731
    with_knob = lambda v, k: tuple(sorted(lr(v) + k))  # noqa: E731
    (ew,) = [e for e in protocol.entries("synthetic", ["ew"])]
    board.known = {}
    first = board.state(ew)
    assert [p.stage for p in first.needed] == ["lr", "lr"]
    assert first.selected is None
    # The reference (stl's untuned tuning run) and ew's learning-rate runs: 3e-3 is better on
    # validation, 1e-3 on test; the protocol must follow validation.
    board.known = {("stl", lr(0.001), 0): record("stl", 0, lr(0.001), (90.0, 1.0)),
                   ("ew", lr(0.001), 0): record("ew", 0, lr(0.001), (80.0, 1.2), (99.0, 0.1)),
                   ("ew", lr(0.003), 0): record("ew", 0, lr(0.003), (85.0, 1.1), (50.0, 3.0))}
    second = board.state(ew)
    knob = ("train.weight_decay=0.001",)
    assert [(p.stage, p.overrides) for p in second.needed] == [("knob", with_knob(0.003, knob))]
    # The knob run diverges: it scores -inf and the learning-rate winner is selected.
    board.known[("ew", with_knob(0.003, knob), 0)] = record(
        "ew", 0, with_knob(0.003, knob), (0, 0), status="diverged")
    third = board.state(ew)
    assert third.selected == lr(0.003)
    assert {(p.stage, p.seed) for p in third.needed} == {("final", 1), ("untuned", 1)}
    assert third.untuned == lr(0.001)
    for o in (lr(0.003), lr(0.001)):  # seed 0 of both is a tuning run already
        board.known[("ew", o, 1)] = record("ew", 1, o, (85.0, 1.1))
    assert board.state(ew).final


def test_validation_score_is_delta_p_task_against_the_reference():
    ref = record("stl", 0, (), (80.0, 2.0))
    mine = record("ew", 0, (), (88.0, 1.0))  # +10 % on a, error halved (+50 %) on b
    assert L.validation_score(mine, ref) == pytest.approx(30.0)
    assert L.validation_score(record("ew", 0, (), (math.nan, 1.0)), ref) == -math.inf


def test_the_table_reads_every_row_against_tuned_stl_and_tests_against_ew():
    stl = [record("stl", s, (), (0, 0), (80.0, 2.0)) for s in range(3)]
    ew = [record("ew", s, (), (0, 0), (80.0 + s, 2.0 + 0.1 * s * s)) for s in range(3)]
    good = [record("x", s, (), (0, 0), (88.0 + s, 1.0)) for s in range(3)]
    untuned = [record("x", s, (), (0, 0), (80.0, 2.0)) for s in range(3)]
    frame, notes = leaderboard_frame([Row("stl", (), stl, []), Row("ew", (), ew, []),
                                      Row("x", ("train.lr=0.003",), good, untuned)])
    x = frame.set_index("label").loc["x"]
    assert frame.label.tolist()[0] == "x"
    # per seed s: a +(8+s)/80, b +50 % -> mean over seeds of ((8+s)/80 + 0.5)/2; ew's error
    # grows by 0.1·s² (a relative change of −0.05·s²), so the per-seed differences vary
    assert x.dp == pytest.approx(100 * (9 / 80 + 0.5) / 2)
    assert x.worst.startswith("a ")
    assert x.test == "paired" and x.vs_ew == pytest.approx(100 * (8 / 80 + 0.5 + 0.05 * 5 / 3) / 2)
    assert x.untuned.startswith("+0.00")
    assert "paired" in notes[0] and "holm" in notes[0]


def test_the_metrics_table_and_the_table_without_untuned_seeds():
    from analysis.leaderboard import metrics_markdown, to_markdown

    stl = [record("stl", s, (), (0, 0), (80.0, 2.0)) for s in range(3)]
    ew = [record("ew", s, (), (0, 0), (80.0 + s, 2.0)) for s in range(3)]
    one = [record("x", 0, (), (0, 0), (90.0, 1.5))]
    rows = [Row("stl", (), stl, []), Row("ew", (), ew, []), Row("x", (), one, [])]
    frame, notes = leaderboard_frame(rows)
    assert "untuned" in to_markdown(frame, notes)
    short = to_markdown(frame, notes, untuned=False).splitlines()
    assert "untuned" not in short[0] and short[0].count("|") == short[2].count("|") == 10
    lines = metrics_markdown(rows, ["x", "ew", "stl"]).splitlines()
    assert lines[0] == "| method | a acc ↑ | b err ↓ |"
    # one seed: no spread; three: the sample standard deviation
    assert lines[2] == "| x | 90 | 1.5 |"
    assert lines[3] == "| ew | 81 ± 1 | 2 ± 0 |" and lines[4].startswith("| stl | 80 ± 0 |")


def test_a_table_before_ews_seeds_says_that_nothing_is_tested_yet():
    stl = [record("stl", s, (), (0, 0), (80.0, 2.0)) for s in range(3)]
    x = [record("x", s, (), (0, 0), (85.0, 2.0)) for s in range(3)]
    frame, notes = leaderboard_frame([Row("stl", (), stl, []), Row("ew", (), [], []),
                                      Row("x", (), x, [])])
    assert frame.p.isna().all()
    assert notes == ["Δ against tuned stl (mean of its seeds); no row is tested against tuned "
                     "ew yet: ew's seeds are not finished."]
    frame, notes = leaderboard_frame([Row("stl", (), stl, [])])
    assert notes[0].endswith("ew's seeds are not finished.")


def test_selections_at_the_edge_of_the_learning_rate_grid_are_named():
    grid = [1e-4, 1e-3, 1e-2]
    row = lambda label, lr: Row(label, (f"train.lr={lr}", "train.weight_decay=0.001"), [], [])  # noqa: E731
    assert LR.grid_edge_text(grid, [row("stl", 0.01), row("ew", 0.01)]).endswith(
        "lr 0.01, the grid's largest, by every row.")
    text = LR.grid_edge_text(grid, [row("stl", 0.0001), row("ew", 0.001), row("x", 0.01),
                                   row("y", 0.01)])
    assert text.endswith("lr 0.0001, the grid's smallest, by stl; "
                         "lr 0.01, the grid's largest, by x, y.")
    assert LR.grid_edge_text(grid, [row("stl", 0.001)]) == ""
    assert LR.grid_edge_text([1e-3], [row("stl", 0.001)]) == ""  # one value: no edge to cross


def test_compare_pairs_by_seed_and_falls_back_to_welch():
    diff, p, test, detectable = compare({0: 1.0, 1: 2.0, 2: 3.5}, {0: 0.0, 1: 1.0, 2: 2.0})
    assert test == "paired" and diff == pytest.approx(6.5 / 3 - 1.0)
    assert 0 < p < 1
    assert detectable == pytest.approx(detectable_difference([1.0, 2.0, 3.5], [0.0, 1.0, 2.0],
                                                             paired=True))
    _, _, test, _ = compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 1.0})
    assert test == "Welch"


# --------------------------------------------------------------------------- end to end

def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], cwd=cwd,
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1",
                                                               "PATH": "/usr/bin:/bin",
                                                               "TQDM_DISABLE": "1"})


@pytest.mark.slow
def test_the_command_runs_the_protocol_records_it_and_never_reruns_a_record(tmp_path):
    protocol = tiny_protocol(tmp_path)
    common = ["leaderboard", "-b", "synthetic", "--protocol", str(protocol.path),
              "--no-progress"]
    first = cli(*common, "--out", str(tmp_path / "results"), "--record")
    assert first.returncode == 0, first.stderr
    assert "| cagrad |" in first.stdout and "| fixed w=0.2 |" in first.stdout
    records = protocol.records_path("synthetic")
    runs = read_records(records, "synthetic", protocol.hash())
    # stl: 2 lr + 1 knob + final and untuned seed 1 (seed 0 of each is a tuning run, or both
    # are one config) -> every entry has its two seeds of the selected configuration.
    assert {r.method for r in runs} == {"stl", "ew", "cagrad", "fixed"}
    assert all(r.status in ("complete", "diverged") for r in runs)
    this_machine = machine(R.environment(torch.device("cpu")))
    assert all(r.env["machine"] == this_machine for r in runs)
    # A fresh results folder: everything comes from the records, nothing is trained.
    again = cli(*common, "--out", str(tmp_path / "fresh"))
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "fresh").exists()
    table = lambda text: [l for l in text.splitlines() if l.startswith("| ")]  # noqa: E731
    assert table(again.stdout) == table(first.stdout)
    missing = cli(*common, "--no-run", "-m", "pcgrad", "--out", str(tmp_path / "fresh"))
    assert missing.returncode == 2 and "no records or runs of pcgrad" in missing.stderr
    # A record made under another config than this harness resolves is refused, not rerun.
    tampered = [RunRecord(**{**r.__dict__, "config_hash": "deadbeef"}) if r.method == "ew" else r
                for r in runs]
    write_records(records, "synthetic", protocol.hash(), tampered)
    refused = cli(*common, "--out", str(tmp_path / "fresh"))
    assert refused.returncode == 2
    assert "no longer describe this harness" in refused.stderr


def test_the_docs_say_which_machines_and_commits_made_the_records():
    def made(machine_name, commit):
        r = record("ew", 0, (), (90.0, 1.0))
        return RunRecord(**{**r.__dict__, "env": {**r.env, "machine": machine_name,
                                                  "git_commit": commit}})
    epyc = made("AMD EPYC, 2 cores", "c1")
    assert LR.made_with([epyc, epyc]) == ("torch x, 1 thread(s), cpu (AMD EPYC, 2 cores), "
                                         "at 1 commit(s) of this repository")
    assert LR.made_with([epyc, made(None, "c2"), epyc]) == (
        "torch x, 1 thread(s), cpu (AMD EPYC, 2 cores: 2 run(s)); "
        "torch x, 1 thread(s), cpu (machine not recorded: 1 run(s)), "
        "at 2 commit(s) of this repository")
    assert machine({"processor": "AMD EPYC", "cores": 2}) == "AMD EPYC, 2 cores"
    assert machine({"processor": "AMD EPYC", "device_name": "NVIDIA H100"}) == "NVIDIA H100"
    assert machine({"device": "cpu"}) is None


def test_the_processor_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "model name\t: AMD EPYC 7B13\nprocessor\t: 1\n"
                       "model name\t: AMD EPYC 7B13\n")
    assert R.processor(cpuinfo) == "AMD EPYC 7B13"
    env = R.environment(torch.device("cpu"))
    assert env["cores"] == R.usable_cores() >= 1 and "processor" in env


@pytest.mark.slow
def test_a_plugin_method_is_ranked_against_the_records_with_a_drift_check(tmp_path):
    protocol = tiny_protocol(tmp_path)
    common = ["leaderboard", "-b", "synthetic", "--protocol", str(protocol.path),
              "--no-progress"]
    assert cli(*common, "-m", "stl", "ew", "cagrad", "--out", str(tmp_path / "base"),
               "--record").returncode == 0
    records = protocol.records_path("synthetic")
    before = records.read_bytes()
    plugin = tmp_path / "half_weights.py"
    plugin.write_text(
        "import torch\n"
        "from methods.base import Weighted, Weighting\n"
        "from methods.registry import register_method\n\n"
        "@register_method('halved')\n"
        "class Half(Weighting):\n"
        "    description = 'every task weighted 0.5'\n"
        "    def weigh(self, ctx):\n"
        "        return Weighted(weights=torch.full_like(ctx.losses.detach(), 0.5))\n")
    user = cli(*common, "--plugin", str(plugin), "-m", "halved", "--out", str(tmp_path / "mine"),
               "--record")
    assert user.returncode == 0, user.stderr
    assert "| halved |" in user.stdout and "| ew |" in user.stdout
    # its row stands among every shipped one, tested under one correction over all of them
    assert "| cagrad |" in user.stdout and "holm-corrected over 3 rows" in user.stdout
    assert "equals the shipped record exactly" in user.stdout
    assert records.read_bytes() == before  # a plugin's runs never enter the shipped records
    runs = (tmp_path / "mine" / "synthetic").glob("*/*/summary.json")
    trained = {p.parent.parent.name for p in runs}
    assert trained == {"halved", "ew"}  # its own runs, and ew's drift check only


@pytest.mark.slow
def test_bad_input_is_a_one_line_error(tmp_path):
    protocol = tiny_protocol(tmp_path)
    common = ["leaderboard", "--protocol", str(protocol.path), "--no-run"]
    for args, message in [(["-b", "yeast"], "has no leaderboard"),
                          (["-b", "synthetic", "-m", "nosuch"], "unknown method 'nosuch'"),
                          (["-b", "synthetic", "--jobs", "0"], "expected an integer >= 1")]:
        result = cli(*common, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
    # Nothing to show: a benchmark without records or runs, a method without any.
    empty = cli(*common, "-b", "synthetic", "--out", str(tmp_path / "none"))
    assert empty.returncode == 2 and "no records of synthetic" in empty.stderr
    assert "\n" not in empty.stderr.strip()


PROTOCOLS = sorted((ROOT / "benchmarks" / "leaderboard").glob("**/protocol.toml"))


@pytest.mark.parametrize("path", PROTOCOLS, ids=lambda p: p.parent.name)
def test_the_committed_tables_are_what_the_records_give(path):
    protocol = L.load_protocol(path)
    text = protocol.docs_path.read_text()
    checked = 0
    for benchmark in protocol.benchmarks:
        begin, end = LR.markers(benchmark, protocol)
        if begin not in text:
            continue
        section = text.split(begin, 1)[1].split(end, 1)[0].strip()
        assert section == LR.docs_section(protocol, benchmark).strip(), benchmark
        checked += 1
    assert checked >= 1


def test_another_protocols_sections_are_its_own(tmp_path):
    """A protocol besides the default one writes its sections to its own page, under
    markers naming its folder, and leaves a page's other sections alone."""
    default = L.load_protocol()
    other = L.load_protocol(ROOT / "benchmarks" / "leaderboard" / "repmtl_pretrained" / "protocol.toml")
    assert other.docs_path == ROOT / "docs" / "repmtl.md" and default.docs_path.name == "leaderboard.md"
    mine, theirs = LR.markers("scenes", other), LR.markers("scenes", default)
    assert mine[0].startswith("<!-- leaderboard:repmtl_pretrained/scenes:begin")
    assert "--protocol benchmarks/leaderboard/repmtl_pretrained/protocol.toml -b scenes" in mine[0]
    assert theirs == LR.markers("scenes")
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{theirs[0]}\nkept\n{theirs[1]}\n{mine[0]}\nold\n{mine[1]}\nend\n")
    LR.write_docs(other, "scenes", page)
    text = page.read_text()
    assert "kept" in text and "old" not in text and text.endswith("end\n")
    assert text.split(mine[0], 1)[1].split(mine[1])[0].strip() == LR.docs_section(other, "scenes").strip()
    with pytest.raises(UserError, match="no generated section for synthetic"):
        LR.write_docs(other, "synthetic", page)
    bad = tmp_path / "protocol.toml"
    bad.write_text(TINY_PROTOCOL.replace("profile =", "docs = 3\nprofile =", 1))
    with pytest.raises(ConfigError, match="docs must be a page's path"):
        L.load_protocol(bad)
    bad.write_text(TINY_PROTOCOL.replace("profile =", 'metrics_table = "yes"\nprofile =', 1))
    with pytest.raises(ConfigError, match="metrics_table must be true or false"):
        L.load_protocol(bad)


@pytest.mark.parametrize("folder", ["repmtl_pretrained", "repmtl_scratch"])
def test_the_repmtl_protocols_name_valid_settings(folder):
    """Every run the Rep-MTL protocols can plan resolves (knobs, profile, fixed settings)."""
    from engine.runs.runner import build_requests

    protocol = L.load_protocol(ROOT / "benchmarks" / "leaderboard" / folder / "protocol.toml")
    entries = protocol.entries("scenes")
    assert [e.method for e in entries] == ["stl", "ew", "repmtl", "repmtl_tsr", "repmtl_csa"]
    lambdas = {o for knob in protocol.knobs["repmtl"] for o in knob
               if o.startswith("method.repmtl.lambda_tsr")}
    assert len(lambdas) == 7  # the paper's grid besides the default 0.9, and 0.01, 0.1, 0.3
    assert set(protocol.knob_from) == {"repmtl_tsr", "repmtl_csa"} and not protocol.untuned_seeds
    for label, (source, keys) in protocol.knob_from.items():  # the ablations at repmtl's λ
        (request,) = build_requests("scenes", [label], [0], protocol.profile,
                                    [f"{own}=1.3" for own in keys.values()], "cpu", None,
                                    check_data=False)
        own = request.config.methods[label]
        assert source == "repmtl" and getattr(own, "lambda_tsr", 1.3) == getattr(own, "lambda_csa", 1.3) == 1.3
    for entry in entries:
        for knob in (entry.knob if entry.label not in protocol.knob_from else ()):
            (request,) = build_requests("scenes", [entry.method], [0], protocol.profile,
                                        list(entry.with_(knob)), "cpu", None, check_data=False)
            expected = ("scratch", 48) if folder == "repmtl_scratch" else ("mobilenet_v2", 96)
            assert (request.config.data.encoder, request.config.data.size) == expected



def test_the_long_repmtl_protocol_trains_the_pretrained_profile_three_times_longer():
    """repmtl_pretrained_long: the pretrained profile at 60 epochs; Rep-MTL at its default λ
    and at the λ the 20-epoch protocol selected; stl and ew without a knob."""
    from engine.runs.runner import build_requests

    protocol = L.load_protocol(ROOT / "benchmarks" / "leaderboard" / "repmtl_pretrained_long"
                               / "protocol.toml")
    entries = protocol.entries("scenes")
    assert [e.method for e in entries] == ["stl", "ew", "repmtl"]
    assert [e.knob for e in entries[:2]] == [(), ()]
    for entry in entries:
        for knob in ((), *entry.knob):
            (request,) = build_requests("scenes", [entry.method], [0], protocol.profile,
                                        list(entry.with_(knob)), "cpu", None, check_data=False)
            config = request.config
            assert (config.data.encoder, config.data.size, config.train.epochs) == \
                ("mobilenet_v2", 96, 60)
            if entry.method == "repmtl":  # λ = 0.01 for the learning rate, then 0.9
                own = config.methods["repmtl"]
                assert own.lambda_tsr == own.lambda_csa == (0.9 if knob else 0.01)


def test_a_methods_own_settings_enter_every_run_and_yield_to_its_knob(tmp_path):
    entry = L.Entry("r", "r", ("train.epochs=2",), (), ("method.r.lam=0.01",))
    assert entry.with_() == ("method.r.lam=0.01", "train.epochs=2")
    assert entry.with_(("method.r.lam=0.9",), ("train.lr=0.001",)) == \
        ("method.r.lam=0.9", "train.epochs=2", "train.lr=0.001")
    bad = tmp_path / "protocol.toml"
    bad.write_text(TINY_PROTOCOL + '[method_set]\ncagrad = { "method.ew.x" = 1 }\n')
    with pytest.raises(ConfigError, match=r"\[method_set\] cagrad must be a table of "
                                          r"method.cagrad.<option> = value"):
        L.load_protocol(bad)
    # Loaded: the learning-rate runs carry the setting, and the table shows it as selected.
    good = tmp_path / "good.toml"
    good.write_text(TINY_PROTOCOL + '[method_set]\ncagrad = { "method.cagrad.c" = 0.3 }\n')
    protocol = L.load_protocol(good)
    (cagrad,) = protocol.entries("synthetic", ["cagrad"])
    board = L.Board(protocol, "synthetic", 1e-3)
    board.known = {}
    assert all("method.cagrad.c=0.3" in p.overrides for p in board.state(cagrad).needed)
    lr = lambda v: cagrad.with_((f"train.lr={v}",))  # noqa: E731
    stl = tuple(sorted(protocol.fixed + ("train.lr=0.001",)))
    board.known = {("stl", stl, 0): record("stl", 0, stl, (90.0, 1.0)),
                   ("cagrad", lr(0.001), 0): record("cagrad", 0, lr(0.001), (85.0, 1.1)),
                   ("cagrad", lr(0.003), 0): record("cagrad", 0, lr(0.003), (80.0, 1.2))}
    knob = cagrad.with_(("train.lr=0.001",), ("method.cagrad.c=0.2",))
    assert "method.cagrad.c=0.3" not in knob
    board.known[("cagrad", knob, 0)] = record("cagrad", 0, knob, (70.0, 2.0))
    board.known[("cagrad", lr(0.001), 1)] = record("cagrad", 1, lr(0.001), (85.0, 1.1))
    (row,) = board.rows([board.state(cagrad)])
    assert row.selected == ("method.cagrad.c=0.3", "train.lr=0.001")


INHERITING = TINY_PROTOCOL.replace('default_knob', 'untuned_seeds = false\ndefault_knob') \
    .replace('synthetic = ["stl", "ew", "cagrad", "fixed"]', 'synthetic = ["stl", "cagrad", "ew"]') \
    + '[knob_from.ew]\nentry = "cagrad"\nkeys = { "method.cagrad.c" = "train.weight_decay" }\n'


def test_an_entry_takes_its_knob_from_another_entrys_selection(tmp_path):
    """knob_from: the entry's knob is the source's selected value under its own key; it waits
    until the source has selected; untuned_seeds = false plans no untuned seeds."""
    path = tmp_path / "protocol.toml"
    path.write_text(INHERITING)
    protocol = L.load_protocol(path)
    assert protocol.hash() == tiny_protocol(tmp_path).hash()  # the runs are the same runs
    board = L.Board(protocol, "synthetic", 1e-3)
    lr = lambda v: tuple(sorted(protocol.fixed + (f"train.lr={v}",)))  # noqa: E731
    (ew,) = protocol.entries("synthetic", ["ew"])
    (cagrad,) = protocol.entries("synthetic", ["cagrad"])
    board.known = {("stl", lr(0.001), 0): record("stl", 0, lr(0.001), (90.0, 1.0))}
    for method in ("ew", "cagrad"):
        for v, score in ((0.001, 80.0), (0.003, 70.0)):
            board.known[(method, lr(v), 0)] = record(method, 0, lr(v), (score, 1.0))
    waiting = board.state(ew)
    assert waiting.needed == [] and waiting.waits_for == "cagrad" and not waiting.final
    c_knob = tuple(sorted(lr(0.001) + ("method.cagrad.c=0.2",)))
    board.known[("cagrad", c_knob, 0)] = record("cagrad", 0, c_knob, (85.0, 1.0))
    assert board.state(cagrad).selected == c_knob
    assert [p.stage for p in board.state(cagrad).needed] == ["final"]  # no untuned seed
    inherited = tuple(sorted(lr(0.001) + ("train.weight_decay=0.2",)))
    assert [(p.stage, p.overrides) for p in board.state(ew).needed] == [("knob", inherited)]
    assert "ew (waits for cagrad)" in LR._unfinished([waiting])


def test_knob_from_refuses_a_malformed_table(tmp_path):
    path = tmp_path / "protocol.toml"
    path.write_text(TINY_PROTOCOL + '[knob_from.ew]\nentry = "cagrad"\n')
    with pytest.raises(L.ConfigError, match=r"needs entry = "):
        L.load_protocol(path)
    path.write_text(TINY_PROTOCOL + '[knob_from.cagrad]\nentry = "ew"\nkeys = { "a" = "b" }\n')
    with pytest.raises(L.ConfigError, match="both a knob list"):
        L.load_protocol(path)
    path.write_text(TINY_PROTOCOL.replace("default_knob", "untuned_seeds = 1\ndefault_knob"))
    with pytest.raises(L.ConfigError, match="untuned_seeds must be true or false"):
        L.load_protocol(path)


# --------------------------------------------------------------------------- the front

def test_a_point_is_dominated_by_the_front_polyline_only_where_a_segment_beats_it():
    from analysis.leaderboard import dominated_by_polyline

    front = np.array([[0.0, 2.0], [2.0, 0.0]])  # the segment x + y = 2, x in [0, 2]
    assert dominated_by_polyline(np.array([1.0, 1.0]), front)  # on it
    assert dominated_by_polyline(np.array([0.5, 0.5]), front)
    assert not dominated_by_polyline(np.array([1.1, 1.0]), front)  # just beyond
    assert not dominated_by_polyline(np.array([3.0, -1.0]), front)  # past its end
    assert dominated_by_polyline(np.array([1.0, 1.0]), np.array([[1.0, 1.0]]))
    assert not dominated_by_polyline(np.array([1.0, 1.01]), np.array([[1.0, 1.0]]))


def test_the_zoom_box_takes_in_a_point_that_would_sit_on_its_edge():
    import pandas as pd
    from analysis.leaderboard import _zoom_box

    crowd = [f"m{i}" for i in range(8)]
    points = pd.DataFrame({"a": [*range(8), 7.9, 20.0], "b": [0.0] * 10},
                          index=[*crowd, "near", "far"])
    (low, high), b = _zoom_box(points, ["a", "b"], crowd)
    # 10-90 % of 0..7 is 0.7..6.3, padded by a quarter of it: -0.7..7.7; "near" (7.9) lies
    # within 4 % of the range beyond the edge, so the box takes it in with that margin.
    assert low == pytest.approx(-0.7)
    assert high == pytest.approx(7.9 + 0.04 * 8.4)
    assert b == pytest.approx((-0.5, 0.5))  # no spread: half a unit either side
    assert _zoom_box(points, ["a", "b"], crowd[:5]) is None  # too few to crowd


def test_beyond_front_reads_lower_is_better_metrics_negated(tmp_path):
    """Task a (accuracy, higher better) against task b (error, lower better): "good" lies
    beyond the straight line from ew to w=0.9, "bad" behind the one from w=0.1 to ew; with b
    read as higher-is-better the verdicts would swap."""
    from analysis.leaderboard import beyond_front, plot_front

    point = lambda label, acc, err: Row(label, (), [record(label, s, (), (acc, err))  # noqa: E731
                                                    for s in (0, 1)], [])
    rows = [point("stl", 96, 0.1), point("fixed w=0.1", 80, 0.2), point("ew", 90, 0.5),
            point("fixed w=0.9", 95, 1.0), point("good", 92, 0.55), point("bad", 85, 0.5)]
    assert beyond_front(rows) == (["good"], ["bad"])
    plot_front(rows, tmp_path / "front.png", "t")
    crowd = rows + [point(f"m{k}", 90 + 0.1 * k, 0.5 - 0.01 * k) for k in range(6)]
    plot_front(crowd, tmp_path / "zoomed.png", "t")  # a second panel, zoomed on the crowd
    from PIL import Image

    assert Image.open(tmp_path / "zoomed.png").width > 1.5 * Image.open(tmp_path / "front.png").width


def test_a_first_plan_leaves_out_the_methods_defined_for_more_tasks():
    """Before any run, the config's task count keeps Krum and the trimmed mean off a
    two-task benchmark's plan (they need three tasks or more), and on a 14-task one."""
    protocol = L.load_protocol()
    where = L.Where(Path("results"), "cpu", None, (), 1, False)
    two = L.profile_board(protocol, "synthetic", where)
    names = {e.method for e in protocol.entries("synthetic", None, two.tasks)}
    assert two.tasks == 2 and "ew" in names and not names & {"krum", "trimmed_mean"}
    many = L.profile_board(protocol, "yeast", where)
    assert many.tasks == 14
    assert {"krum", "trimmed_mean"} <= {e.method for e in protocol.entries("yeast", None, 14)}


@pytest.mark.parametrize("name", ["synthetic", "yeast", "digits_tasks", "digits_domains",
                                  "multi_mnist", "scenes"])
def test_a_benchmarks_task_count_is_the_number_of_tasks_it_builds(name):
    import torch

    from benchmarks.registry import BENCHMARKS
    from engine.runs.runner import build_requests

    (request,) = build_requests(name, ["ew"], [0], "quick",
                                ["data.train_size=16", "data.val_size=8", "data.test_size=8"]
                                if name in ("multi_mnist", "scenes") else [], "cpu", None)
    cls = BENCHMARKS.get(name)
    built = cls(request.config.data, None, torch.device("cpu"))
    assert cls.task_count(request.config.data) == len(built.tasks)
