"""aggregate stage: attend/ parts → per-head tables, each a ratio of merged sums.

Which columns and tables exist is the metric registry's business (pipeline/metrics/): every metric
gives its ratio columns to head_metrics (per head) and layer_metrics (from each layer's summed
numerators and denominators, not means of ratios), may add tables of its own, and its findings.
A metric the attend stage did not compute (disabled) has NaN columns and empty tables.

Outputs:
- head_metrics.parquet: layer, head, every metric's ratio columns, then the sums behind them.
- layer_metrics.parquet: layer, the same ratio columns per layer, and per-layer extras (baselines).
- one table per metric that has one (pos_share, dep_share, dep_share_by_layer, exemplars).
- findings.parquet: statistic, value, p_value, n, paper_value (the numbers section 5.3 quotes)."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline import io
from pipeline.metrics import registry
from pipeline.metrics.base import Finding
from pipeline.parts import part_paths, read_meta, scan
from pipeline.stage import Output
from pipeline.sums import Sums

NAME = "aggregate"
VERSION = 1
INPUTS = ("attend", "tokens", "sentences")
CONFIG = ()
FINDINGS_SCHEMA = {"statistic": pl.String, "value": pl.Float64, "p_value": pl.Float64, "n": pl.Int64,
                   "paper_value": pl.Float64}


def head_schema() -> dict:
    columns = [c for m in registry() for c in m.columns] + [c for m in registry() for c in m.raw_columns]
    return {"layer": pl.Int32, "head": pl.Int32, **{c: pl.Float64 for c in columns}}


def layer_schema() -> dict:
    columns = [c for m in registry() for c in m.columns] + [c for m in registry() for c in m.layer_extra_columns]
    return {"layer": pl.Int32, **{c: pl.Float64 for c in columns}}


OUTPUTS = (Output("head_metrics.parquet", head_schema), Output("layer_metrics.parquet", layer_schema),
           *(Output(f"{name}.parquet", schema) for m in registry() for name, schema in m.table_schemas.items()),
           Output("findings.parquet", FINDINGS_SCHEMA))


def load_sums(run_dir) -> tuple[Sums, dict]:
    """The attend parts' sums merged one part at a time (memory: one part's sums, not the corpus)."""
    meta = read_meta(run_dir / "attend")
    return Sums.merge(Sums.from_arrays(io.read_npz(p)) for p in part_paths(run_dir / "attend")), meta


def computed_metrics(meta: dict) -> list:
    status = meta.get("metrics", {})
    return [m for m in registry() if status.get(m.name) == "enabled"]


def metric_columns(sums: Sums, active: list, shape: tuple, get) -> dict[str, np.ndarray]:
    columns, raw = {}, {}
    for m in registry():
        values = m.ratios(get) if m in active else {}
        columns.update({c: np.asarray(values.get(c, np.full(shape, np.nan)), dtype=np.float64).ravel() for c in m.columns})
        raw.update({c: (np.asarray(get(c), dtype=np.float64) if m in active else np.full(shape, np.nan)).ravel()
                    for c in m.raw_columns})
    return columns, raw


def head_table(sums: Sums, active: list) -> pl.DataFrame:
    L, H = sums["mass"].shape
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    columns, raw = metric_columns(sums, active, (L, H), lambda k: sums[k])
    return pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                         **columns, **raw}, schema=head_schema())


def layer_table(sums: Sums, active: list) -> pl.DataFrame:
    L = sums["mass"].shape[0]
    columns, _ = metric_columns(sums, active, (L,), lambda k: sums[k].sum(axis=1))
    for m in registry():
        extra = m.layer_columns(sums) if m in active else {}
        columns.update({c: np.asarray(extra.get(c, np.full(L, np.nan)), dtype=np.float64) for c in m.layer_extra_columns})
    return pl.DataFrame({"layer": np.arange(L, dtype=np.int32), **columns}, schema=layer_schema())


def findings_table(findings: list[Finding]) -> pl.DataFrame:
    rows = [(f.statistic, f.value, f.p_value, f.n, f.paper_value) for f in findings]
    return pl.DataFrame(rows, schema=FINDINGS_SCHEMA, orient="row")


def build_tables(sums: Sums, meta: dict, tokens_dir, sentences_dir) -> dict[str, pl.DataFrame]:
    """Metrics read tokens and sentences as lazy scans of their parts, filtered or aggregated as they stream:
    the analysis sample's ("tokens", "sentences"), and with the exemplar pool ("pool_tokens", "pool_sentences")."""
    active = computed_metrics(meta)
    heads, layers = head_table(sums, active), layer_table(sums, active)
    tables = {"head_metrics": heads, "layer_metrics": layers}
    inputs = {"tokens": scan(tokens_dir), "sentences": scan(sentences_dir),
              "pool_tokens": scan(tokens_dir, pool=True), "pool_sentences": scan(sentences_dir, pool=True),
              "pos_vocab": meta["pos_vocab"], "dep_vocab": meta["dep_vocab"]}
    findings = []
    for m in registry():
        made = m.tables(sums, inputs) if m in active else {}
        tables.update({name: made.get(name, pl.DataFrame(schema=schema)) for name, schema in m.table_schemas.items()})
        findings += m.findings(heads, layers, sums) if m in active else []
    tables["findings"] = findings_table(findings)
    return tables


def run(ctx) -> dict:
    sums, meta = load_sums(ctx.run_dir)
    tables = build_tables(sums, meta, ctx.input_path("tokens"), ctx.input_path("sentences"))
    for name, df in tables.items():
        ctx.write_parquet(df, f"{name}.parquet")
    f = dict(zip(tables["findings"]["statistic"], tables["findings"]["value"]))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()}


def summary(counts: dict) -> str:
    f = {k: counts.get(k, float("nan")) for k in ("null_share_overall", "null_share_max", "layer_max_dep_align",
                                                   "layer_max_mean_distance", "sd_mean_distance", "r_distance_entropy",
                                                   "r_distance_dep_align")}
    return (f"null attention {f['null_share_overall']:.1%} of all attention (head max {f['null_share_max']:.1%}); "
            f"dependency alignment highest in layer {f['layer_max_dep_align']:.0f}, mean distance largest in layer "
            f"{f['layer_max_mean_distance']:.0f}; SD of head distance {f['sd_mean_distance']:.2f} (paper 3.6); "
            f"r(distance, entropy) = {f['r_distance_entropy']:.2f} (paper 0.61); "
            f"r(distance, dependency alignment) = {f['r_distance_dep_align']:.2f} (paper −0.73)")
