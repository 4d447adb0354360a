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
.disabled{color:#777;font-style:italic}
table.claims{width:100%;table-layout:fixed}table.claims td{vertical-align:top;overflow-wrap:anywhere}
table.claims col.verdict{width:9em}table.claims col.paper{width:11em}table.claims col.run{width:30%}
table.claims q{font-style:italic}table.claims .source,table.claims small{color:#555;font-size:.85em}
table.claims details{margin-top:.3em;font-size:.85em;color:#333}table.claims summary{cursor:pointer;color:#555}
tr.holds td.verdict{background:#e9f6ec}tr.fails td.verdict{background:#fbeaea}tr.na td{color:#777}"""


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
        cells = "".join(
            f"<td>{escape(cell(column, v, floats))}</td>" for column, v in zip(df.columns, row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def embedded_png(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )


def render_exemplar(row: dict) -> str:
    """The sentence with the attending piece bold and the receiving piece italic and underlined."""
    text = row["text"]
    spans = sorted(
        {
            (row["attending_char_start"], row["attending_char_end"], "a"),
            (row["receiving_char_start"], row["receiving_char_end"], "r"),
        }
    )
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


def _claim_run_cell(r: dict) -> str:
    """This run's value, with the bootstrap interval and whether the paper's number lies in it, or why there is none."""
    out = escape(r["run_value"])
    if r["ci_95"] is not None:
        inside = {
            True: "the paper's number lies inside",
            False: "the paper's number lies outside",
            None: "",
        }[r["paper_in_ci"]]
        note = f" ({escape(r['interval_note'])})" if r.get("interval_note") else ""
        out += f"<br><small>95% interval {escape(r['ci_95'])}{note}{'; ' + inside if inside else ''}</small>"
    elif r.get("interval_note"):
        out += f"<br><small>{escape(r['interval_note'])}</small>"
    return out


def claims_table(claims: pl.DataFrame) -> str:
    """The claims check readable at a glance: the verdict, the paper's sentence (the criterion, its tolerance and the
    claim's id in a details row under it), the paper's value, and this run's value with its interval."""
    rows = []
    for r in claims.iter_rows(named=True):
        kind = "na" if not r["applicable"] else "holds" if r["holds"] else "fails"
        verdict = VERDICT[r["holds"] if r["applicable"] else None]
        if r["applicable"] and r["direction_holds"] is not None:
            verdict += f"<br><small>direction {'✔ holds' if r['direction_holds'] else '✘ does not hold'}</small>"
        details = (
            f"<details><summary>criterion</summary><div>{escape(r['criterion'])}"
            + (f"<br>tolerance: {escape(r['tolerance'])}" if r["tolerance"] else "")
            + f"<br>claim: <code>{escape(r['claim'])}</code></div></details>"
        )
        source = f" <span class='source'>({escape(r['source'])})</span>" if r.get("source") else ""
        rows.append(
            f"<tr class='{kind}' id='claim-{escape(r['claim'])}'><td class='verdict'>{verdict}</td>"
            f"<td><q>{escape(r['statement'])}</q>{source}{details}</td><td>{escape(r['paper_value'])}</td>"
            f"<td>{_claim_run_cell(r)}</td></tr>"
        )
    return (
        "<table class='claims'><colgroup><col class='verdict'><col><col class='paper'><col class='run'></colgroup>"
        "<thead><tr><th>verdict</th><th>the paper says</th><th>paper</th><th>this run</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
