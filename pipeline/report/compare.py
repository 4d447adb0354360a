"""Two runs side by side: `python -m pipeline compare A B` writes reports/compare-A-B/index.html, one
self-contained page (figures embedded as PNG, no network), and compare-A-B/head_matches.parquet.

Two models rarely have the same depth, so the page redraws the layer-level figures from the tables at
relative depth (layer / (layers − 1), 0 to 1), one line per run, instead of showing each report's figures
by absolute layer. Findings and the paper's claims stand side by side. Heads are matched across the models
by the similarity of their profiles (see `head_features` and `match_heads`): for each head of A, the head of
B most like it, and the reverse."""

from __future__ import annotations

import base64
import io as bytes_io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.errors import PipelineError
from pipeline.report import claims as claims_check
from pipeline.report import figures
from pipeline.report.html import VERDICT, escape, page, table
from pipeline.results import info as run_info
from pipeline.results import load, of_weighting, resolve_run_dir
from pipeline.run import io

# layer_metrics columns drawn by relative depth: (column, title, y label); those both runs have are drawn
DEPTH_FIGURES = (
    ("null_share", "Null attention by relative depth", "share of attention to the null pieces"),
    (
        "dep_align_either",
        "Dependency alignment by relative depth",
        "share on related word pairs (either parent)",
    ),
    ("mean_distance", "Mean attention distance by relative depth", "mean distance (pieces)"),
    ("mean_entropy", "Mean attention entropy by relative depth", "entropy (nats)"),
    (
        "previous_piece_share",
        "Attention to the previous piece by relative depth",
        "share at offset 1",
    ),
)
MATCH_SCHEMA = {
    "run": pl.String,
    "layer": pl.Int32,
    "head": pl.Int32,
    "relative_depth": pl.Float64,
    "match_run": pl.String,
    "match_layer": pl.Int32,
    "match_head": pl.Int32,
    "match_relative_depth": pl.Float64,
    "similarity": pl.Float64,
    "mutual": pl.Boolean,
}


class Run:
    """One side of the comparison: its label, directory, attention-weighted tables and run.json."""

    def __init__(self, run_dir: Path, label: str):
        self.dir, self.label = run_dir, label
        self.tables = of_weighting(
            load(run_dir), "attention"
        )  # the paper's analysis: attention weights
        self.info = run_info(run_dir)
        if "head_metrics" not in self.tables or "layer_metrics" not in self.tables:
            raise PipelineError(
                f"{run_dir} lacks head_metrics or layer_metrics: run its aggregate stage first"
            )
        self.layers = int(self.tables["layer_metrics"]["layer"].max()) + 1
        self.heads = int(self.tables["head_metrics"]["head"].max()) + 1


def relative_depth(layer, layers: int):
    """layer / (layers − 1): 0 is the first layer, 1 the last (a one-layer model is at 0)."""
    return np.asarray(layer, dtype=np.float64) / max(layers - 1, 1)


# ---- figures ----


