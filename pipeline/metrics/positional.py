"""Positional profile (beyond the paper): the share of each head's non-null attention at each offset
d = i − j, d = 1..D (attend.positional_offsets; 0 disables), and for an encoder also d = −1..−D (to
the right), over the same denominator as Eqs. 3-6 (`mass`: non-null pairs). Offset 0 (a piece with
itself) and attention to null pieces are not in the profile, so a head's shares sum to at most 1
(exactly 1 when D reaches the longest sentence and the head never attends to itself). From it: `previous_piece_share` (d = 1), `max_offset_share` and
`argmax_offset` (the offset with the largest share; the smallest such offset on a tie), the table
positional_profile.parquet, and the head roles (pipeline/roles.py, head_roles.parquet).

On the device: one gather of the diagonals α_i,i−d ([B, H, T, K], rows i, offsets d), masked to non-null
j = i − d inside the sentence, summed over rows: [B, H, D] per sentence for d = 1..D (positional_offset), and for an
encoder [B, H, D] for d = −1..−D (positional_offset_right), which the engine adds over the batch. Padding rows are
zeroed by the engine."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline import roles
from pipeline.config import RolesConfig
from pipeline.metrics.base import FigureSpec, Metric, ratio

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "offset": pl.Int32, "share": pl.Float64}


def offset_profile(get) -> tuple[np.ndarray, np.ndarray]:
    """The offset sums [..., D] (decoder) or [..., 2D] (encoder: d = 1..D, then −1..−D) and their offsets d."""
    left = get("positional_offset")
    try:
        right = get("positional_offset_right")
    except KeyError:  # a causal model's sums have no offsets to the right
        right = None
    D = left.shape[-1]
    offsets = np.arange(1, D + 1)
    if right is None:
        return left, offsets
    return np.concatenate([left, right], -1), np.concatenate([offsets, -offsets])


def shares(offset: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """[..., D] offset sums / [...] mass: NaN where the mass is 0."""
    return ratio(offset, np.asarray(mass)[..., None])


class Positional(Metric):
    name = "positional"
    order = 90
    description = ("Share of non-null attention at each offset i − j = 1..D (and −1..−D for an encoder), "
                   "D = attend.positional_offsets.")
    columns = ("previous_piece_share", "max_offset_share", "argmax_offset")
    table_schemas = {"positional_profile": SCHEMA, "head_roles": roles.SCHEMA}
    figures = (
        FigureSpec("beyond_positional_profile", "Positional profile (beyond the paper)",
                   "The share of each head's non-null attention (j ≥ 1) at offset d = i − j, for d = 1..D "
                   "(attend.positional_offsets, default 20; an encoder's also −1..−D, to the right): Σ α_i,i−d / "
                   "Σ_{j ≥ 1} α_ij over attending pieces i ≥ 1 (an encoder: over its non-null pieces). "
                   "Left: the mean over the heads of each layer, one line per layer (colour: depth). Right: the largest "
                   "share of any head of the layer at each offset; a head fixed on one offset (such as the previous "
                   "piece, d = 1) is one bright cell.", "positional_profile", inputs=("positional_profile",)),
        FigureSpec("beyond_head_roles", "Head roles (beyond the paper)",
                   "Each head labelled by the first criterion it meets, in this order (thresholds: aggregate.roles, "
                   "defaults in brackets): sink, null share ≥ sink_null_share (0.9); positional, one offset i − j takes "
                   "≥ positional_share (0.5) of its non-null attention; syntactic, dependency alignment (either "
                   "direction) ≥ syntactic_ratio (3) × the share of piece pairs whose words are related; broad, mean "
                   "entropy in the upper broad_entropy_quantile (0.75) quantile of all heads; else mixed. "
                   "head_roles.parquet has every criterion as its own column. White dots: heads whose null share, pooled "
                   "over the corpus, exceeds ε (aggregate.roles.sink_rate_epsilon, 0.3): the pooled sink rate (finding "
                   "sink_rate_pooled). The title also gives the sink rate of Gu et al. (2024), \"When Attention Sink "
                   "Emerges in Language Models\", computed per sentence as they do (finding sink_rate, figure "
                   "beyond_sink_rate).", "head_roles_map", inputs=("head_roles",)),
    )

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.positional_offsets else "attend.positional_offsets is 0"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        B, H, T, _ = layer.att.shape
        D = ctx.cfg.positional_offsets
        K = min(D, T - 1)  # offsets a batch of T pieces can have (each direction); the rest are 0
        j, valid = ctx.at_offsets(K)  # [B, T, K or 2K]
        at_offset = layer.att.gather(-1, j[:, None].expand(B, H, T, -1)) * valid[:, None]  # α_i,i−d at non-null j
        sums = at_offset.sum(2)  # [B, H, K or 2K]
        out = {"positional_offset": torch.nn.functional.pad(sums[..., :K], (0, D - K)).to(ctx.sum_dtype)}
        if not ctx.causal:
            out["positional_offset_right"] = torch.nn.functional.pad(sums[..., K:], (0, D - K)).to(ctx.sum_dtype)
        return out  # per sentence: the engine adds over B

    def ratios(self, get) -> dict:
        sums, offsets = offset_profile(get)
        share = shares(sums, get("mass"))  # [..., D or 2D]
        defined = ~np.isnan(share).all(-1)
        best = np.where(defined, offsets[np.nan_to_num(share, nan=-1.0).argmax(-1)].astype(float), np.nan)
        return {"previous_piece_share": share[..., 0],
                "max_offset_share": np.where(defined, np.nan_to_num(share, nan=-1.0).max(-1), np.nan),
                "argmax_offset": best}

    def tables(self, sums, inputs) -> dict:
        offset_sums, offsets = offset_profile(lambda k: sums[k])
        share = shares(offset_sums, sums["mass"])  # [L, H, D or 2D]
        L, H, _ = share.shape
        layer, head, offset = np.meshgrid(np.arange(L), np.arange(H), offsets, indexing="ij")
        profile = pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                                "offset": offset.ravel().astype(np.int32), "share": share.ravel()}, schema=SCHEMA)
        roles_cfg = inputs.get("roles") or RolesConfig()  # aggregate.roles, which build_tables passes
        return {"positional_profile": profile,
                "head_roles": roles.head_roles(inputs["head_metrics"], inputs["layer_metrics"], roles_cfg)}


METRIC = Positional()
