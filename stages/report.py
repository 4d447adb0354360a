"""report stage: the run's tables → reports/<run_name>/ (figures as PNG and SVG, index.html) and
claims.parquet (the paper's section 5.3 statements checked against this run).

Needs only the Parquet tables and run.json: figures can be redrawn without the model. Which figures and sections
exist, and in which order, pipeline/report/figure_specs.py declares; the claims, the metrics' analysis parts
(pipeline/analysis/); the tables it reads, the aggregate stage's outputs. The paper's figures and every claim
read the attention weighting's rows; the norm-weighted rows go to one figure that sets the two side by side
(figure_specs.NORM_FIGURE), as tables named "norm.<table>"."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from pipeline.analysis import analyses
from pipeline.errors import PipelineError
from pipeline.metrics import NORM_WEIGHTING, weightings
from pipeline.report import claims as claims_check
from pipeline.report import figures
from pipeline.report.compare import position_zero
from pipeline.report.figure_specs import FIGURES, NORM_FIGURE, SECTIONS
from pipeline.report.html import (
    claims_table,
    embedded_png,
    escape,
    page,
    render_exemplar,
    table,
)
from pipeline.report.views import views_section
from pipeline.results import info as run_info
from pipeline.results import load, of_weighting
from pipeline.run import io
from pipeline.run.parts import scan
from pipeline.run.stage import Output, check_schema

NAME = "report"
VERSION = 1
# The aggregate stage's tables (its own and every metric's) and the patterns table; corpus_stats is optional.
NEEDED_TABLES = (
    "head_metrics",
    "layer_metrics",
    "findings",
    *(name for m in analyses() for name in m.table_schemas),
    "patterns",
)
INPUTS = (
    *(f"{name}.parquet" for name in NEEDED_TABLES),
    "corpus_stats.parquet",
    "tokens",
    "attend/meta.json",
)
OUTPUTS = (
    Output("index.html", root="report"),
    Output("figures", root="report"),
    Output("claims.parquet", claims_check.SCHEMA),
)
CONFIG = ("report",)


def default_exemplar_heads(heads: pl.DataFrame) -> list[tuple[int, int]]:
    """Highest and lowest variability, largest mean distance (heads whose metric is undefined are skipped)."""
    out = []
    for metric, highest in (("variability", True), ("variability", False), ("mean_distance", True)):
        row = figures.extreme_head(heads, metric, highest)
        key = None if row is None else (int(row["layer"]), int(row["head"]))
        if key is not None and key not in out:
            out.append(key)
    return out


def render(spec, tables: dict):
    """A metric's FigureSpec drawn: a function of the figure kit by name, or the spec's own callable."""
    if callable(spec.draw):
        return spec.draw(tables)
    draw = getattr(figures, spec.draw, None)
    if draw is None:
        raise PipelineError(
            f"figure {spec.stem}: pipeline/report/figures.py has no function {spec.draw!r}"
        )
    return draw(*(tables[name] for name in spec.inputs), **spec.options)


def split_weightings(tables: dict[str, pl.DataFrame], status: dict) -> dict[str, pl.DataFrame]:
    """The run's tables as the report reads them: the attention weighting's rows under each table's name (the
    paper's analysis, and every claim), and, when the run computed it, the norm weighting's as "norm.<name>"."""
    out = of_weighting(tables, "attention")
    if "norm" in weightings(status):
        out.update(
            {
                f"norm.{name}": df
                for name, df in of_weighting(tables, "norm").items()
                if "weighting" in tables[name].columns
            }
        )
    return out


def figure_state(spec, status: dict) -> str:
    """ "enabled", or why the figure is not drawn: its metric, or the norm weighting, was not computed."""
    if spec is NORM_FIGURE:
        state = status.get(
            NORM_WEIGHTING, "disabled: the attend stage of this run did not record it"
        )
        return state if state == "enabled" else f"norm weighting was not computed ({state})"
    state = status.get(spec.metric, "enabled")
    return state if state == "enabled" else f"{spec.metric} was not computed ({state})"


def draw_all(
    tables: dict[str, pl.DataFrame], out: Path, formats, status: dict
) -> dict[str, dict | str]:
    """{figure stem: {format: path}}, or the reason a figure is not drawn."""
    drawn = {}
    for spec in FIGURES:
        state = figure_state(spec, status)
        drawn[spec.stem] = (
            figures.save(render(spec, tables), out / "figures", spec.stem, formats)
            if state == "enabled"
            else state
        )
    return drawn


def claims_intro(claims: pl.DataFrame) -> str:
    """How to read the claims table: the verdicts, the tolerance, and the bootstrap interval (what it covers, and why
    some statistics have none)."""
    held = claims.filter(pl.col("applicable"))
    count = (
        f"<p><b>{int(held['holds'].sum())} of {held.height}</b> applicable claims hold"
        f" ({claims.height - held.height} not applicable).</p>"
    )
    return count + (
        "<p>Each row is a sentence of the paper, quoted, with where it stands. <i>holds</i> judges it as the paper states "
        'it: the paper\'s own thresholds ("over 97%" is ≥ 0.97), the numbers it reports within a <i>tolerance</i> band '
        "(this run may differ from the paper in model, corpus and spaCy version), and its qualitative point; "
        "<i>direction</i> judges the qualitative point alone (a sign, an ordering, a head's rank), where the sentence has "
        "one apart from its number. Open <i>criterion</i> under a sentence for exactly what is tested. Layer spans are "
        "scaled to the model's depth; claims about named GPT-2 heads apply only to GPT-2 small.</p>"
        "<p><i>95% interval</i>: a bootstrap over sentences (attend.bootstrap_replicates): how far this run's number "
        "moves with another sample of sentences from the same corpus, the model, tokenizer and parser fixed. "
        "<i>Inside</i> means the paper's number lies in it, so the difference from the paper is within this run's "
        "sampling error; <i>outside</i> means sentence sampling alone does not explain it (another model, corpus or "
        "parser may). It is shown only where a percentile interval is valid: for a maximum, a count above a threshold, "
        "an argmax or a rank over heads or layers it is not (the bootstrap distribution of an extreme does not cover "
        "it), and the row says so instead.</p>"
    )


def build_index(tables, state: dict, drawn: dict, claims: pl.DataFrame, exemplar_heads) -> str:
    model = state.get("model", {})
    stages = state.get("stages", {})
    parts = [
        f"<h1>Attention statistics: {escape(state.get('run_name', ''))}</h1>",
        "<nav>"
        + "".join(
            f"<a href='#{s}'>{s}</a>"
            for s in (
                "run",
                "findings",
                "claims",
                "corpus",
                "views",
                "figures",
                "exemplars",
                *(section.anchor for section in SECTIONS),
            )
        )
        + "</nav>",
        "<h2 id='run'>Run</h2>",
    ]
    counts = stages.get("attend", {}).get("counts", {})
    annotate = stages.get("annotate", {}).get("counts", {})
    overview = pl.DataFrame(
        {
            "item": [
                "model",
                "model type",
                "layers × heads",
                "parameters",
                "weights sha256",
                "device",
                "sentences",
                "pieces",
                "git commit",
            ],
            "value": [
                str(model.get("name")),
                str(model.get("model_type")),
                f"{model.get('num_layers')} × {model.get('num_heads')}",
                f"{model.get('num_parameters', 0):,}",
                str(model.get("weights_sha256", ""))[:16],
                str(counts.get("device")),
                str(annotate.get("sentences")),
                str(annotate.get("pieces")),
                str(state.get("git", {}).get("commit")),
            ],
        }
    )
    overview = pl.concat(
        [
            overview,
            pl.DataFrame({"item": ["position 0 (model.bos)"], "value": [position_zero(state)]}),
        ]
    )
    parts.append(table(overview))
    finished = {
        name: s for name, s in stages.items() if name != NAME
    }  # this stage is still writing this page
    timing = pl.DataFrame(
        {
            "stage": list(finished),
            "seconds": [s.get("seconds") for s in finished.values()],
            "status": [s.get("status") for s in finished.values()],
            "fingerprint": [s.get("fingerprint") for s in finished.values()],
        },
        schema={
            "stage": pl.String,
            "seconds": pl.Float64,
            "status": pl.String,
            "fingerprint": pl.String,
        },
    )
    parts.append(
        "<h3>Stage timings</h3>"
        + table(timing, 1)
        + f"<p>The {NAME} stage itself is not listed: it was writing this page (its time is in run.json).</p>"
    )
    if state.get("metrics"):
        metrics = pl.DataFrame(
            {"metric": list(state["metrics"]), "status": list(state["metrics"].values())}
        )
        parts.append("<h3>Metrics</h3>" + table(metrics))
    parts.append(
        "<details><summary>Resolved config and package versions</summary><pre>"
        + escape(
            yaml.safe_dump(
                {"config": state.get("config"), "versions": state.get("versions")}, sort_keys=False
            )
        )
        + "</pre></details>"
    )
    parts.append("<h2 id='findings'>Findings</h2>" + table(tables["findings"]))
    parts.append(
        "<h2 id='claims'>The paper's claims, checked on this run</h2>"
        + claims_intro(claims)
        + claims_table(claims)
    )
    stats = tables.get("corpus_stats")
    if stats is not None:
        parts.append(
            "<h2 id='corpus'>Corpus statistics</h2>"
            + table(stats.filter(pl.col("paper_value").is_not_null()))
        )
    parts.append(views_section(tables))
    parts.append("<h2 id='figures'>Figures</h2>")
    for spec in FIGURES:
        files = drawn.get(spec.stem, {})
        if isinstance(files, str):
            parts.append(
                f"<figure id='{spec.stem}'><h3>{escape(spec.title)}</h3><p class='disabled'>{escape(files)}</p></figure>"
            )
            continue
        links = " · ".join(
            f"<a href='figures/{spec.stem}.{fmt}'>{fmt.upper()}</a>" for fmt in files
        )
        img = (
            f"<img src='{embedded_png(files['png'])}' alt='{escape(spec.title)}'>"
            if "png" in files
            else ""
        )
        parts.append(
            f"<figure id='{spec.stem}'><h3>{escape(spec.title)}</h3>{img}"
            f"<figcaption>{escape(spec.caption)} {links}</figcaption></figure>"
        )
    parts.append(
        "<h2 id='exemplars'>Exemplar sentences (Tables 1–3)</h2><p>Sentences ranked by the head's largest "
        "token-to-token weight (excluding the null pieces); the attending piece is <b>bold</b>, the piece receiving "
        "the attention <i><u>italic and underlined</u></i>.</p>"
    )
    ex, heads = tables["exemplars"], tables["head_metrics"]
    for layer, head in exemplar_heads:
        metrics = heads.filter((pl.col("layer") == layer) & (pl.col("head") == head))
        if metrics.is_empty():
            parts.append(f"<p>Layer {layer}, head {head}: no such head in this model.</p>")
            continue
        m = metrics.row(0, named=True)
        rows = ex.filter((pl.col("layer") == layer) & (pl.col("head") == head)).sort("rank")
        items = "".join(
            f"<tr><td>{r['rank'] + 1}</td><td>{r['weight']:.3f}</td><td>{render_exemplar(r)}</td></tr>"
            for r in rows.iter_rows(named=True)
        )
        parts.append(
            f"<h3>Layer {layer}, head {head}</h3><p>variability {m['variability']:.3f}, mean distance "
            f"{m['mean_distance']:.2f}, entropy {m['mean_entropy']:.2f}, dependency alignment {m['dep_align_either']:.3f}</p>"
            f"<table class='exemplars'><thead><tr><th>#</th><th>max weight</th><th>sentence</th></tr></thead>"
            f"<tbody>{items}</tbody></table>"
        )
    for section in SECTIONS:
        parts.append(
            f"<section id='{section.anchor}'>"
            + section.render(
                *(tables.get(name) for name in section.inputs),
                state.get("metrics", {}).get(section.metric),
            )
            + "</section>"
        )
    return page(f"Attention statistics: {state.get('run_name', '')}", "".join(parts))


def build_report(run_dir: Path, out: Path, report_cfg) -> dict:
    loaded = load(
        run_dir, tables=(*NEEDED_TABLES, "corpus_stats")
    )  # its inputs only: never its own output
    missing = [t for t in NEEDED_TABLES if t not in loaded]
    if missing:
        raise PipelineError(f"{run_dir} lacks {missing}: run the aggregate stage first")
    state = run_info(run_dir)
    status = state.get("metrics", {})
    tables = split_weightings(loaded, status)
    ids = tables["exemplars"]["sentence_id"].unique().implode()
    tables["tokens"] = (
        scan(run_dir / "tokens", pool=True)
        .filter(pl.col("sentence_id").is_in(ids))
        .collect(engine="streaming")
    )  # the exemplars' sentences only
    claims = claims_check.evaluate(tables, state.get("model", {}), status)
    check_schema(claims, claims_check.SCHEMA, "claims.parquet")
    io.write_parquet(claims, run_dir / "claims.parquet")
    drawn = draw_all(tables, out, report_cfg.formats, status)
    exemplar_heads = (
        [tuple(h) for h in report_cfg.exemplar_heads]
        if report_cfg.exemplar_heads
        else default_exemplar_heads(tables["head_metrics"])
    )
    io.write_text(build_index(tables, state, drawn, claims, exemplar_heads), out / "index.html")
    held = claims.filter(pl.col("applicable"))
    return {
        "figures": sum(isinstance(d, dict) for d in drawn.values()),
        "claims_applicable": held.height,
        "claims_holding": int(held["holds"].sum()),
        "index": str(out / "index.html"),
    }


def run(ctx) -> dict:
    return build_report(ctx.run_dir, ctx.report_dir, ctx.cfg.report)


def summary(c: dict) -> str:
    return f"{c['figures']} figures; {c['claims_holding']} of {c['claims_applicable']} applicable claims hold; open {c['index']}"
