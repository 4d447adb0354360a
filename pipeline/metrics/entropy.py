"""Attention entropy (Eq. 7, footnote 4; Fig. 12): the entropy of each piece's attention over
positions 1..i, renormalised without position 0, skipping pieces that put more than
attend.entropy_null_threshold (0.9) of their attention on position 0; the mean over pieces."""

from __future__ import annotations

import torch

from pipeline.metrics.base import FigureSpec, Metric, ratio



class Entropy(Metric):
    name = "entropy"
    order = 70
    description = "Mean over attending pieces of the entropy of α_i,1..i renormalised (rows with α_i0 > threshold skipped)."
    columns = ("mean_entropy",)
    raw_columns = ("entropy_rows", "entropy_skipped")
    figures = (FigureSpec(
        "fig12_entropy", "Attention entropy (Fig. 12)",
        "Eq. 7, footnote 4: entropy of each piece's attention renormalised without position 0, skipping pieces that put "
        "more than 90% on position 0; mean over pieces.", "head_heatmap",
        options={"metric": "mean_entropy", "title": "Mean attention entropy", "label": "entropy (nats)"}),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        nonnull, row_mass, null = layer.nonnull, layer.row_mass, layer.att[..., 0]
        plogp = torch.special.xlogy(nonnull, nonnull).sum(-1)
        safe = row_mass.clamp_min(1e-30)
        entropy = torch.log(safe) - plogp / safe
        rows = ctx.attending[:, None, :]
        skipped = rows & (null > ctx.cfg.entropy_null_threshold)
        counted = rows & ~skipped & (row_mass > 0)
        return {"entropy_sum": torch.where(counted, entropy, 0.0).to(ctx.sum_dtype).sum((0, 2)),
                "entropy_rows": counted.to(ctx.sum_dtype).sum((0, 2)),
                "entropy_skipped": skipped.to(ctx.sum_dtype).sum((0, 2))}

    def ratios(self, get) -> dict:
        return {"mean_entropy": ratio(get("entropy_sum"), get("entropy_rows"))}


METRIC = Entropy()
