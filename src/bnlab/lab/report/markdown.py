"""The same report sections as Markdown: claims, tables and prose, for a README or an issue.

report.html is for looking at; report.md is for quoting: every number in it comes from the run
directories, so a README's results can be rebuilt from runs instead of edited by hand.
Figures are listed by title (they live in report.html and the run directories).
"""

from __future__ import annotations

from pathlib import Path

from bnlab.lab.report.html import Section, Table
from bnlab.lab.results import Claim, verdict_text
from bnlab.lab.runs import atomic_write_bytes

__all__ = ["render_markdown", "write_markdown"]


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


def render_markdown(sections: list[Section], title: str, subtitle: str = "") -> str:
    """The whole report as Markdown text."""
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
        if s.hero or s.figures:
            titles = [f.title for f in (*s.hero, *s.figures)]
            lines += ["Figures (in report.html): " + "; ".join(titles), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(
    path: str | Path, sections: list[Section], title: str, subtitle: str = ""
) -> Path:
    path = Path(path)
    atomic_write_bytes(path, render_markdown(sections, title, subtitle).encode())
    return path
