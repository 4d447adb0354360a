"""Head roles (head_roles.parquet) and the attention sink rate of Gu et al. (2024), from the head and
layer tables, with the thresholds of `aggregate.roles` (pipeline/config.py RolesConfig).

A head meets each criterion or not (a value that is undefined, NaN, meets none):
  sink        null_share ≥ sink_null_share (0.9): nearly all its attention goes to position 0
  positional  max_offset_share ≥ positional_share (0.5): one offset i − j takes that share of its
              non-null attention (positional profile, pipeline/metrics/positional.py)
  syntactic   dep_align_either ≥ syntactic_ratio (3) × its layer's baseline_dep_pair_share (the share
              of piece pairs whose words are related: what attention blind to syntax would give)
  broad       mean_entropy ≥ the broad_entropy_quantile (0.75) quantile of all heads' mean entropies
Its `role` is the first criterion it meets in that order, else `mixed`. The order: a sink's non-null
attention is a remainder (at most a tenth of its attention), so its other shares describe little; a fixed
offset explains a head more simply than syntax does (a previous-piece head aligns with dependencies
because adjacent words are often related); broad is relative to the other heads, so it comes last.
Every criterion is also its own boolean column, so a head meeting several hides none.

The sink rate (Gu et al. 2024, "When Attention Sink Emerges in Language Models"): the share of heads
whose mean attention to the first position exceeds ε (sink_rate_epsilon, 0.3). null_share is that
mean: Σ α_i0 / Σ_j α_ij over rows i ≥ 1, and each row sums to 1, so it is the mean of α_i0 over the
attending pieces of the corpus, pooled over sentences. Gu et al. average α_k over all queries of a
sequence, the first token's own row (α_00 = 1) included: on a sentence of n pieces theirs is
(1 + (n − 1)·ours)/n, a little higher."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.metrics.base import Finding

ROLES = ("sink", "positional", "syntactic", "broad", "mixed")  # in precedence order; mixed: none of the others
SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "role": pl.String, "is_sink": pl.Boolean, "is_positional": pl.Boolean,
          "is_syntactic": pl.Boolean, "is_broad": pl.Boolean, "above_sink_epsilon": pl.Boolean,
          "null_share": pl.Float64, "max_offset_share": pl.Float64, "argmax_offset": pl.Float64,
          "dep_align_either": pl.Float64, "syntactic_threshold": pl.Float64, "mean_entropy": pl.Float64,
          "broad_entropy_threshold": pl.Float64}


def _values(df: pl.DataFrame, column: str) -> np.ndarray:
    """A float column as numpy, NaN for null (and for a column the table lacks)."""
    if column not in df.columns:
        return np.full(df.height, np.nan)
    return df[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def at_least(value, threshold) -> np.ndarray:
    """value ≥ threshold where both are defined; False where either is NaN."""
    value, threshold = np.broadcast_arrays(np.asarray(value, dtype=np.float64), np.asarray(threshold, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        return ~np.isnan(value) & ~np.isnan(threshold) & (value >= threshold)


def above(value, threshold: float) -> np.ndarray:
    """value > threshold where value is defined."""
    value = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(value) & (value > threshold)


def head_roles(heads: pl.DataFrame, layers: pl.DataFrame, cfg) -> pl.DataFrame:
    """heads: head_metrics; layers: layer_metrics (its baseline_dep_pair_share); cfg: RolesConfig."""
    heads = heads.sort("layer", "head")
    baseline = dict(zip(layers["layer"].to_list(), _values(layers, "baseline_dep_pair_share"))) if layers.height else {}
    null, offset_share = _values(heads, "null_share"), _values(heads, "max_offset_share")
    dep, entropy = _values(heads, "dep_align_either"), _values(heads, "mean_entropy")
    syntactic_threshold = cfg.syntactic_ratio * np.array([baseline.get(layer, np.nan) for layer in heads["layer"].to_list()],
                                                         dtype=np.float64)
    known = entropy[~np.isnan(entropy)]
    broad_threshold = float(np.quantile(known, cfg.broad_entropy_quantile)) if known.size else float("nan")
    criteria = {"sink": at_least(null, cfg.sink_null_share), "positional": at_least(offset_share, cfg.positional_share),
                "syntactic": at_least(dep, syntactic_threshold), "broad": at_least(entropy, broad_threshold)}
    role = np.select(list(criteria.values()), list(criteria), default="mixed") if heads.height else np.array([], dtype=str)
    return pl.DataFrame({
        "layer": heads["layer"].cast(pl.Int32), "head": heads["head"].cast(pl.Int32), "role": role.astype(str),
        **{f"is_{name}": value for name, value in criteria.items()},
        "above_sink_epsilon": above(null, cfg.sink_rate_epsilon),
        "null_share": null, "max_offset_share": offset_share, "argmax_offset": _values(heads, "argmax_offset"),
        "dep_align_either": dep, "syntactic_threshold": syntactic_threshold, "mean_entropy": entropy,
        "broad_entropy_threshold": np.full(heads.height, broad_threshold)}, schema=SCHEMA)


def sink_rate(heads: pl.DataFrame, epsilon: float) -> Finding:
    """Gu et al. (2024): the share of heads (of those with a defined null share) whose mean attention to the
    first position exceeds ε."""
    null = _values(heads, "null_share")
    n = int((~np.isnan(null)).sum())
    return Finding("sink_rate", float(above(null, epsilon).sum() / n) if n else float("nan"), n=n)
