"""The HTML page: sections, tables and figures as fragments, and the self-contained file.

A report is a list of `Section`s, each with a stable element id, a title, an intro line and its
HTML fragments. A section that does not apply says why in one note instead of disappearing.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from agesearch.search.files import write_text


@dataclass
class Section:
    """One part of the page: `<section id=...>` with a heading, an intro and its fragments."""

    id: str  # element id, stable for links, tests and scripts
    title: str  # the heading (its part before " of " names the nav link)
    intro: str = ""  # one line under the heading
    body: list[str] = field(default_factory=list)  # HTML fragments, in order

    def note(self, text: str) -> None:
        """Say in one line why something is missing (a plot Optuna cannot draw yet, no model)."""
        self.body.append(f'<p class="note">{html.escape(text)}</p>')


def fig_html(fig, div_id: str, height: int | None = None) -> str:
    """A plotly figure as a div; plotly.js itself is embedded once in the page's head."""
    fig.update_layout(template="plotly_white", margin=dict(l=60, r=30, t=50, b=50))
    if height:
        fig.update_layout(height=height)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True})


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return str(v)


def table_html(df: pd.DataFrame, *, index: bool = True, highlight: int | None = None) -> str:
    """A pandas table with the page's style; `highlight` marks one body row (0-based)."""
    text = df.to_html(index=index, na_rep="–", float_format=lambda v: f"{v:.4g}", classes="tbl", border=0, escape=True)
    if highlight is not None:
        # pandas' Styler needs jinja2, which is not a dependency: mark the row with a class.
        head, _, body = text.partition("<tbody>")
        rows = body.split("<tr>")
        if 0 <= highlight < len(rows) - 1:
            rows[highlight + 1] = '<tr class="best">' + rows[highlight + 1]
            body = "".join(r if i == 0 or r.startswith("<tr class") else "<tr>" + r for i, r in enumerate(rows))
        text = head + "<tbody>" + body
    return f'<div class="tblwrap">{text}</div>'


def kv_html(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def cards_html(cards: list[tuple[str, str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div><div class="s">{html.escape(s)}</div></div>'
        for k, v, s in cards
    ) + "</div>"


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f2937;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px} header p{margin:4px 0 0;color:#cbd5e1;font-size:13px}
nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid #e5e7eb;padding:8px 32px;font-size:13px}
nav a{margin-right:14px;color:#2563eb;text-decoration:none} nav a:hover{text-decoration:underline}
main{max-width:1280px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;margin:18px 0;padding:14px 20px}
section h2{font-size:18px;margin:4px 0 6px} section h3{font-size:15px;margin:16px 0 6px}
p.intro{color:#555;font-size:13px;margin:0 0 8px} p.note{color:#92400e;background:#fffbeb;border-left:3px solid #f59e0b;padding:6px 10px;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:6px 0 14px}
.card{flex:1 1 180px;background:#f8fafc;border:1px solid #e2e8f0;border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.04em} .card .v{font-size:22px;font-weight:600;margin:2px 0}
.card .s{font-size:12px;color:#64748b}
table.kv{border-collapse:collapse;font-size:13px} table.kv th{text-align:left;color:#475569;padding:3px 14px 3px 0;vertical-align:top;white-space:nowrap}
table.kv td{padding:3px 0}
.tblwrap{overflow-x:auto;margin:4px 0 10px} table.tbl{border-collapse:collapse;font-size:12.5px}
table.tbl th,table.tbl td{padding:4px 10px;border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}
table.tbl th{background:#f1f5f9;color:#334155} table.tbl tbody th{text-align:left;background:#fafbfc}
table.tbl td:first-child,table.tbl th:first-child{text-align:left}
table.tbl tr.best td,table.tbl tr.best th{background:#ecfdf5;font-weight:600}
.ablations{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:6px 24px}
.faces{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:10px;margin:10px 0}
.face{margin:0;text-align:center;font-size:12px} .face img{width:96px;height:96px;image-rendering:pixelated;border-radius:4px;border:1px solid #ddd}
.face .ok{color:#15803d;font-weight:600} .face .bad{color:#b91c1c;font-weight:600} .face .true{color:#555}
code{background:#f1f5f9;padding:1px 4px;border-radius:3px;font-size:12px}
"""


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page: plotly.js inline once (the file opens offline), a nav, the sections."""
    from plotly.offline import get_plotlyjs

    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title.split(" of ")[0])}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>'
        + (f'<p class="intro">{html.escape(s.intro)}</p>' if s.intro else "")
        + "".join(s.body)
        + "</section>"
        for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        f"</head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def subtitle(n_trials: int, meta: dict) -> str:
    return (
        f"{n_trials} trials · space {meta.get('space', '?')} · {meta.get('images', '?')} images at "
        f"{meta.get('image_size', '?')} px · generated {time.strftime('%Y-%m-%d %H:%M')}"
    )


def write_page(page: str, out: Path) -> Path:
    """Write the page atomically, so a browser reloading it never sees half a file."""
    return write_text(out, page)
