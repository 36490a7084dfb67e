"""Text from the results made inert in Markdown and HTML: the one escaping function of the
report.

Names of methods, tasks, metrics and benchmarks, failure reasons and folder names come from
run folders, which anyone may have written (results copied from elsewhere, plugins). Every
writer of report.md and report.html passes such text through ``escape`` so that it shows as
written and never becomes markup (a script, a link, a table cell border, a heading).
"""
from __future__ import annotations

import html
import re

STYLES = ("md", "html")

# Inline Markdown (emphasis, code, links, tables, strikethrough, math) and the ATX
# heading mark; "<", ">" and "&" become HTML entities, which Markdown shows as written.
# An underscore between two letters or digits never delimits emphasis (CommonMark), so
# names such as digits_tasks stay as they are.
_MD_SPECIAL = re.compile(r"[\\`*\[\]|#~$]|(?<![^\W_])_|_(?![^\W_])")
# Marks that start a block at the start of a line: a list item ("- x", "1. x"), a rule or
# an underline ("---", "==="); a signed number ("-1.5") starts none.
_MD_BLOCK_START = re.compile(r"^([-+=](?![\d.])|\d+(?=[.)](\s|$)))")


def escape(text: object, style: str) -> str:
    """``text`` as literal text in ``style`` ("md" or "html"): special characters escaped,
    line breaks as ``<br>`` (so that text never ends a table row or starts a new block)."""
    if style not in STYLES:
        raise ValueError(f"style {style!r}: expected one of {', '.join(STYLES)}")
    lines = str(text).splitlines() or [""]
    if style == "html":
        return "<br>".join(html.escape(line) for line in lines)
    return "<br>".join(_md_line(line) for line in lines)


def _md_line(line: str) -> str:
    # leading blanks dropped: four of them at the start of a paragraph make a code block
    out = _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), html.escape(line.lstrip(), quote=False))
    return _MD_BLOCK_START.sub(lambda m: _escape_block_mark(m.group(1)), out, count=1)


def _escape_block_mark(mark: str) -> str:
    # "1." stays "1." when written "1\."; "-", "+" and "=" are escaped themselves
    return mark + "\\" if mark[0].isdigit() else "\\" + mark
