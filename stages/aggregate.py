"""aggregate stage: attend/ parts → per-head tables, each a ratio of merged sums.

Which columns and tables exist is the metrics' analysis parts' business (pipeline/analysis/): every metric
gives its ratio columns to head_metrics (per head) and layer_metrics (from each layer's summed
numerators and denominators, not means of ratios), may add tables of its own, and its findings.
A metric the attend stage did not compute (disabled) has NaN columns and empty tables.

Weightings: every table is made once per weighting the sums hold — "attention" (the paper's α_ij) and,
when attend computed it, "norm" (α_ij ‖f_h(x_j)‖, Kobayashi et al. 2020) — by the same code on a view
of the sums under their keys without the weighting's prefix (Sums.of_weighting), and gets a first column `weighting`; the
exemplars, of attention only, have none.

Outputs:
- head_metrics.parquet: weighting, layer, head, every metric's ratio columns, then the sums behind them.
- layer_metrics.parquet: weighting, layer, the same ratio columns per layer, and per-layer extras (baselines).
- one table per metric that has one (pos_share, dep_share, dep_share_by_layer, exemplars, ...).
- findings.parquet: weighting, statistic, value, p_value, n, paper_value (the numbers section 5.3 quotes)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis import analyses, bootstrap, roles
from pipeline.analysis.base import Finding
from pipeline.config import AggregateConfig
from pipeline.metrics import weightings
from pipeline.run import io
from pipeline.run.parts import part_paths, read_meta, scan
from pipeline.run.stage import Output
from pipeline.sums import Sums

NAME = "aggregate"
VERSION = 1
INPUTS = ("attend", "tokens", "sentences")
CONFIG = ("aggregate",)
MASS = "attention_mass.mass"  # every run has it (the denominator of most shares): its shape gives layers and heads
FINDINGS_COLUMNS = {
    "statistic": pl.String,
    "value": pl.Float64,
    "p_value": pl.Float64,
    "n": pl.Int64,
    "paper_value": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "interval_note": pl.String,
}


def weighted(schema: dict) -> dict:
    """A table made under each weighting: its `weighting` column ("attention" or "norm") first."""
    return {"weighting": pl.String, **schema}


FINDINGS_SCHEMA = weighted(FINDINGS_COLUMNS)


def ratio_names() -> list[str]:
    return [c for m in analyses() for c in m.columns]


def ci_names() -> list[str]:
    """<column>_ci_low, <column>_ci_high of every ratio column: the bootstrap's 95% interval (NaN without one)."""
    return [f"{c}_ci_{side}" for c in ratio_names() for side in ("low", "high")]


def head_columns() -> dict:
    columns = ratio_names() + ci_names() + [c for m in analyses() for c in m.raw_columns]
    return {"layer": pl.Int32, "head": pl.Int32, **{c: pl.Float64 for c in columns}}


def layer_columns() -> dict:
    columns = ratio_names() + ci_names() + [c for m in analyses() for c in m.layer_extra_columns]
    return {"layer": pl.Int32, **{c: pl.Float64 for c in columns}}


def head_schema() -> dict:
    return weighted(head_columns())


def layer_schema() -> dict:
    return weighted(layer_columns())


def table_schema(metric, schema: dict) -> dict:
    return weighted(schema) if metric.norm_weighting else schema


OUTPUTS = (
    Output("head_metrics.parquet", head_schema),
    Output("layer_metrics.parquet", layer_schema),
    *(
        Output(f"{name}.parquet", table_schema(m, schema))
        for m in analyses()
        for name, schema in m.table_schemas.items()
    ),
    Output("findings.parquet", FINDINGS_SCHEMA),
)


def load_sums(run_dir) -> tuple[Sums, dict]:
    """The attend parts' sums merged one part at a time (memory: one part's sums, not the corpus)."""
    meta = read_meta(run_dir / "attend")
    return Sums.merge(
        Sums.from_arrays(io.read_npz(p)) for p in part_paths(run_dir / "attend")
    ), meta


def computed_metrics(meta: dict, weighting: str = "attention") -> list:
    """The metrics attend computed, of those that have the weighting (exemplars: attention only)."""
    status = meta.get("metrics", {})
    return [
        m
        for m in analyses()
        if status.get(m.name) == "enabled" and (weighting == "attention" or m.norm_weighting)
    ]


