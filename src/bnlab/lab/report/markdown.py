"""The same report sections as Markdown: claims, tables and prose, for a README or an issue.

report.html is for looking at; report.md is for quoting: every number in it comes from the run
directories, so a README's results can be rebuilt from runs instead of edited by hand.
Its figures are written as PNG files beside it (``report_files/NN-title.png``) and linked, so
a README takes a figure from a run by path, not by a screenshot.
"""

from __future__ import annotations

import re
from pathlib import Path

from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Claim, verdict_text
from bnlab.lab.runs import atomic_write_bytes

__all__ = ["figure_files", "render_markdown", "write_markdown"]


def _cell(v: object) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    out.append("|" + "---|" * len(header))
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _claims(claims: list[Claim], source: str) -> list[str]:
    rows = [
        [c.id, c.statement, c.quantity, c.value, f"**{verdict_text(c.verdict, source)}**", c.rule]
        for c in claims
    ]
    return _rows(["claim", "statement", "measured", "value", "verdict", "rule"], rows)


def _table(t: Table) -> list[str]:
    out = [f"**{t.title}**", "", *_rows(t.header, [[str(v) for v in r] for r in t.rows])]
    return out + (["", t.caption] if t.caption else [])


def figure_files(sections: list[Section]) -> list[tuple[Figure, str]]:
    """Each figure of the report with its file name: ``NN-title.png``, numbered in order."""
    figures = [f for s in sections for f in (*s.hero, *s.figures)]
    names = []
    for i, f in enumerate(figures, 1):
        slug = re.sub(r"[^a-z0-9]+", "-", f.title.lower()).strip("-")[:60] or "figure"
        names.append((f, f"{i:02d}-{slug}.png"))
    return names


def render_markdown(
    sections: list[Section], title: str, subtitle: str = "", figures_dir: str = ""
) -> str:
    """The whole report as Markdown text; with ``figures_dir`` (relative to the text) its
    figures are linked as ``figures_dir/NN-title.png`` (see :func:`figure_files`), else listed
    by title."""
    files = {id(f): name for f, name in figure_files(sections)}
    lines = [f"# {title}", ""] + ([subtitle, ""] if subtitle else [])
    for s in sections:
        lines += [f"## {s.title}", ""]
        paragraphs = [" ".join(p.split()) for p in s.intro.split("\n\n") if p.strip()]
        for p in paragraphs:
            lines += [p, ""]
        if s.claims:
            lines += [*_claims(s.claims, s.source), ""]
        for t in s.tables:
            lines += [*_table(t), ""]
        for f in (*s.hero, *s.figures) if figures_dir else ():
            lines += [f"![{_cell(f.title)}]({figures_dir}/{files[id(f)]})", ""]
            lines += [" ".join(f.caption.split()), ""] if f.caption.strip() else []
        if (s.hero or s.figures) and not figures_dir:
            titles = [f.title for f in (*s.hero, *s.figures)]
            lines += ["Figures (in report.html): " + "; ".join(titles), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(
    path: str | Path, sections: list[Section], title: str, subtitle: str = ""
) -> Path:
    """report.md at ``path``, its figures in ``<stem>_files/`` beside it (written first: the
    text never links a file that is not there)."""
    path = Path(path)
    folder = f"{path.stem}_files"
    for f, name in figure_files(sections):
        atomic_write_bytes(path.parent / folder / name, f.png)
    atomic_write_bytes(path, render_markdown(sections, title, subtitle, folder).encode())
    return path
