"""A small document model rendered to Markdown and to one self-contained HTML page (figures
embedded as base64 PNG); every table is also written as CSV and LaTeX beside it."""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.table import _tex, _tex_header, to_latex, to_markdown


@dataclass
class Table:
    name: str
    header: list[str]
    md: list[list[str]]
    html: list[list[str]]
    caption: str


@dataclass
class Document:
    """Blocks in order: ("h", (level, text)), ("p", text), ("table", Table), ("img", (png,
    caption)), ("pre", text). ``out`` is where tables/ and figures/ live."""
    out: Path
    title: str
    formats: tuple[str, ...] = ("md", "html", "tex", "csv")
    blocks: list = field(default_factory=list)
    written: list[Path] = field(default_factory=list)

    @property
    def tables_dir(self) -> Path:
        return self.out / "tables"

    @property
    def figures_dir(self) -> Path:
        return self.out / "figures"

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def figure(self, png: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(png), caption)))

    def styled_table(self, name: str, md: tuple[list[str], list[list[str]]],
                     html_: tuple[list[str], list[list[str]]],
                     tex: tuple[list[str], list[list[str]]], frame: pd.DataFrame,
                     caption: str) -> None:
        """A table with its own Markdown/HTML/LaTeX cells (marks for best and second) and
        the numeric ``frame`` for the CSV."""
        self._files(name, frame, to_latex(*tex, caption))
        self.blocks.append(("table", Table(name, md[0], md[1], html_[1], caption)))

    def frame_table(self, name: str, frame: pd.DataFrame, caption: str, index: bool = False,
                    digits: int = 4) -> None:
        """A plain DataFrame as a table (numbers with ``digits`` significant digits)."""
        df = frame.reset_index() if index else frame
        header = [str(c) for c in df.columns]
        body = [[_cell(v, digits) for v in row] for row in df.itertuples(index=False)]
        tex = ([_tex_header(h) for h in header], [[_tex(c) for c in row] for row in body])
        self._files(name, df, to_latex(*tex, caption))
        self.blocks.append(("table", Table(name, header, body,
                                           [[html.escape(c) for c in row] for row in body],
                                           caption)))

    def _files(self, name: str, frame: pd.DataFrame, tex: str) -> None:
        self.tables_dir.mkdir(parents=True, exist_ok=True)
        if "csv" in self.formats:
            path = self.tables_dir / f"{name}.csv"
            frame.to_csv(path, index=not isinstance(frame.index, pd.RangeIndex))
            self.written.append(path)
        if "tex" in self.formats:
            path = self.tables_dir / f"{name}.tex"
            path.write_text(tex)
            self.written.append(path)

    # ------------------------------------------------------------------ rendering
    def markdown(self) -> str:
        parts = [f"# {self.title}"]
        for kind, value in self.blocks:
            if kind == "h":
                parts.append("#" * (value[0] + 1) + " " + value[1])
            elif kind == "p":
                parts.append(value)
            elif kind == "pre":
                parts.append("```\n" + value + "\n```")
            elif kind == "table":
                parts.append(to_markdown(value.header, value.md) + f"\n\n*{value.caption}*")
            elif kind == "img":
                rel = os.path.relpath(value[0], self.out)
                parts.append(f"![{value[1]}]({rel})\n\n*{value[1]}* (PDF: "
                             f"{os.path.relpath(value[0].with_suffix('.pdf'), self.out)})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                level = min(value[0] + 1, 6)
                parts.append(f"<h{level}>{html.escape(value[1])}</h{level}>")
            elif kind == "p":
                parts.append("<p>" + html.escape(value).replace("\n", "<br>") + "</p>")
            elif kind == "pre":
                parts.append(f"<pre>{html.escape(value)}</pre>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in value.header)
                rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                               for row in value.html)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                             f"</table><p class='cap'>{html.escape(value.caption)}</p>")
            elif kind == "img":
                data = base64.b64encode(value[0].read_bytes()).decode()
                parts.append(f"<figure><img alt='{html.escape(value[1])}' "
                             f"src='data:image/png;base64,{data}'><figcaption>"
                             f"{html.escape(value[1])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
                 "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
                 "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
                 ".cap,figcaption{color:#555;font-size:12px}img{max-width:100%}"
                 "pre{background:#f6f6f6;padding:0.5em}")
        return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>"
                f"{html.escape(self.title)}</title><style>{style}</style></head><body>"
                + "\n".join(parts) + "</body></html>\n")

    def write(self) -> list[Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        if "md" in self.formats:
            path = self.out / "report.md"
            path.write_text(self.markdown())
            self.written.append(path)
        if "html" in self.formats:
            path = self.out / "report.html"
            path.write_text(self.html())
            self.written.append(path)
        return self.written


def _cell(value, digits: int) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return f"{value:.{digits}g}"
    return str(value)