def ratio_columns(
    active: list, shape: tuple, get, replicate: bool = False
) -> dict[str, np.ndarray]:
    """{ratio column: array of `shape`}: NaN for a metric not computed; in a bootstrap replicate (replicate=True)
    also NaN for a metric whose ratios need sums the bootstrap does not replicate (only head-level sums, one number
    per head, get replicates). A point estimate missing a sum is an error, never a silent NaN."""
    columns = {}
    for m in analyses():
        try:
            values = m.ratios(get) if m in active else {}
        except KeyError:
            if not replicate:
                raise
            values = {}
        columns.update(
            {
                c: np.broadcast_to(np.asarray(values.get(c, np.nan), dtype=np.float64), shape)
                for c in m.columns
            }
        )
    return columns


def ci_columns(replicates: dict[str, np.ndarray], shape: tuple) -> dict[str, np.ndarray]:
    out = {}
    for c in ratio_names():
        low, high = (
            bootstrap.interval(replicates[c]) if c in replicates else (np.full(shape, np.nan),) * 2
        )
        out[f"{c}_ci_low"], out[f"{c}_ci_high"] = low.ravel(), high.ravel()
    return out


def head_table(sums: Sums, active: list, boot: dict) -> pl.DataFrame:
    L, H = sums[MASS].shape
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    columns = {c: v.ravel() for c, v in ratio_columns(active, (L, H), lambda k: sums[k]).items()}
    replicates = (
        ratio_columns(active, (len(boot[MASS]), L, H), lambda k: boot[k], replicate=True)
        if boot
        else {}
    )
    raw = {
        c: (
            np.asarray(sums[key], dtype=np.float64) if m in active else np.full((L, H), np.nan)
        ).ravel()
        for m in analyses()
        for c, key in m.raw_columns.items()
    }
    return pl.DataFrame(
        {
            "layer": layer.ravel().astype(np.int32),
            "head": head.ravel().astype(np.int32),
            **columns,
            **ci_columns(replicates, (L, H)),
            **raw,
        },
        schema=head_columns(),
    )


def layer_table(sums: Sums, active: list, boot: dict) -> pl.DataFrame:
    L = sums[MASS].shape[0]
    columns = ratio_columns(active, (L,), lambda k: sums[k].sum(axis=1))
    replicates = (
        ratio_columns(active, (len(boot[MASS]), L), lambda k: boot[k].sum(axis=2), replicate=True)
        if boot
        else {}
    )
    columns.update(ci_columns(replicates, (L,)))
    for m in analyses():
        extra = m.layer_columns(sums) if m in active else {}
        columns.update(
            {
                c: np.asarray(extra.get(c, np.full(L, np.nan)), dtype=np.float64)
                for c in m.layer_extra_columns
            }
        )
    return pl.DataFrame({"layer": np.arange(L, dtype=np.int32), **columns}, schema=layer_columns())


def replicate_findings(
    sums: Sums, active: list, boot: dict, heads: pl.DataFrame, layers: pl.DataFrame
) -> dict[str, list[float]]:
    """{finding: its value in each bootstrap replicate}: every metric's findings on the replicate's head and layer
    ratios (correlations, means, SDs and peaks alike); sums without replicates keep their full-corpus value."""
    L, H = sums[MASS].shape
    out: dict[str, list[float]] = {}
    for r in range(len(boot.get(MASS, ()))):
        head_r = ratio_columns(active, (L, H), lambda k: boot[k][r], replicate=True)
        layer_r = ratio_columns(active, (L,), lambda k: boot[k][r].sum(axis=1), replicate=True)
        heads_r = heads.with_columns(**{c: pl.Series(v.ravel()) for c, v in head_r.items()})
        layers_r = layers.with_columns(**{c: pl.Series(v) for c, v in layer_r.items()})
        sums_r = Sums({k: boot[k][r] if k in boot else v for k, v in sums.additive.items()})
        for m in active:
            for f in m.findings(heads_r, layers_r, sums_r):
                out.setdefault(f.statistic, []).append(f.value)
    return out


def findings_table(findings: list[Finding], replicates: dict[str, list[float]]) -> pl.DataFrame:
    """A finding whose replicates all equal its value rests on sums the bootstrap does not replicate (only head-level
    sums are): it gets no interval rather than a false one of zero width. An extreme over heads or layers (a
    maximum, an argmax: Finding.interval_note) gets none either: the percentile bootstrap of a maximum is biased
    and its interval does not cover at its nominal level; the note says so."""
    rows = []
    for f in findings:
        values = np.asarray(replicates.get(f.statistic, []), dtype=np.float64)
        varies = values.size and not np.all(
            (values == f.value) | (np.isnan(values) & np.isnan(f.value))
        )
        low, high = (
            bootstrap.interval(values) if varies and f.interval_note is None else (None, None)
        )
        note = (
            f.interval_note
            if f.interval_note is not None
            else (None if varies else "no interval: not bootstrapped")
        )
        rows.append(
            (
                f.statistic,
                f.value,
                f.p_value,
                f.n,
                f.paper_value,
                None if low is None else float(low),
                None if high is None else float(high),
                note,
            )
        )
    return pl.DataFrame(rows, schema=FINDINGS_COLUMNS, orient="row")


