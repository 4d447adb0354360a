"""Attention entropy (Eq. 7, footnote 4; Fig. 12): the entropy of each piece's attention over
positions 1..i, renormalised without position 0, skipping pieces that put more than
attend.entropy_null_threshold (0.9) of their attention on position 0; the mean over pieces. Under norm
weighting the skip rule compares position 0's share of the norm-weighted row, α'_i0 / Σ_j α'_ij, with
the threshold (α_i0 itself is that share only when rows sum to 1)."""

from __future__ import annotations

import math

import torch

from pipeline.metrics.base import Claim, FigureSpec, Metric, layer_names, mean_in_layers, ratio



class Entropy(Metric):
    name = "entropy"
    order = 70
    description = "Mean over attending pieces of the entropy of α_i,1..i renormalised (rows with α_i0 > threshold skipped)."
    columns = ("mean_entropy",)
    raw_columns = ("entropy_rows", "entropy_skipped")
    figures = (FigureSpec(
        "fig12_entropy", "Attention entropy (Fig. 12)",
        "Eq. 7, footnote 4: entropy of each piece's attention renormalised without the null pieces (position 0; an "
        "encoder's [CLS] and [SEP]), skipping pieces that put more than 90% on them; mean over pieces.", "head_heatmap",
        options={"metric": "mean_entropy", "title": "Mean attention entropy", "label": "entropy (nats)"}),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        nonnull, row_mass, null = layer.nonnull, layer.row_mass, layer.null_row_share
        plogp = torch.special.xlogy(nonnull, nonnull).sum(-1)
        safe = row_mass.clamp_min(1e-30)
        entropy = torch.log(safe) - plogp / safe
        rows = ctx.attending[:, None, :]
        skipped = rows & (null > ctx.cfg.entropy_null_threshold)
        counted = rows & ~skipped & (row_mass > 0)
        return {"entropy_sum": torch.where(counted, entropy, 0.0).to(ctx.sum_dtype).sum(2),
                "entropy_rows": counted.to(ctx.sum_dtype).sum(2),
                "entropy_skipped": skipped.to(ctx.sum_dtype).sum(2)}

    def ratios(self, get) -> dict:
        return {"mean_entropy": ratio(get("entropy_sum"), get("entropy_rows"))}

    def claims(self, c) -> list[Claim]:
        heads, early = c.tables["head_metrics"], c.first(2)
        first, rest = mean_in_layers(heads, "mean_entropy", early), mean_in_layers(heads, "mean_entropy", set(range(c.L)) - early)
        out = [Claim("early_layers_high_entropy", "As Figure 12 shows, many heads in layers 0 and 1 have high entropy (e.g., Figure 4, center)",
                     f"mean entropy over the heads of the first {len(early)} of {c.L} layers (scaled from 0-1 of 12) is "
                     "above the mean over the heads of the other layers", "higher in layers 0-1",
                     None if first is None or rest is None else f"{layer_names(early)}: {first:.3g}; other layers: {rest:.3g}",
                     first is not None and rest is not None and first > rest, first is not None and rest is not None,
                     source="§5.3.3, p. 8")]
        # "One of the lowest": within the lowest tenth of heads (15 of 144). ±0.15 nats around 0.41: how diffuse a
        # repeated-phrase head is depends on how often the corpus repeats phrases, and the paper does not name its
        # logarithm's base (0.41 bits is 0.28 nats, inside the band).
        lowest = math.ceil(0.1 * c.tables["head_metrics"].height)
        out.append(c.named_head("l5h1_low_entropy", "layer 5, head 1 (Figure 4, right), which has … one of the lowest "
                                "mean entropy scores (0.41).", "mean_entropy", (5, 1), "(5, 1): 0.41", 0.26, 0.56,
                                highest=False, top=lowest, paper_number=0.41, source="§5.3.3, p. 8"))
        return out


METRIC = Entropy()
