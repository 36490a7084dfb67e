"""The report's LaTeX tables: text escaped so that pdflatex prints what the report says
(``<`` and ``>`` are not ¡ and ¿ in LaTeX's default fonts), tables at their natural size in
\\small type (never scaled), split by columns when too wide, and every generated .tex of a
small report compiles with pdflatex (where it is installed) to the text it should show."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from analysis.report import build_report
from analysis.table import TEX_LINE_CHARS, TEX_LONG_ROWS, _tex, tex_width, to_latex
from tests.test_analysis_support import const, write_run

TASKS = {("a", "acc"): (True, "%"), ("b", "err"): (False, "")}


def test_angle_brackets_and_bar_are_text_commands():
    assert _tex("p < 0.05 > q | r") == r"p \textless{} 0.05 \textgreater{} q \textbar{} r"
    assert _tex("α ≈ 2, † tie, R² ≥ 0.5") == r"$\alpha$ $\approx$ 2, $^\dagger$ tie, R$^2$ $\ge$ 0.5"
    assert _tex("−α") == r"$-\alpha$"  # adjacent formulas joined


def test_any_other_character_becomes_ascii():
    assert _tex("café") == "cafe"
    assert _tex("α̂") == r"$\alpha$"  # the combining hat is dropped, not passed to pdflatex
    assert _tex("任务") == "??"
    assert _tex("x ∮ y 😀").isascii()


def _cells(n_cols: int, n_rows: int = 3):
    header = ["method"] + [rf"task{j} acc (\%) $\uparrow$" for j in range(n_cols)]
    body = [[f"m{i}"] + [r"85.00 $\pm$ 1.41" for _ in range(n_cols)] for i in range(n_rows)]
    return header, body


def test_a_narrow_table_is_one_small_unscaled_table():
    tex = to_latex(*_cells(3), "caption")
    assert tex.count(r"\begin{table}") == 1 and r"\small" in tex
    assert r"\resizebox" not in tex and r"\scalebox" not in tex
    assert "part 1" not in tex


def test_a_wide_table_is_split_by_columns_with_the_row_names_in_each_part():
    header, body = _cells(12)
    tex = to_latex(header, body, "caption")
    parts = tex.split(r"\begin{table}")[1:]
    assert len(parts) >= 3 and r"\resizebox" not in tex
    shown = []
    for i, part in enumerate(parts):
        assert f"part {i + 1} of {len(parts)}" in part and r"\small" in part
        rows = [r for r in part.splitlines() if re.match(r"m\d", r)]
        assert [r.split(" & ")[0] for r in rows] == ["m0", "m1", "m2"]  # the key column
        line = rows[0].removesuffix(r" \tabularnewline")
        assert tex_width(line.replace(" & ", "  ")) <= TEX_LINE_CHARS
        shown.append(part.count("task"))
    assert sum(shown) == 12  # every column once


def test_long_text_wraps_and_long_tables_break_across_pages():
    header = ["run_dir", "reason"]
    body = [["/results/bench/method/seed0-abcdef/x", "a failure reason " * 6]] * 3
    tex = to_latex(header, body, "left out")
    assert re.search(r"\\begin\{tabular\}\{p\{[\d.]+em\}p\{[\d.]+em\}\}", tex)
    assert r"/\allowbreak{}" in tex and r"\raggedright" in tex
    many = to_latex(*_cells(2, TEX_LONG_ROWS + 1), "many rows")
    assert r"\begin{longtable}" in many and r"\endhead" in many
    assert r"\begin{table}" not in many


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A small report: three methods, two seeds, a failed run whose reason holds < and >."""
    root = tmp_path_factory.mktemp("latex") / "results"
    for seed in (0, 1):
        for method, (acc, err) in {"stl": (80, 2.0), "ew": (78, 2.2), "uw": (82, 1.9)}.items():
            write_run(root, "bench", method, seed, {("a", "acc"): const(acc + seed),
                                                    ("b", "err"): const(err + 0.1 * seed)},
                      tasks=TASKS, config_hash=method,
                      weights=[{"a": 1.0, "b": 0.01}] * 3 if method == "uw" else None)
    write_run(root, "bench", "mgda", 0, {("a", "acc"): const(1.0)}, tasks=TASKS,
              status="failed", reason="loss > 1e6 at step <3>")
    out = root.parent / "report"
    build_report(root, out, ("tex", "md", "csv"))
    return out


def test_every_tex_file_is_ascii_and_unscaled(report):
    files = sorted((report / "tables").glob("*.tex"))
    assert {"comparison_bench", "cost_bench", "left_out"} <= {p.stem for p in files}
    for path in files:
        text = path.read_text()
        assert text.isascii(), path.name
        assert r"\resizebox" not in text and r"\small" in text, path.name
        assert not re.search(r"[<>|]", text), path.name  # ¡ ¿ — in OT1 fonts
    comparison = (report / "tables" / "comparison_bench.tex").read_text()
    assert "seeds 0, 1: 2 per row" in comparison and "mean $\\pm$ std" in comparison
    assert "relative to the stl runs" in comparison and "compared set" in comparison
    assert r"\textless{}3\textgreater{}" in (report / "tables" / "left_out.tex").read_text()


def _compile(tex_file, workdir):
    doc = workdir / f"{tex_file.stem}_doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{longtable}\n"
                   f"\\begin{{document}}\n\\input{{{tex_file}}}\n\\end{{document}}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                         cwd=workdir, capture_output=True, text=True, timeout=120)
    log = doc.with_suffix(".log").read_text(errors="replace")
    return run.returncode, log, doc.with_suffix(".pdf")


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (apt-get install texlive-latex-base "
                           "texlive-latex-recommended): the .tex files are checked as strings only")
def test_every_tex_file_compiles_and_prints_what_it_says(report, tmp_path):
    has_text = shutil.which("pdftotext") is not None
    texts = {}
    for path in sorted((report / "tables").glob("*.tex")):
        code, log, pdf = _compile(path, tmp_path)
        assert code == 0, f"{path.name}: pdflatex failed\n{log[-2000:]}"
        overfull = [float(w) for w in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide", log)]
        assert not [w for w in overfull if w > 1.0], f"{path.name} is wider than the text: {overfull}"
        if has_text:
            texts[path.stem] = subprocess.run(["pdftotext", "-layout", str(pdf), "-"],
                                              capture_output=True, text=True).stdout
    if not has_text:
        pytest.skip("pdftotext is not installed (poppler-utils): compiled, text not checked")
    everything = "\n".join(texts.values())
    assert "¡" not in everything and "¿" not in everything
    assert "loss > 1e6 at step <3>" in " ".join(texts["left_out"].split())
    assert "adjusted p < 0.05" in " ".join(everything.split())
    assert "†" in texts["comparison_bench"] and "±" in texts["comparison_bench"]
