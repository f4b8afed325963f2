"""HTML building blocks for self-contained pages: one file, inline stylesheet, images as data URIs.

No script, no external stylesheet, font or image: a report opens the same from a laptop's disk, an
e-mail attachment or an offline machine, and still reads correctly years later.
"""

from __future__ import annotations

import math
from html import escape

from matplotlib.figure import Figure

from vslm.report.figures import png_base64

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 980px; margin: 2em auto; padding: 0 1.2em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.08em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
nav { font-size: 0.92em; margin: 1em 0; }
nav a { margin-right: 1em; color: #0a58ca; text-decoration: none; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 0.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; display: block;
        overflow-x: auto; max-width: 100%; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f6f6; }
pre { background: #f6f8fa; padding: 0.8em 1em; overflow-x: auto; font-size: 0.85em; line-height: 1.35;
      border-radius: 4px; }
details summary { cursor: pointer; color: #0a58ca; }
"""


def number(value: float | int | None, digits: int = 4) -> str:
    """A table cell: integers with thousands separators, floats to `digits` places, missing as a dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "&ndash;"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def figure(fig: Figure, alt: str, caption: str) -> str:
    """A figure embedded as a base64 PNG with the caption saying what to look for."""
    return (f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A table; headers are escaped here, cells are HTML already (see `number`) and escaped by the caller."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def section(key: str, title: str, *parts: str, level: int = 2) -> tuple[str, str, str]:
    """(id, title, html) of one section; `page` lays them out and lists them in the navigation bar (a section
    of level 3 goes inside another's parts, its heading one size smaller)."""
    return key, title, (f'<section id="{escape(key)}"><h{level}>{escape(title)}</h{level}>{"".join(parts)}'
                        "</section>")


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f'<a href="#{escape(key)}">{escape(name)}</a>' for key, name, _ in sections)
    body = "".join(content for _, _, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f'<body><h1>{escape(title)}</h1><p class="sub">{escape(subtitle)}</p><nav>{nav}</nav>\n{body}\n'
            f"</body></html>\n")
