"""Head roles (head_roles.parquet) and the pooled attention sink rate, from the head and layer tables, with
the thresholds of `aggregate.roles` (pipeline/config.py RolesConfig).

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

Sinks, two ways. `sink_frequency` (pipeline/metrics/sink_rate.py) is Gu et al. (2024)'s per-sequence criterion:
the share of sentences on which the head's attention to the first token, averaged over all query rows (the first
token's own included), exceeds attend.sink_epsilon; its mean over heads is their sink rate (finding sink_rate).
`above_sink_epsilon` is the pooled variant: null_share (Σ α_i,null / Σ_j α_ij over the attending rows of the whole
corpus: rows i ≥ 1 of a decoder; [CLS] and [SEP] for an encoder) > sink_rate_epsilon (0.3), once per head; its share
of heads is the finding sink_rate_pooled. The two differ: pooling weighs long sentences more, leaves out the first
token's own row (α_00 = 1, which lifts Gu et al.'s score by about 1/n on a sentence of n pieces), and thresholds a
corpus mean instead of counting sentences."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.base import NO_INTERVAL_EXTREME, Finding

# The one definition of the roles (the table, its figure and the report's views read these): the criteria in
# precedence order, each an is_<name> column, then the role of a head that meets none; and each role's colour.
CRITERIA = ("sink", "positional", "syntactic", "broad")
MIXED = "mixed"
ROLES = (*CRITERIA, MIXED)
COLOURS = {
    "sink": "0.3",
    "positional": "tab:orange",
    "syntactic": "tab:blue",
    "broad": "tab:green",
    MIXED: "0.85",
}
SCHEMA = {
    "layer": pl.Int32,
    "head": pl.Int32,
    "role": pl.String,
    **{f"is_{c}": pl.Boolean for c in CRITERIA},
    "above_sink_epsilon": pl.Boolean,
    "sink_frequency": pl.Float64,
    "null_share": pl.Float64,
    "max_offset_share": pl.Float64,
    "argmax_offset": pl.Float64,
    "dep_align_either": pl.Float64,
    "syntactic_threshold": pl.Float64,
    "mean_entropy": pl.Float64,
    "broad_entropy_threshold": pl.Float64,
}


def _values(df: pl.DataFrame, column: str) -> np.ndarray:
    """A float column as numpy, NaN for null (and for a column the table lacks)."""
    if column not in df.columns:
        return np.full(df.height, np.nan)
    return df[column].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def at_least(value, threshold) -> np.ndarray:
    """value ≥ threshold where both are defined; False where either is NaN."""
    value, threshold = np.broadcast_arrays(
        np.asarray(value, dtype=np.float64), np.asarray(threshold, dtype=np.float64)
    )
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
    baseline = (
        dict(zip(layers["layer"].to_list(), _values(layers, "baseline_dep_pair_share")))
        if layers.height
        else {}
    )
    null, offset_share = _values(heads, "null_share"), _values(heads, "max_offset_share")
    dep, entropy = _values(heads, "dep_align_either"), _values(heads, "mean_entropy")
    syntactic_threshold = cfg.syntactic_ratio * np.array(
        [baseline.get(layer, np.nan) for layer in heads["layer"].to_list()], dtype=np.float64
    )
    known = entropy[~np.isnan(entropy)]
    broad_threshold = (
        float(np.quantile(known, cfg.broad_entropy_quantile)) if known.size else float("nan")
    )
    met = {
        "sink": at_least(null, cfg.sink_null_share),
        "positional": at_least(offset_share, cfg.positional_share),
        "syntactic": at_least(dep, syntactic_threshold),
        "broad": at_least(entropy, broad_threshold),
    }
    criteria = {name: met[name] for name in CRITERIA}  # in precedence order
    role = (
        np.select(list(criteria.values()), list(criteria), default=MIXED)
        if heads.height
        else np.array([], dtype=str)
    )
    return pl.DataFrame(
        {
            "layer": heads["layer"].cast(pl.Int32),
            "head": heads["head"].cast(pl.Int32),
            "role": role.astype(str),
            **{f"is_{name}": value for name, value in criteria.items()},
            "above_sink_epsilon": above(null, cfg.sink_rate_epsilon),
            "sink_frequency": _values(heads, "sink_frequency"),
            "null_share": null,
            "max_offset_share": offset_share,
            "argmax_offset": _values(heads, "argmax_offset"),
            "dep_align_either": dep,
            "syntactic_threshold": syntactic_threshold,
            "mean_entropy": entropy,
            "broad_entropy_threshold": np.full(heads.height, broad_threshold),
        },
        schema=SCHEMA,
    )


def sink_rate_pooled(heads: pl.DataFrame, epsilon: float) -> Finding:
    """The pooled sink rate (not Gu et al.'s per-sequence one, pipeline/metrics/sink_rate.py): the share of heads (of
    those with a defined null share) whose null share, pooled over the corpus, exceeds ε."""
    null = _values(heads, "null_share")
    n = int((~np.isnan(null)).sum())
    return Finding(
        "sink_rate_pooled",
        float(above(null, epsilon).sum() / n) if n else float("nan"),
        n=n,
        interval_note=NO_INTERVAL_EXTREME,
    )
