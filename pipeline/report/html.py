"""The HTML kit: one self-contained page (inline CSS, figures embedded as data URIs, no network),
tables with readable cells, and exemplar sentences with the attending and receiving pieces marked."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import polars as pl

VERDICT = {True: "✔ holds", False: "✘ does not hold", None: "not applicable"}

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}figure{margin:2em 0}figure img{max-width:100%}figcaption{color:#444;font-size:.9em;max-width:60em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}nav a{margin-right:1em}code,pre{background:#f6f6f6}
.disabled{color:#777;font-style:italic}"""


def escape(text) -> str:
    return html.escape(str(text))


def cell(column: str, v, floats: int) -> str:
    if column == "holds":
        return VERDICT[v]
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{floats}g}" if abs(v) < 1e-3 and v else f"{v:.{floats}f}"
    return str(v)


def table(df: pl.DataFrame, floats: int = 3) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = "".join(f"<td>{escape(cell(column, v, floats))}</td>" for column, v in zip(df.columns, row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def embedded_png(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def render_exemplar(row: dict) -> str:
    """The sentence with the attending piece bold and the receiving piece italic and underlined."""
    text = row["text"]
    spans = sorted({(row["attending_char_start"], row["attending_char_end"], "a"),
                    (row["receiving_char_start"], row["receiving_char_end"], "r")})
    if spans[0][:2] == spans[-1][:2] and len(spans) == 2:  # attends to itself
        spans = [(spans[0][0], spans[0][1], "ar")]
    out, cursor = [], 0
    for start, end, role in spans:
        start = max(start, cursor)
        out.append(html.escape(text[cursor:start]))
        piece = html.escape(text[start:end])
        if "r" in role:
            piece = f"<i><u>{piece}</u></i>"
        if "a" in role:
            piece = f"<b>{piece}</b>"
        out.append(piece)
        cursor = max(cursor, end)
    out.append(html.escape(text[cursor:]))
    return "".join(out)
