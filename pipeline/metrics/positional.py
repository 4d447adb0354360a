"""Positional profile (beyond the paper): the share of each head's non-null attention at each offset
d = i − j, d = 1..D (attend.positional_offsets; 0 disables), over the same denominator as Eqs. 3-6
(`mass`: i ≥ 1, 1 ≤ j ≤ i). Offset 0 (a piece with itself) and attention to position 0 are not in
the profile, so a head's shares sum to at most 1 (exactly 1 when D reaches the longest sentence and
the head never attends to itself). From it: `previous_piece_share` (d = 1), `max_offset_share` and
`argmax_offset` (the offset with the largest share; the smallest such offset on a tie), the table
positional_profile.parquet, and the head roles (pipeline/roles.py, head_roles.parquet).

On the device: one gather of the D sub-diagonals α_i,i−d ([B, H, T, D], rows i, offsets d), masked
to j = i − d ≥ 1, summed over rows: [B, H, D] per sentence, which the engine adds over the batch. Padding rows
are zeroed by the engine, and j < i always."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline import roles
from pipeline.config import RolesConfig
from pipeline.metrics.base import FigureSpec, Metric, ratio

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "offset": pl.Int32, "share": pl.Float64}


def offset_index(ctx, D: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, D] column j = i − d of row i at offset d = 1..D (clamped to 0), and [T, D] whether j ≥ 1."""
    j = ctx.idx[:, None] - torch.arange(1, D + 1, device=ctx.device)[None, :]
    return j.clamp_min(0), j >= 1


def shares(offset: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """[..., D] offset sums / [...] mass: NaN where the mass is 0."""
    return ratio(offset, np.asarray(mass)[..., None])


class Positional(Metric):
    name = "positional"
    order = 90
    description = "Share of non-null attention at each offset i − j = 1..D, D = attend.positional_offsets."
    columns = ("previous_piece_share", "max_offset_share", "argmax_offset")
    table_schemas = {"positional_profile": SCHEMA, "head_roles": roles.SCHEMA}
    figures = (
        FigureSpec("beyond_positional_profile", "Positional profile (beyond the paper)",
                   "The share of each head's non-null attention (j ≥ 1) at offset d = i − j, for d = 1..D "
                   "(attend.positional_offsets, default 20): Σ α_i,i−d / Σ_{j ≥ 1} α_ij over attending pieces i ≥ 1. "
                   "Left: the mean over the heads of each layer, one line per layer (colour: depth). Right: the largest "
                   "share of any head of the layer at each offset; a head fixed on one offset (such as the previous "
                   "piece, d = 1) is one bright cell.", "positional_profile", inputs=("positional_profile",)),
        FigureSpec("beyond_head_roles", "Head roles (beyond the paper)",
                   "Each head labelled by the first criterion it meets, in this order (thresholds: aggregate.roles, "
                   "defaults in brackets): sink, null share ≥ sink_null_share (0.9); positional, one offset i − j takes "
                   "≥ positional_share (0.5) of its non-null attention; syntactic, dependency alignment (either "
                   "direction) ≥ syntactic_ratio (3) × the share of piece pairs whose words are related; broad, mean "
                   "entropy in the upper broad_entropy_quantile (0.75) quantile of all heads; else mixed. "
                   "head_roles.parquet has every criterion as its own column. White dots: heads whose mean attention "
                   "to the first position exceeds ε (sink_rate_epsilon, 0.3); their share of all heads is the "
                   "attention sink rate of Gu et al. (2024), \"When Attention Sink Emerges in Language Models\" "
                   "(finding sink_rate).", "head_roles_map", inputs=("head_roles",)),
    )

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.positional_offsets else "attend.positional_offsets is 0"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        B, H, T, _ = layer.att.shape
        D = ctx.cfg.positional_offsets
        K = min(D, T - 1)  # offsets a batch of T pieces can have; the rest are 0
        j, valid = offset_index(ctx, K)
        at_offset = layer.att.gather(-1, j.expand(B, H, T, K)) * valid  # [B, H, T, K]: α_i,i−d where i − d ≥ 1
        per_sentence = torch.nn.functional.pad(at_offset.sum(2), (0, D - K))  # [B, H, D]; the engine adds over B
        return {"positional_offset": per_sentence.to(ctx.sum_dtype)}

    def ratios(self, get) -> dict:
        share = shares(get("positional_offset"), get("mass"))  # [..., D]
        defined = ~np.isnan(share).all(-1)
        best = np.where(defined, np.nan_to_num(share, nan=-1.0).argmax(-1) + 1.0, np.nan)
        return {"previous_piece_share": share[..., 0],
                "max_offset_share": np.where(defined, np.nan_to_num(share, nan=-1.0).max(-1), np.nan),
                "argmax_offset": best}

    def tables(self, sums, inputs) -> dict:
        share = shares(sums["positional_offset"], sums["mass"])  # [L, H, D]
        L, H, D = share.shape
        layer, head, offset = np.meshgrid(np.arange(L), np.arange(H), np.arange(1, D + 1), indexing="ij")
        profile = pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                                "offset": offset.ravel().astype(np.int32), "share": share.ravel()}, schema=SCHEMA)
        roles_cfg = inputs.get("roles") or RolesConfig()  # aggregate.roles, which build_tables passes
        return {"positional_profile": profile,
                "head_roles": roles.head_roles(inputs["head_metrics"], inputs["layer_metrics"], roles_cfg)}


METRIC = Positional()
