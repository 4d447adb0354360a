"""report stage: the run's tables → reports/<run_name>/ (figures as PNG and SVG, index.html) and
claims.parquet (the paper's section 5.3 statements checked against this run; pipeline/claims.py).

Needs only the Parquet tables and run.json: figures can be redrawn without the model."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import polars as pl
import yaml

from pipeline import claims as claims_mod
from pipeline import figures, io
from pipeline.errors import PipelineError
from pipeline.results import info as run_info
from pipeline.results import load, resolve_run_dir

NAME = "report"
OUTPUTS = ("index.html",)


def fingerprint(cfg) -> dict:
    return {"report": cfg.report.model_dump(mode="json")}


FIGURES = [  # (file stem, title, caption)
    ("fig05_null_attention", "Null attention (Fig. 5)",
     "Share of each head's attention that goes to position 0 (the first piece; the BOS token when one is prepended): "
     "Σα_i0 / Σ_j α_ij over attending pieces i ≥ 1 of every sentence."),
    ("fig06_pos_to", "Attention to each part of speech (Figs. 6, A.1)",
     "Eq. 3: the share of each head's non-null attention (j ≥ 1) received by pieces of the tag. Each heatmap has its own "
     "colour scale; the title gives the tag's mean over heads. A word split into pieces gives its tag to every piece."),
    ("fig07_pos_from", "Attention from each part of speech (Figs. 7, A.2)",
     "The 'from' twin of Eq. 3: the share of each head's non-null attention sent by pieces of the tag."),
    ("fig08_dependency_alignment", "Dependency alignment by layer (Fig. 8)",
     "Eq. 4 per layer, from the layer's summed numerators and denominators, for the three formulations; the dashed "
     "line is the share of piece pairs (i ≥ 1, 1 ≤ j ≤ i) whose words are in a dependency relation."),
    ("fig09_dependency_labels", "Attention to dependency labels by layer (Fig. 9)",
     "Share of each layer's non-null attention received by pieces of each dependency label, scaled per label to its "
     "maximum over layers so that the depth profile of rare and frequent labels is equally visible."),
    ("fig10_variability", "Attention variability (Fig. 10)",
     "Eq. 5 over the first N positions of each sentence (footnote 3): mean absolute deviation of α_ij from its corpus "
     "mean ᾱ_ij, scaled to [0, 1]. Low: position-based heads; high: content-dependent heads."),
    ("fig11_mean_distance", "Mean attention distance (Fig. 11)",
     "Eq. 6: attention-weighted mean of i − j over non-null attention, by layer and head (left) and by layer (right)."),
    ("fig12_entropy", "Attention entropy (Fig. 12)",
     "Eq. 7, footnote 4: entropy of each piece's attention renormalised without position 0, skipping pieces that put "
     "more than 90% on position 0; mean over pieces."),
    ("fig04_head_cards", "Head cards (Fig. 4)",
     "The most position-focused head (lowest variability), the most diffuse (highest entropy) and the one with the "
     "largest mean distance, each with its attention from one piece of its top exemplar sentence."),
]


def draw_all(tables: dict[str, pl.DataFrame], out: Path, formats) -> dict[str, dict]:
    heads, layers = tables["head_metrics"], tables["layer_metrics"]
    drawn = {
        "fig05_null_attention": figures.head_heatmap(heads, "null_share", "Attention to the first token", "null share", 0, 1),
        "fig06_pos_to": figures.tag_small_multiples(tables["pos_share"], "to"),
        "fig07_pos_from": figures.tag_small_multiples(tables["pos_share"], "from"),
        "fig08_dependency_alignment": figures.dependency_alignment(layers),
        "fig09_dependency_labels": figures.dependency_labels(tables["dep_share_by_layer"]),
        "fig10_variability": figures.head_heatmap(heads, "variability", "Attention variability", "variability"),
        "fig11_mean_distance": figures.distance_by_layer_and_head(heads, layers),
        "fig12_entropy": figures.head_heatmap(heads, "mean_entropy", "Mean attention entropy", "entropy (nats)"),
        "fig04_head_cards": figures.head_cards(head_card_specs(tables), tables["tokens"]),
    }
    return {name: figures.save(fig, out / "figures", name, formats) for name, fig in drawn.items()}


def extreme_head(heads: pl.DataFrame, metric: str, highest: bool) -> dict | None:
    """The head with the highest (or lowest) value of `metric`; None when it is undefined for every head
    (variability with attend.variability_positions = 0)."""
    defined = heads.drop_nans(metric).drop_nulls(metric)
    return defined.sort(metric, descending=highest).row(0, named=True) if defined.height else None


def head_card_specs(tables) -> list[dict]:
    heads, ex = tables["head_metrics"], tables["exemplars"]
    picks = [("most position-focused (lowest variability)", "variability", False),
             ("most diffuse (highest entropy)", "mean_entropy", True),
             ("largest mean distance", "mean_distance", True)]
    cards = []
    for why, metric, highest in picks:
        row = extreme_head(heads, metric, highest)
        if row is None:
            continue
        top = ex.filter((pl.col("layer") == row["layer"]) & (pl.col("head") == row["head"])).sort("rank")
        if top.height:
            cards.append({**row, "why": why, "exemplar": top.row(0, named=True)})
    return cards


def default_exemplar_heads(heads: pl.DataFrame) -> list[tuple[int, int]]:
    out = []
    for metric, highest in (("variability", True), ("variability", False), ("mean_distance", True)):
        row = extreme_head(heads, metric, highest)
        key = None if row is None else (int(row["layer"]), int(row["head"]))
        if key is not None and key not in out:
            out.append(key)
    return out


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


VERDICT = {True: "✔ holds", False: "✘ does not hold", None: "not applicable"}


def _cell(column: str, v, floats: int) -> str:
    if column == "holds":
        return VERDICT[v]
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{floats}g}" if abs(v) < 1e-3 and v else f"{v:.{floats}f}"
    return str(v)


def _table(df: pl.DataFrame, floats: int = 3) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = []
    for row in df.iter_rows():
        cells = []
        for column, v in zip(df.columns, row):
            cells.append(f"<td>{html.escape(_cell(column, v, floats))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
th{background:#f3f3f3}figure{margin:2em 0}figure img{max-width:100%}figcaption{color:#444;font-size:.9em;max-width:60em}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:1em}nav a{margin-right:1em}code,pre{background:#f6f6f6}"""


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def build_index(tables, state: dict, drawn: dict, claims: pl.DataFrame, exemplar_heads) -> str:
    model = state.get("model", {})
    stages = state.get("stages", {})
    parts = [f"<h1>Attention statistics: {html.escape(state.get('run_name', ''))}</h1>",
             "<nav>" + "".join(f"<a href='#{s}'>{s}</a>" for s in ("run", "findings", "claims", "corpus", "figures", "exemplars")) + "</nav>",
             "<h2 id='run'>Run</h2>"]
    counts = stages.get("attend", {}).get("counts", {})
    overview = pl.DataFrame({
        "item": ["model", "model type", "layers × heads", "parameters", "weights sha256", "device", "sentences", "pieces",
                 "git commit"],
        "value": [str(model.get("name")), str(model.get("model_type")), f"{model.get('num_layers')} × {model.get('num_heads')}",
                  f"{model.get('num_parameters', 0):,}", str(model.get("weights_sha256", ""))[:16],
                  str(counts.get("device")), str(stages.get("annotate", {}).get("counts", {}).get("sentences")),
                  str(stages.get("annotate", {}).get("counts", {}).get("pieces")), str(state.get("git", {}).get("commit"))]})
    parts.append(_table(overview))
    timing = pl.DataFrame({"stage": list(stages), "seconds": [s.get("seconds") for s in stages.values()],
                           "status": [s.get("status") for s in stages.values()],
                           "config hash": [s.get("config_hash") for s in stages.values()]},
                          schema={"stage": pl.String, "seconds": pl.Float64, "status": pl.String, "config hash": pl.String})
    parts.append("<h3>Stage timings</h3>" + _table(timing, 1))
    parts.append("<details><summary>Resolved config and package versions</summary><pre>"
                 + html.escape(yaml.safe_dump({"config": state.get("config"), "versions": state.get("versions")}, sort_keys=False))
                 + "</pre></details>")
    parts.append("<h2 id='findings'>Findings</h2>" + _table(tables["findings"]))
    parts.append("<h2 id='claims'>The paper's claims, checked on this run</h2><p>Criteria are spelled out per claim; "
                 "claims about named GPT-2 heads apply only to GPT-2 small.</p>" + _table(claims))
    stats = tables.get("corpus_stats")
    if stats is not None:
        parts.append("<h2 id='corpus'>Corpus statistics</h2>" + _table(stats.filter(pl.col("paper_value").is_not_null())))
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, title, caption in FIGURES:
        files = drawn.get(name, {})
        links = " · ".join(f"<a href='figures/{name}.{fmt}'>{fmt.upper()}</a>" for fmt in files)
        img = f"<img src='{_img(files['png'])}' alt='{html.escape(title)}'>" if "png" in files else ""
        parts.append(f"<figure id='{name}'><h3>{html.escape(title)}</h3>{img}<figcaption>{html.escape(caption)} {links}</figcaption></figure>")
    parts.append("<h2 id='exemplars'>Exemplar sentences (Tables 1–3)</h2><p>Sentences ranked by the head's largest "
                 "token-to-token weight (excluding position 0); the attending piece is <b>bold</b>, the piece receiving "
                 "the attention <i><u>italic and underlined</u></i>.</p>")
    ex, heads = tables["exemplars"], tables["head_metrics"]
    for layer, head in exemplar_heads:
        metrics = heads.filter((pl.col("layer") == layer) & (pl.col("head") == head))
        if metrics.is_empty():
            parts.append(f"<p>Layer {layer}, head {head}: no such head in this model.</p>")
            continue
        m = metrics.row(0, named=True)
        rows = ex.filter((pl.col("layer") == layer) & (pl.col("head") == head)).sort("rank")
        items = "".join(f"<tr><td>{r['rank'] + 1}</td><td>{r['weight']:.3f}</td><td>{render_exemplar(r)}</td></tr>"
                        for r in rows.iter_rows(named=True))
        parts.append(f"<h3>Layer {layer}, head {head}</h3><p>variability {m['variability']:.3f}, mean distance "
                     f"{m['mean_distance']:.2f}, entropy {m['mean_entropy']:.2f}, dependency alignment {m['dep_align_either']:.3f}</p>"
                     f"<table class='exemplars'><thead><tr><th>#</th><th>max weight</th><th>sentence</th></tr></thead>"
                     f"<tbody>{items}</tbody></table>")
    return page(f"Attention statistics: {state.get('run_name', '')}", "".join(parts))


