"""A small document model rendered to Markdown and to one self-contained HTML page (figures
embedded as base64 PNG); every table is also written as CSV and LaTeX beside it.

Headings, paragraphs, captions, table headers and the cells of plain tables are text, not
markup: they are escaped when rendered (``analysis.markup.escape``), whatever run folder
they come from. Only a styled table carries its own Markdown and HTML cells, which its
maker builds with the same function."""
from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.markup import escape
from analysis.table import _tex, _tex_header, to_latex, to_markdown


@dataclass
class Table:
    """``md`` and ``html``: the cells as markup (a styled table's), or None for a plain
    table, whose ``text`` cells are escaped when rendered."""
    name: str
    header: list[str]
    text: list[list[str]]
    caption: str
    md: list[list[str]] | None = None
    html: list[list[str]] | None = None

    def cells(self, style: str) -> list[list[str]]:
        marked = self.md if style == "md" else self.html
        if marked is not None:
            return marked
        return [[escape(c, style) for c in row] for row in self.text]


@dataclass(frozen=True)
class Strong:
    """Part of a paragraph shown in bold."""
    text: str


@dataclass
class Document:
    """Blocks in order: ("h", (level, text)), ("p", parts), ("table", Table), ("img", (png,
    caption)). ``out`` is where tables/ and figures/ live."""
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

    def para(self, *parts: str | Strong) -> None:
        """A paragraph of text and bold parts (line breaks in the text are kept)."""
        self.blocks.append(("p", parts))

    def figure(self, png: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(png), caption)))

    def styled_table(self, name: str, md: tuple[list[str], list[list[str]]],
                     html_: tuple[list[str], list[list[str]]],
                     tex: tuple[list[str], list[list[str]]], frame: pd.DataFrame,
                     caption: str) -> None:
        """A table with its own Markdown/HTML/LaTeX cells (marks for best and second; text
        from the runs escaped with ``analysis.markup.escape``) and the numeric ``frame`` for
        the CSV. The header is text."""
        self._files(name, frame, to_latex(*tex, caption))
        self.blocks.append(("table", Table(name, md[0], [], caption, md[1], html_[1])))

    def frame_table(self, name: str, frame: pd.DataFrame, caption: str, index: bool = False,
                    digits: int = 4, headers: dict[str, str] | None = None,
                    formats: dict[str, str] | None = None) -> None:
        """A plain DataFrame as a table (numbers with ``digits`` significant digits, or the
        format spec of ``formats[column]``, e.g. ".1f", so that a column has one number
        format). ``headers`` renames columns in the shown table (words and units); the CSV
        keeps the frame's column names."""
        df = frame.reset_index() if index else frame
        headers, formats = headers or {}, formats or {}
        header = [headers.get(str(c), str(c)) for c in df.columns]
        body = [[_cell(v, digits, formats.get(str(c))) for c, v in zip(df.columns, row)]
                for row in df.itertuples(index=False)]
        keys = _key_columns(df)
        # a naming column with one value in every row (the benchmark) is said in the LaTeX
        # caption instead of taking a column of every part of a split table
        same = [j for j in range(keys) if len(df) > 1 and keys > 1 and df.iloc[:, j].nunique() == 1]
        kept = [j for j in range(len(header)) if j not in same]
        tex_caption = caption + "".join(f"; {header[j]}: {body[0][j]} in every row" for j in same)
        tex = ([_tex_header(header[j]) for j in kept],
               [[_tex(row[j]) for j in kept] for row in body])
        self._files(name, df, to_latex(*tex, tex_caption, keys=keys - len(same)))
        self.blocks.append(("table", Table(name, header, body, caption)))

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
    @staticmethod
    def _para(parts: tuple, style: str) -> str:
        bold = ("**", "**") if style == "md" else ("<b>", "</b>")
        return "".join(bold[0] + escape(p.text, style) + bold[1] if isinstance(p, Strong)
                       else escape(p, style) for p in parts)

    def markdown(self) -> str:
        parts = [f"# {escape(self.title, 'md')}"]
        for kind, value in self.blocks:
            if kind == "h":
                parts.append("#" * (value[0] + 1) + " " + escape(value[1], "md"))
            elif kind == "p":
                parts.append(self._para(value, "md"))
            elif kind == "table":
                parts.append(to_markdown([escape(h, "md") for h in value.header],
                                         value.cells("md"))
                             + f"\n\n*{escape(value.caption, 'md')}*")
            elif kind == "img":
                rel = os.path.relpath(value[0], self.out)
                caption = escape(value[1], "md")
                parts.append(f"![{caption}]({rel})\n\n*{caption}* (PDF: "
                             f"{os.path.relpath(value[0].with_suffix('.pdf'), self.out)})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = [f"<h1>{escape(self.title, 'html')}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                level = min(value[0] + 1, 6)
                parts.append(f"<h{level}>{escape(value[1], 'html')}</h{level}>")
            elif kind == "p":
                parts.append("<p>" + self._para(value, "html") + "</p>")
            elif kind == "table":
                head = "".join(f"<th>{escape(h, 'html')}</th>" for h in value.header)
                rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                               for row in value.cells("html"))
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>"
                             f"</table><p class='cap'>{escape(value.caption, 'html')}</p>")
            elif kind == "img":
                data = base64.b64encode(value[0].read_bytes()).decode()
                caption = escape(value[1], "html")
                parts.append(f"<figure><img alt='{caption}' "
                             f"src='data:image/png;base64,{data}'><figcaption>"
                             f"{caption}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
                 "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
                 "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
                 ".cap,figcaption{color:#555;font-size:12px}img{max-width:100%}")
        return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>"
                f"{escape(self.title, 'html')}</title><style>{style}</style></head><body>"
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


def _key_columns(frame: pd.DataFrame) -> int:
    """The leading text columns (at most 4) that name a row: repeated in every part of a
    LaTeX table split by columns."""
    keys = 0
    for column in frame.columns[:4]:
        if pd.api.types.is_numeric_dtype(frame[column]) or pd.api.types.is_bool_dtype(frame[column]):
            break
        keys += 1
    return max(keys, 1)


def _cell(value, digits: int, fmt: str | None = None) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return format(value, fmt) if fmt else f"{value:.{digits}g}"
    if fmt and isinstance(value, (int, np.integer)):
        return format(value, fmt)
    return str(value)
