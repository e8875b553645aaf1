"""One self-contained report.html from report sections: images embedded, opens offline.

Experiments describe what to show as data (:class:`Section` with figures, tables, claims);
this module only lays it out. No template engine: the page is a few dozen lines of HTML with
escaped text, and a dependency for that would be heavier than the code.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from bnlab.lab.results import Claim, verdict_text
from bnlab.lab.runs import atomic_write_bytes

__all__ = ["Figure", "Section", "Table", "file_figure", "render", "write_report"]


@dataclass
class Figure:
    title: str
    png: bytes  # PNG file contents
    caption: str = ""
    width: int | None = None  # CSS pixels; None = natural size, capped to the page


def file_figure(path: Path, title: str, caption: str = "") -> list[Figure]:
    """The PNG at ``path`` (a run directory's figure) as a report figure, or [] when the file
    is absent, so a report adds what exists: ``section.figures += file_figure(...)``."""
    return [Figure(title, path.read_bytes(), caption)] if path.exists() else []


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    folded: bool = False  # inside a <details> element: long tables that back the story


@dataclass
class Section:
    """One part of a report, laid out in this order: ``hero`` figures (what to look at first,
    side by side), the intro, one sentence per claim (the rules behind the verdicts folded
    below them), the tables, the figures."""

    title: str
    intro: str = ""  # plain text; blank lines separate paragraphs
    claims: list[Claim] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    anchor: str = ""
    hero: list[Figure] = field(default_factory=list)
    source: str = "the claim"  # whose claims: "agrees with the blog (one seed)"


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px} h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid
#ddd;padding-bottom:4px} h3{font-size:16px;margin:18px 0 6px}
.meta{color:#666;font-size:13px} nav a{margin-right:14px;font-size:14px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px;background:#fff}
th,td{border:1px solid #ddd;padding:5px 9px;text-align:left;vertical-align:top}
th{background:#f0f0f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-weight:600;white-space:nowrap;border-radius:4px;padding:1px 7px}
.holds{background:#d9f2dd;color:#145c23} .does-not-hold{background:#f8dada;color:#7a1616}
.inconclusive,.no-answer{background:#eee;color:#555}
.agrees{background:#eef8ef;color:#145c23;border:1px dashed #7fbf8a}
.disagrees{background:#fcf0f0;color:#7a1616;border:1px dashed #d99}
ul.claims{padding-left:18px} ul.claims li{margin:6px 0}
.hero figure{margin-right:8px} .hero figcaption{max-width:220px}
details{margin:8px 0 16px} summary{cursor:pointer;color:#333;font-size:14px}
figure{display:inline-block;margin:8px 16px 16px 0;vertical-align:top;background:#fff;
padding:8px;border:1px solid #e5e5e5;border-radius:6px;max-width:100%}
figure img{max-width:100%;height:auto;image-rendering:pixelated}
figcaption{font-size:13px;color:#444;max-width:520px}
.rule{color:#555;font-size:13px}
"""


def _png_tag(png: bytes, alt: str, width: int | None) -> str:
    data = base64.b64encode(png).decode()
    w = f' width="{width}"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{w}>'


def _paragraphs(text: str) -> str:
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>" for p in parts)


def _verdict(c: Claim, source: str) -> str:
    cls = c.verdict.replace(" ", "-")
    return f'<span class="verdict {cls}">{html.escape(verdict_text(c.verdict, source))}</span>'


def _claims(claims: list[Claim], source: str) -> str:
    """One sentence per claim (statement, verdict or direction, the numbers), then the table
    of what was measured and each rule, folded: the sentence is what a reader wants first."""
    items = "".join(
        f"<li><b>{html.escape(c.id)}</b> {html.escape(c.statement)} {_verdict(c, source)} "
        f"<span class=rule>{html.escape(c.quantity)}: {html.escape(c.value)}</span></li>"
        for c in claims
    )
    rows = "".join(
        f"<tr><td><b>{html.escape(c.id)}</b></td><td>{html.escape(c.quantity)}</td>"
        f"<td class=num>{html.escape(c.value)}</td><td>{_verdict(c, source)}</td>"
        f'<td class="rule">{html.escape(c.rule)}</td></tr>'
        for c in claims
    )
    head = "<tr><th>claim</th><th>measured</th><th>value</th><th>verdict</th><th>rule</th></tr>"
    return (
        f'<ul class="claims">{items}</ul><details><summary>How each verdict is decided '
        f"(measurements and rules)</summary><table>{head}{rows}</table></details>"
    )


def _figure(f: Figure) -> str:
    cap = f"<figcaption><b>{html.escape(f.title)}</b>"
    cap += f" {html.escape(f.caption)}" if f.caption else ""
    return f"<figure>{_png_tag(f.png, f.title, f.width)}{cap}</figcaption></figure>"


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)

    def cell(v: str) -> str:
        num = v.replace(".", "", 1).replace("-", "", 1).replace("%", "").strip().isdigit()
        return f"<td{' class=num' if num else ''}>{html.escape(v)}</td>"

    body = "".join("<tr>" + "".join(cell(str(v)) for v in row) + "</tr>" for row in t.rows)
    cap = f"<p class=rule>{html.escape(t.caption)}</p>" if t.caption else ""
    table = f"<table><tr>{head}</tr>{body}</table>{cap}"
    if t.folded:
        return f"<details><summary>{html.escape(t.title)}</summary>{table}</details>"
    return f"<h3>{html.escape(t.title)}</h3>{table}"


def render(sections: list[Section], title: str, subtitle: str = "") -> str:
    """The whole page as a string."""
    nav = []
    body = []
    for k, s in enumerate(sections):
        anchor = s.anchor or f"s{k}"
        nav.append(f'<a href="#{anchor}">{html.escape(s.title)}</a>')
        parts = [f'<h2 id="{anchor}">{html.escape(s.title)}</h2>']
        if s.hero:
            parts.append(f'<div class="hero">{"".join(_figure(f) for f in s.hero)}</div>')
        parts.append(_paragraphs(s.intro))
        if s.claims:
            parts.append(_claims(s.claims, s.source))
        parts += [_table(t) for t in s.tables]
        parts += [_figure(f) for f in s.figures]
        body.append(f'<section class="section">{"".join(parts)}</section>')
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><div class=meta>{html.escape(subtitle)} "
        f"(generated {stamp} by bnlab)</div><nav>{''.join(nav)}</nav>{''.join(body)}"
        "</main></body></html>\n"
    )


def write_report(path: str | Path, sections: list[Section], title: str, subtitle: str = "") -> Path:
    path = Path(path)
    atomic_write_bytes(path, render(sections, title, subtitle).encode())
    return path