def build_report(run_dir: Path, out: Path, report_cfg) -> dict:
    tables = load(run_dir)
    missing = [t for t in ("head_metrics", "layer_metrics", "pos_share", "dep_share_by_layer", "exemplars", "findings", "tokens")
               if t not in tables]
    if missing:
        raise PipelineError(f"{run_dir} lacks {missing}: run the aggregate stage first")
    state = run_info(run_dir)
    claims = claims_mod.evaluate(tables, state.get("model", {}))
    io.write_parquet(claims, run_dir / "claims.parquet")
    drawn = draw_all(tables, out, report_cfg.formats)
    exemplar_heads = [tuple(h) for h in report_cfg.exemplar_heads] if report_cfg.exemplar_heads else default_exemplar_heads(tables["head_metrics"])
    io.write_text(build_index(tables, state, drawn, claims, exemplar_heads), out / "index.html")
    held = claims.filter(pl.col("applicable"))
    return {"figures": len(drawn), "claims_applicable": held.height, "claims_holding": int(held["holds"].sum()),
            "index": str(out / "index.html")}


def run(ctx) -> dict:
    return build_report(ctx.run_dir, ctx.report_dir, ctx.cfg.report)


def summary(c: dict) -> str:
    return f"{c['figures']} figures; {c['claims_holding']} of {c['claims_applicable']} applicable claims hold; open {c['index']}"


