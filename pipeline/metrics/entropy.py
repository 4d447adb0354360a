"""Attention entropy (Eq. 7, footnote 4; Fig. 12): the entropy of each piece's attention over
positions 1..i, renormalised without position 0, skipping pieces that put more than
attend.entropy_null_threshold (0.9) of their attention on position 0; the mean over pieces. Under norm
weighting the skip rule compares position 0's share of the norm-weighted row, α'_i0 / Σ_j α'_ij, with
the threshold (α_i0 itself is that share only when rows sum to 1)."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class Entropy(DevicePart):
    name = "entropy"
    provides = ("entropy_sum", "entropy_rows", "entropy_skipped")

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        nonnull, row_mass, null = layer.nonnull, layer.row_mass, layer.null_row_share
        plogp = torch.special.xlogy(nonnull, nonnull).sum(-1)
        safe = row_mass.clamp_min(1e-30)
        entropy = torch.log(safe) - plogp / safe
        rows = ctx.attending[:, None, :]
        skipped = rows & (null > ctx.cfg.entropy_null_threshold)
        counted = rows & ~skipped & (row_mass > 0)
        return {
            "entropy_sum": torch.where(counted, entropy, 0.0).to(ctx.sum_dtype).sum(2),
            "entropy_rows": counted.to(ctx.sum_dtype).sum(2),
            "entropy_skipped": skipped.to(ctx.sum_dtype).sum(2),
        }


METRIC = Entropy()
