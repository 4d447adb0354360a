"""Interactive views of the report (issue 11 §3): a model view (the layer × head grid) and a head view of
each head's attention on its top exemplar sentence, in the style of bertviz (Vig 2019).

Everything stays inside the one self-contained page: the data the views need is embedded as JSON in a
<script type="application/json"> element, drawn by plain JavaScript (no library, no network). The JSON
is kept small: per head only its top exemplar's pattern (the patterns table is just that), its weights as
integers in thousandths (3 decimals), each sentence's text and pieces once however many heads use it.

The JavaScript and CSS live in pipeline/report/views_static.py, a Python module, so that the report
stage's fingerprint (which hashes the source of the modules it imports) changes when they do."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
from matplotlib.colors import to_hex

from pipeline.analysis import analyses
from pipeline.analysis.roles import COLOURS as ROLE_COLOURS
from pipeline.analysis.roles import CRITERIA, ROLES
from pipeline.report.figures import _piece_labels
from pipeline.report.views_static import CSS, JS
from pipeline.results import weighting_rows


def attention_rows(df: pl.DataFrame | None) -> pl.DataFrame | None:
    """The rows weighted by attention, without the `weighting` column, where a table has one (norm weighting adds
    a copy of a table's rows weighted by ‖α·f(x)‖): the views and the comparison show attention weights."""
    return None if df is None else weighting_rows(df, "attention")


def _number(x, digits: int = 4):
    """A JSON-safe number: NaN and None become null (JSON has no NaN), floats are rounded."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return round(float(x), digits)


def metric_columns(heads: pl.DataFrame) -> list[str]:
    """The ratio columns the metrics declare, in column order, that this head table has (not the sums)."""
    return [c for m in analyses() for c in m.columns if c in heads.columns]


def _per_head(df: pl.DataFrame, H: int, n_heads: int, value) -> list:
    """A list indexed by layer · H + head of value(row), None for heads the table lacks."""
    out = [None] * n_heads
    for row in df.iter_rows(named=True):
        out[int(row["layer"]) * H + int(row["head"])] = value(row)
    return out


def _metrics(heads: pl.DataFrame, H: int, n_heads: int) -> dict:
    """Each head's metric values and, where the table has them, their bootstrap 95% intervals."""
    columns = metric_columns(heads)
    with_ci = [
        c for c in columns if f"{c}_ci_low" in heads.columns and f"{c}_ci_high" in heads.columns
    ]
    return {
        "columns": columns,
        "values": _per_head(heads, H, n_heads, lambda r: [_number(r[c]) for c in columns]),
        "ci": _per_head(
            heads,
            H,
            n_heads,
            lambda r: [
                [_number(r[f"{c}_ci_low"]), _number(r[f"{c}_ci_high"])] if c in with_ci else None
                for c in columns
            ],
        )
        if with_ci
        else None,
    }


def _roles(roles: pl.DataFrame | None, H: int, n_heads: int) -> dict | None:
    """Each head's role and every criterion it meets (pipeline/analysis/roles.py), or None without a head_roles table."""
    if roles is None or roles.is_empty() or "role" not in roles.columns:
        return None
    met = [c for c in CRITERIA if f"is_{c}" in roles.columns]
    return {
        "names": list(ROLES),
        "colours": [to_hex(ROLE_COLOURS[n]) for n in ROLES],
        "role": _per_head(roles, H, n_heads, lambda r: r["role"]),
        "criteria": _per_head(roles, H, n_heads, lambda r: [c for c in met if r[f"is_{c}"]]),
    }


def _exemplars(exemplars: pl.DataFrame, H: int, n_heads: int) -> tuple[list, dict]:
    """Per head its exemplar rows [sentence id, weight, attending char start, end, receiving start, end] by rank,
    and {sentence id: text} for every sentence they name."""
    per_head: list = [[] for _ in range(n_heads)]
    texts = {}
    columns = (
        "sentence_id",
        "weight",
        "attending_char_start",
        "attending_char_end",
        "receiving_char_start",
        "receiving_char_end",
    )
    for row in exemplars.sort("layer", "head", "rank").iter_rows(named=True):
        index = int(row["layer"]) * H + int(row["head"])
        if 0 <= index < n_heads:
            per_head[index].append([_number(row[c], 3) for c in columns])
            texts[int(row["sentence_id"])] = row["text"]
    return per_head, texts


def _pattern(rows: pl.DataFrame) -> dict:
    """One head's pattern: its sentence, n pieces, and its weights in thousandths, row-major: the lower triangle
    (i = 0..n−1, j = 0..i) of a causal model, the whole matrix (full: j = 0..n−1) of an encoder's."""
    n = int(rows["attending_position"].max()) + 1
    matrix = np.zeros((n, n))
    i, j = rows["attending_position"].to_numpy(), rows["receiving_position"].to_numpy()
    matrix[i, j] = rows["weight"].to_numpy()
    full = bool((j > i).any())
    i, j = np.indices((n, n)).reshape(2, -1) if full else np.tril_indices(n)
    return {
        "sentence": int(rows["sentence_id"][0]),
        "n": n,
        "full": full,
        "w": np.rint(matrix[i, j] * 1000).astype(int).tolist(),
    }


def _patterns(patterns: pl.DataFrame | None, H: int, n_heads: int) -> list:
    out: list = [None] * n_heads
    if patterns is None or patterns.is_empty():
        return out
    for (layer, head), rows in patterns.partition_by("layer", "head", as_dict=True).items():
        index = int(layer) * H + int(head)
        if 0 <= index < n_heads:
            out[index] = _pattern(rows)
    return out


def _tokens_by_sentence(tokens: pl.DataFrame | None, patterns: list) -> dict[int, pl.DataFrame]:
    """{sentence id: its tokens by position} for the patterns' sentences, in one pass over the tokens table."""
    ids = sorted({p["sentence"] for p in patterns if p is not None})
    if tokens is None or not ids:
        return {}
    wanted = tokens.filter(pl.col("sentence_id").is_in(ids)).sort("sentence_id", "position")
    return {int(key[0]): df for key, df in wanted.partition_by("sentence_id", as_dict=True).items()}


def _pieces(sent: pl.DataFrame | None, text: str | None, n: int) -> list[str]:
    """The piece labels of a pattern's sentence (its text at each piece's characters, as Fig. 4 labels them);
    `#i` where the tokens table lacks the sentence."""
    labels = _piece_labels(sent, text) if sent is not None and text is not None else []
    return labels[:n] + [f"#{i}" for i in range(len(labels), n)]


def views_data(tables: dict[str, pl.DataFrame]) -> dict:
    """Everything the views draw, as plain JSON-able values; heads are indexed by layer · H + head."""
    heads = attention_rows(tables["head_metrics"]).sort("layer", "head")
    L, H = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    n_heads = L * H
    exemplars, texts = _exemplars(attention_rows(tables["exemplars"]), H, n_heads)
    patterns = _patterns(attention_rows(tables.get("patterns")), H, n_heads)
    sentences = {str(sid): {"text": text} for sid, text in texts.items()}
    tokens = _tokens_by_sentence(tables.get("tokens"), patterns)
    for p in patterns:
        if p is not None:
            entry = sentences.setdefault(str(p["sentence"]), {"text": texts.get(p["sentence"])})
            if "pieces" not in entry or len(entry["pieces"]) < p["n"]:
                entry["pieces"] = _pieces(tokens.get(p["sentence"]), entry["text"], p["n"])
    null_share = (
        _per_head(heads, H, n_heads, lambda r: _number(r["null_share"], 3))
        if "null_share" in heads.columns
        else [None] * n_heads
    )
    return {
        "layers": L,
        "heads": H,
        "metrics": _metrics(heads, H, n_heads),
        "roles": _roles(attention_rows(tables.get("head_roles")), H, n_heads),
        "null_share": null_share,
        "exemplars": exemplars,
        "patterns": patterns,
        "sentences": sentences,
    }


def embedded_json(data: dict) -> str:
    """Compact JSON that is safe inside a <script> element: '<' is escaped, so no '</script>' can end it early."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace(
        "<", "\\u003c"
    )


def views_section(tables: dict[str, pl.DataFrame]) -> str:
    """The report's section 'views': its HTML skeleton, the data as JSON, and the CSS and JS that draw it."""
    return f"""<section id='views'><h2>Interactive views</h2>
<p>The <b>model view</b> shows every head, layer by layer (rows) and head by head (columns), coloured by its role
(or by its null share where the run has no roles); click a head to open it. The <b>head view</b> draws the chosen
head's attention on its top exemplar sentence, in the style of bertviz: a line from each attending piece (left)
to each piece it attends to (right), more opaque the larger the weight. Point at or click an attending piece to
see its lines alone (click it again, or elsewhere, to see them all).</p>
<div class='av-views'>
<div class='av-model'><h3>Model view</h3><div id='av-legend' class='av-legend'></div><div id='av-grid' class='av-grid'></div></div>
<div class='av-head'><h3 id='av-title'>Head view</h3>
<p class='av-controls'><label>layer <select id='av-layer'></select></label> <label>head <select id='av-head'></select></label>
<span id='av-focus' class='av-note'></span></p>
<div id='av-drawing' class='av-drawing'></div></div>
<div class='av-info'><h3>This head</h3><p id='av-role'></p><div id='av-metrics'></div>
<h4>Exemplar sentences</h4><p class='av-note'>The attending piece is <b>bold</b>, the piece receiving the attention
<u>underlined</u>.</p><ol id='av-exemplars' class='av-exemplars'></ol></div>
</div>
<script type='application/json' id='views-data'>{embedded_json(views_data(tables))}</script>
<style>{CSS}</style>
<script>{JS}</script></section>"""