def compare_runs(run_a: str, run_b: str, out: str | None = None, data_dir: str = "data", reports_dir: str = "reports") -> str:
    """One page with two runs side by side: findings, claims, and every figure."""
    dirs = [resolve_run_dir(r, data_dir) for r in (run_a, run_b)]
    names = [d.name for d in dirs]
    figs = [Path(reports_dir) / n / "figures" for n in names]
    for n, f in zip(names, figs):
        if not f.is_dir():
            raise PipelineError(f"no figures for run {n!r} in {f}: run its report stage first")
    tables = [load(d) for d in dirs]
    parts = [f"<h1>{html.escape(names[0])} vs {html.escape(names[1])}</h1>"]
    columns = [names[0], names[1] if names[1] != names[0] else names[1] + " (B)"]

    def side_by_side(table: str, key: str, value: str) -> pl.DataFrame:
        a, b = (t[table].select(key, pl.col(value).alias(c)) for t, c in zip(tables, columns))
        return a.join(b, on=key, how="full", coalesce=True, maintain_order="left")

    parts.append("<h2>Findings</h2>" + _table(side_by_side("findings", "statistic", "value")))
    if all("claims" in t for t in tables):
        parts.append("<h2>Claims (holds)</h2>" + _table(side_by_side("claims", "claim", "holds")))
    for name, title, caption in FIGURES:
        cells = []
        for run_name, f in zip(names, figs):
            png = f / f"{name}.png"
            cells.append(f"<div><h4>{html.escape(run_name)}</h4>" + (f"<img src='{_img(str(png))}' alt='{html.escape(title)}'>" if png.is_file() else "missing") + "</div>")
        parts.append(f"<figure><h3>{html.escape(title)}</h3><div class='grid'>{''.join(cells)}</div><figcaption>{html.escape(caption)}</figcaption></figure>")
    target = Path(out) if out else Path(reports_dir) / f"compare-{names[0]}-vs-{names[1]}.html"
    io.write_text(page(f"{names[0]} vs {names[1]}", "".join(parts)), target)
    return str(target)