def weighting_tables(
    sums: Sums, weighting: str, active: list, inputs: dict
) -> dict[str, pl.DataFrame]:
    """Every table of one weighting from its sums (keys without the weighting's prefix), each made as the paper's are, with the
    `weighting` column added first; a metric without the weighting (exemplars under "norm") has no table here."""
    roles_cfg = inputs["roles"]
    boot = bootstrap.replicate_sums(sums.additive)
    heads, layers = head_table(sums, active, boot), layer_table(sums, active, boot)
    tables = {"head_metrics": heads, "layer_metrics": layers}
    inputs = {**inputs, "head_metrics": heads, "layer_metrics": layers}
    findings = [
        roles.sink_rate_pooled(heads, roles_cfg.sink_rate_epsilon)
    ]  # from null_share; Gu et al.'s: sink_rate metric
    for m in analyses():
        if weighting != "attention" and not m.norm_weighting:
            continue
        made = m.tables(sums, inputs) if m in active else {}
        tables.update(
            {
                name: made.get(name, pl.DataFrame(schema=schema))
                for name, schema in m.table_schemas.items()
            }
        )
        findings += m.findings(heads, layers, sums) if m in active else []
    tables["findings"] = findings_table(
        findings, replicate_findings(sums, active, boot, heads, layers)
    )
    unweighted = {name for m in analyses() if not m.norm_weighting for name in m.table_schemas}
    return {
        name: df
        if name in unweighted
        else df.select(pl.lit(weighting).alias("weighting"), *df.columns)
        for name, df in tables.items()
    }


def build_tables(
    sums: Sums, meta: dict, tokens_dir, sentences_dir, aggregate_cfg=None
) -> dict[str, pl.DataFrame]:
    """Every table, under each weighting the sums hold (rows of "attention", then of "norm"). Metrics read tokens
    and sentences as lazy scans of their parts, filtered or aggregated as they stream: the analysis sample's
    ("tokens", "sentences"), and with the exemplar pool ("pool_tokens", "pool_sentences"); also the head and layer
    tables and the thresholds of head roles (aggregate.roles; defaults when None)."""
    inputs = {
        "tokens": scan(tokens_dir),
        "sentences": scan(sentences_dir),
        "pool_tokens": scan(tokens_dir, pool=True),
        "pool_sentences": scan(sentences_dir, pool=True),
        "pos_vocab": meta["pos_vocab"],
        "dep_vocab": meta["dep_vocab"],
        "null_pieces": meta.get(
            "null_pieces", "first"
        ),  # attend.null_pieces, resolved for the model
        "roles": (aggregate_cfg or AggregateConfig()).roles,
    }
    per_weighting = [
        weighting_tables(sums.of_weighting(w), w, computed_metrics(meta, w), inputs)
        for w in weightings(meta.get("metrics", {}))
    ]
    return {
        name: pl.concat([t[name] for t in per_weighting if name in t]) for name in per_weighting[0]
    }


def run(ctx) -> dict:
    sums, meta = load_sums(ctx.run_dir)
    tables = build_tables(
        sums, meta, ctx.input_path("tokens"), ctx.input_path("sentences"), ctx.cfg.aggregate
    )
    for name, df in tables.items():
        ctx.write_parquet(df, f"{name}.parquet")
    findings = tables["findings"].filter(pl.col("weighting") == "attention")  # the paper's numbers
    f = dict(zip(findings["statistic"], findings["value"]))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()}


def summary(counts: dict) -> str:
    f = {
        k: counts.get(k, float("nan"))
        for k in (
            "null_share_overall",
            "null_share_max",
            "layer_max_dep_align",
            "layer_max_mean_distance",
            "sd_mean_distance",
            "r_distance_entropy",
            "r_distance_dep_align",
        )
    }
    return (
        f"null attention {f['null_share_overall']:.1%} of all attention (head max {f['null_share_max']:.1%}); "
        f"dependency alignment highest in layer {f['layer_max_dep_align']:.0f}, mean distance largest in layer "
        f"{f['layer_max_mean_distance']:.0f}; SD of head distance {f['sd_mean_distance']:.2f} (paper 3.6); "
        f"r(distance, entropy) = {f['r_distance_entropy']:.2f} (paper 0.61); "
        f"r(distance, dependency alignment) = {f['r_distance_dep_align']:.2f} (paper −0.73)"
    )