def png_uri(fig) -> str:
    """A matplotlib figure as a PNG data URI (closed after), so the page needs no file beside it."""
    buffer = bytes_io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        figures.plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def depth_figure(runs: list[Run], column: str, title: str, ylabel: str):
    """One line per run of a layer_metrics column against relative depth, with its bootstrap interval as a band."""
    fig, ax = figures.plt.subplots(figsize=(6.4, 3.6), layout="constrained")
    for run, colour in zip(runs, ("tab:blue", "tab:orange")):
        layers = run.tables["layer_metrics"].sort("layer")
        x = relative_depth(layers["layer"].to_numpy(), run.layers)
        ax.plot(
            x,
            layers[column].to_numpy(),
            marker="o",
            ms=3,
            color=colour,
            label=f"{run.label} ({run.layers} layers)",
        )
        figures._interval_band(ax, layers, column, x, colour)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("relative depth: layer / (layers − 1)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def depth_figures_html(runs: list[Run]) -> str:
    parts = []
    for column, title, ylabel in DEPTH_FIGURES:
        drawable = [
            r.tables["layer_metrics"] for r in runs if column in r.tables["layer_metrics"].columns
        ]
        if len(drawable) < len(runs) or all(df[column].is_nan().all() for df in drawable):
            continue
        parts.append(
            f"<figure><img src='{png_uri(depth_figure(runs, column, title, ylabel))}' alt='{escape(title)}'>"
            f"<figcaption>{escape(title)}: the layer-level value (the ratio of the layer's summed numerators "
            f"and denominators), the band its bootstrap 95% interval where the run has one.</figcaption></figure>"
        )
    return f"<div class='grid'>{''.join(parts)}</div>"


# ---- findings and claims ----


def findings_side_by_side(runs: list[Run]) -> pl.DataFrame:
    """statistic, each run's value (and 95% interval where it has one), and the paper's value."""
    frames = []
    for run in runs:
        f = run.tables["findings"]
        ci = (
            pl.format("[{}, {}]", pl.col("ci_low").round(3), pl.col("ci_high").round(3))
            if "ci_low" in f.columns
            else pl.lit(None, pl.String)
        )
        frames.append(
            f.select(
                "statistic",
                pl.col("value").alias(run.label),
                ci.alias(f"{run.label} 95% interval"),
                (
                    pl.col("paper_value")
                    if "paper_value" in f.columns
                    else pl.lit(None, pl.Float64)
                ).alias(f"paper ({run.label})"),
            )
        )
    out = frames[0].join(
        frames[1], on="statistic", how="full", coalesce=True, maintain_order="left"
    )
    paper = [f"paper ({r.label})" for r in runs]
    out = out.with_columns(paper=pl.coalesce(paper)).drop(paper)
    return out.select(
        c for c in out.columns if out[c].null_count() < out.height
    )  # no column of blanks


def run_claims(run: Run) -> pl.DataFrame | None:
    """The run's claims.parquet (written by its report stage), else the claims checked here on its tables;
    None where its tables cannot answer them."""
    if "claims" in run.tables:
        return run.tables["claims"]
    try:
        return claims_check.evaluate(
            run.tables, run.info.get("model", {}), run.info.get("metrics", {})
        )
    except (KeyError, pl.exceptions.PolarsError):
        return None


def claims_side_by_side(runs: list[Run]) -> pl.DataFrame | None:
    """claim, statement, whether it holds in each run, and each run's value."""
    frames = []
    for run in runs:
        c = run_claims(run)
        if c is None:
            return None
        verdict = [VERDICT[h if a else None] for h, a in zip(c["holds"], c["applicable"])]
        frames.append(
            c.select(
                "claim",
                "statement",
                pl.Series(f"holds ({run.label})", verdict),
                pl.col("run_value").alias(f"value ({run.label})"),
            )
        )
    out = frames[0].join(
        frames[1].drop("statement"), on="claim", how="full", coalesce=True, maintain_order="left"
    )
    return out.select(
        "claim",
        "statement",
        *(f"holds ({r.label})" for r in runs),
        *(f"value ({r.label})" for r in runs),
    )


# ---- heads matched across the models ----


def head_features(run: Run) -> dict[str, pl.DataFrame]:
    """{feature group: frame of layer, head and the group's columns}, each group a head's profile from one table:
    'pos_to' the share of its attention to each part of speech, 'offset' its share at each offset i − j of the
    positional profile, 'null' its null share. A run lacking a table (or with it empty) lacks the group."""
    t, groups = run.tables, {}
    pos = t.get("pos_share")
    if pos is not None and not pos.filter(pl.col("direction") == "to").is_empty():
        groups["pos_to"] = (
            pos.filter(pl.col("direction") == "to")
            .pivot(on="tag", index=["layer", "head"], values="share", aggregate_function="first")
            .rename(lambda c: c if c in ("layer", "head") else f"to_{c}")
        )
    profile = t.get("positional_profile")
    if profile is not None and not profile.is_empty():
        groups["offset"] = (
            profile.sort("offset")
            .pivot(on="offset", index=["layer", "head"], values="share", aggregate_function="first")
            .rename(lambda c: c if c in ("layer", "head") else f"offset_{c}")
        )
    if "null_share" in t["head_metrics"].columns:
        groups["null"] = t["head_metrics"].select("layer", "head", "null_share")
    return groups


def feature_matrices(a: Run, b: Run) -> tuple[np.ndarray, np.ndarray, dict[str, list[str]]]:
    """Both runs' heads (sorted by layer, head) as rows of the features both have, standardised together.

    The columns: the union of the two runs' POS tags (a tag one run lacks is a share of 0 there), the offsets both
    profiles have (1..D of the shorter), the null share. Each column is standardised over the heads of both runs
    (z-scores; constant columns dropped; an undefined value becomes the mean, 0), and each group's columns are
    divided by √(its column count), so that 17 tags, 20 offsets and the null share weigh the same."""
    fa, fb = head_features(a), head_features(b)
    blocks_a, blocks_b, used = [], [], {}
    for group in [g for g in fa if g in fb]:
        ga, gb = fa[group], fb[group]
        columns = [c for c in ga.columns if c not in ("layer", "head")]
        columns += [c for c in gb.columns if c not in ("layer", "head") and c not in columns]
        if group == "offset":
            columns = [c for c in columns if c in ga.columns and c in gb.columns]
        x = [_aligned(run, g, columns) for run, g in ((a, ga), (b, gb))]
        both = np.vstack(x)
        with warnings.catch_warnings(
            action="ignore", category=RuntimeWarning
        ):  # a column with no defined value
            mean, sd = np.nanmean(both, axis=0), np.nanstd(both, axis=0)
        keep = np.isfinite(sd) & (sd > 1e-12)
        if not keep.any():
            continue
        z = [np.nan_to_num((m[:, keep] - mean[keep]) / sd[keep]) / np.sqrt(keep.sum()) for m in x]
        blocks_a.append(z[0])
        blocks_b.append(z[1])
        used[group] = [c for c, k in zip(columns, keep) if k]
    if not used:
        raise PipelineError(
            f"runs {a.label} and {b.label} share no head features (pos_share, positional_profile, null_share)"
        )
    return np.hstack(blocks_a), np.hstack(blocks_b), used


def _aligned(run: Run, group: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """[layers · heads, columns] for every head of the run in (layer, head) order; a missing tag is 0, a missing
    head NaN."""
    grid = pl.DataFrame(
        {
            "layer": np.repeat(np.arange(run.layers), run.heads),
            "head": np.tile(np.arange(run.heads), run.layers),
        },
        schema={"layer": pl.Int64, "head": pl.Int64},
    )
    group = group.with_columns(pl.col("layer").cast(pl.Int64), pl.col("head").cast(pl.Int64))
    missing = [pl.lit(0.0).alias(c) for c in columns if c not in group.columns]
    joined = grid.join(group.with_columns(missing), on=["layer", "head"], how="left")
    return (
        joined.select(pl.col(c).cast(pl.Float64).fill_nan(None) for c in columns)
        .to_numpy()
        .astype(np.float64)
    )


def cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[len(x), len(y)] cosine similarities of the rows; 0 for a row of zeros (a head at the mean of everything)."""

    def unit(m):
        norm = np.linalg.norm(m, axis=1, keepdims=True)
        return np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)

    return unit(x) @ unit(y).T


def best_matches(
    source: Run, target: Run, similarity: np.ndarray, reverse_best: np.ndarray
) -> pl.DataFrame:
    """For each head of `source` (rows of `similarity`), the head of `target` most like it (the first on a tie);
    mutual when that head's own best match is this one."""
    best = similarity.argmax(axis=1)
    index = np.arange(source.layers * source.heads)
    layer, head = index // source.heads, index % source.heads
    return pl.DataFrame(
        {
            "run": source.label,
            "layer": layer,
            "head": head,
            "relative_depth": relative_depth(layer, source.layers),
            "match_run": target.label,
            "match_layer": best // target.heads,
            "match_head": best % target.heads,
            "match_relative_depth": relative_depth(best // target.heads, target.layers),
            "similarity": similarity[index, best],
            "mutual": reverse_best[best] == index,
        },
        schema=MATCH_SCHEMA,
    )


def match_heads(a: Run, b: Run) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """head_matches: every head of A with its best match in B, then every head of B with its best in A; and the
    feature columns used, by group."""
    xa, xb, used = feature_matrices(a, b)
    s = cosine(xa, xb)
    a_best, b_best = s.argmax(axis=1), s.argmax(axis=0)
    return pl.concat([best_matches(a, b, s, b_best), best_matches(b, a, s.T, a_best)]), used


def matches_html(matches: pl.DataFrame, used: dict[str, list[str]], runs: list[Run]) -> str:
    described = {
        "pos_to": "share of attention to each part of speech",
        "offset": "positional profile, offsets",
        "null": "null share",
    }
    groups = "; ".join(
        f"{described.get(g, g)} ({len(c)} column{'s' * (len(c) != 1)})" for g, c in used.items()
    )
    parts = [
        f"<p>Each head is described by the features both runs have — {escape(groups)} — each standardised over "
        "the heads of both runs, each group weighted equally; heads are compared by the cosine similarity of these "
        "vectors. <i>mutual</i>: the match's own best match is this head. Written as "
        "<a href='head_matches.parquet'>head_matches.parquet</a>.</p>"
    ]
    for run in runs:
        rows = matches.filter(pl.col("run") == run.label)
        summary = (
            f"{run.label} → {rows['match_run'][0]}: {rows.height} heads, mean best similarity "
            f"{rows['similarity'].mean():.3f}, {int(rows['mutual'].sum())} mutual"
        )
        parts.append(
            f"<details{' open' * (rows.height <= 150)}><summary>{escape(summary)}</summary>{table(rows.drop('run', 'match_run'))}</details>"
        )
    return "".join(parts)


# ---- the page ----


def runs_table(runs: list[Run]) -> pl.DataFrame:
    def row(run: Run) -> list[str]:
        model = run.info.get("model", {})
        counts = run.info.get("stages", {}).get("annotate", {}).get("counts", {})
        return [
            run.label,
            str(model.get("name")),
            f"{run.layers} × {run.heads}",
            str(counts.get("sentences", "—")),
            position_zero(run.info),
        ]

    return pl.DataFrame(
        [row(r) for r in runs],
        schema=["run", "model", "layers × heads", "sentences", "position 0"],
        orient="row",
    )


def bos_of(info: dict) -> tuple[str | None, str | None]:
    """(resolved model.bos, the piece at position 0 when special) as the run's annotate stage recorded it; a run made
    before model.bos existed says it through its special pieces. (None, None) when neither was recorded."""
    record = info.get("bos")
    if isinstance(record, dict) and record.get("resolved"):
        return record["resolved"], record.get("piece")
    special = info.get("special_pieces")
    if isinstance(special, dict) and "before" in special:
        return ("always" if special["before"] else "never"), None
    return None, None


def position_zero(info: dict) -> str:
    """What position 0 of every sentence is in a run (its run.json): shown by the report and the comparison."""
    resolved, piece = bos_of(info)
    if resolved is None:
        return "not recorded"
    if resolved != "always":
        return "the sentence's first piece"
    return f"special piece ({piece})" if piece else "special piece"


def bos_warning(runs: list[Run]) -> str | None:
    """One line when the two runs differ in what position 0 is (model.bos): null attention, attention to position 0,
    is then attention to BOS in one run and to the first word in the other, and the two are not comparable."""
    resolved = [bos_of(r.info)[0] for r in runs]
    if None in resolved or resolved[0] == resolved[1]:
        return None
    sides = ", ".join(f"{r.label}: {position_zero(r.info)}" for r in runs)
    return (
        f"the runs differ at position 0 ({sides}; model.bos): null attention, attention to position 0, and the "
        "statistics that set it apart are not comparable across them"
    )


def report_links(runs: list[Run], out_dir: Path, reports_dir: Path) -> str:
    """Links to each run's own report, where it has been built (relative, so the folder can move with reports/)."""
    links = []
    for run in runs:
        index = reports_dir / run.dir.name / "index.html"
        if index.is_file():
            links.append(
                f"<a href='{escape(os.path.relpath(index, out_dir))}'>{escape(run.label)}'s report</a>"
            )
    return f"<p>{' · '.join(links)}</p>" if links else ""


def compare_runs(
    run_a: str,
    run_b: str,
    out: str | None = None,
    data_dir: str = "data",
    reports_dir: str = "reports",
) -> str:
    """Writes <out or reports/compare-A-B>/index.html and head_matches.parquet; returns the page's path."""
    dirs = [resolve_run_dir(r, data_dir) for r in (run_a, run_b)]
    names = [d.name for d in dirs]
    labels = [names[0], names[1] if names[1] != names[0] else names[1] + " (B)"]
    runs = [Run(d, label) for d, label in zip(dirs, labels)]
    out_dir = Path(out) if out else Path(reports_dir) / f"compare-{names[0]}-{names[1]}"
    matches, used = match_heads(*runs)
    warning = bos_warning(runs)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    io.write_parquet(matches, out_dir / "head_matches.parquet")
    sections = [
        ("runs", "Runs"),
        ("depth", "Figures by relative depth"),
        ("findings", "Findings"),
        ("claims", "Claims"),
        ("heads", "Heads matched across the models"),
    ]
    parts = [
        f"<h1>{escape(labels[0])} vs {escape(labels[1])}</h1>",
        "<nav>"
        + "".join(f"<a href='#{key}'>{escape(title.lower())}</a>" for key, title in sections)
        + "</nav>",
        "<h2 id='runs'>Runs</h2>"
        + table(runs_table(runs))
        + report_links(runs, out_dir, Path(reports_dir))
        + (f"<p class='warning'><b>Warning:</b> {escape(warning)}.</p>" if warning else ""),
        "<h2 id='depth'>Figures by relative depth</h2><p>Each layer at layer / (layers − 1): the first layer of "
        "either model at 0, its last at 1, so models of different depths can be read together.</p>"
        + depth_figures_html(runs),
        "<h2 id='findings'>Findings</h2>" + table(findings_side_by_side(runs)),
    ]
    claims = claims_side_by_side(runs)
    parts.append(
        "<h2 id='claims'>The paper's claims, in both runs</h2>"
        + (
            table(claims)
            if claims is not None
            else "<p>Not available: a run lacks the tables they need.</p>"
        )
    )
    parts.append(
        "<h2 id='heads'>Heads matched across the models</h2>" + matches_html(matches, used, runs)
    )
    target = out_dir / "index.html"
    io.write_text(page(f"{labels[0]} vs {labels[1]}", "".join(parts)), target)
    return str(target)
