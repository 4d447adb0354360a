"""Attention variability (Eq. 5, footnote 3; Fig. 10): how much a head's attention over the first N
positions deviates from its corpus mean ᾱ_ij, scaled to [0, 1]. Low: position-based heads; high:
content-dependent heads. Exact in two passes: ᾱ (the mean over the sentences that reach row i) is
computed in a first pass over the first N pieces of every sentence (causal attention there depends
on nothing later); the main pass sums |α_ij − ᾱ_ij|. N = 0 disables the metric. An encoder's window
holds both directions: rows i < N attending to every non-null j < N. ᾱ_ij is the mean over the sentences
in which (i, j) is a non-null pair (for a decoder, 1 ≤ j ≤ i: those that reach i; for an encoder, those
that reach i and j with neither a special piece: a short sentence's [SEP] lies in the window)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.metrics.base import Claim, FigureSpec, Finding, Metric, layer_names, mean_in_layers, pearson, ratio



def window_mask(batch, N: int) -> torch.Tensor:
    """[B, N, N]: the non-null pairs of the first N pieces (decoders: rows 1 ≤ i < N inside the sentence, 1 ≤ j ≤ i)."""
    return batch.nonnull[:, :N, :N].to(torch.float32)


class Variability(Metric):
    name = "variability"
    order = 50
    description = "Σ |α_ij − ᾱ_ij| / (2 Σ α_ij) over the non-null pairs of rows i < N, j < N (decoders: 1 ≤ j ≤ i)."
    columns = ("variability",)
    raw_columns = ("var_abs_dev", "var_mass")
    figures = (FigureSpec(
        "fig10_variability", "Attention variability (Fig. 10)",
        "Eq. 5 over the first N positions of each sentence (footnote 3): mean absolute deviation of α_ij from its corpus "
        "mean ᾱ_ij, scaled to [0, 1]. Low: position-based heads; high: content-dependent heads.", "head_heatmap",
        options={"metric": "variability", "title": "Attention variability", "label": "variability"}),)

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.variability_positions else "attend.variability_positions is 0"

    def first_pass_positions(self, attend_cfg) -> int:
        return attend_cfg.variability_positions

    def first_pass_layer(self, layer) -> dict:
        ctx, window = layer.batch, layer.batch.cfg.variability_positions
        N = min(window, ctx.T)
        out = torch.zeros(layer.H, window, window, dtype=ctx.sum_dtype, device=ctx.device)
        out[:, :N, :N] = (layer.att[:, :, :N, :N].float() * window_mask(ctx, N)[:, None]).to(ctx.sum_dtype).sum(0)
        return {"window_sum": out}

    def first_pass_batch(self, batch) -> dict:
        window = batch.cfg.variability_positions
        N = min(window, batch.T)
        pairs = torch.zeros(window, window, dtype=batch.sum_dtype, device=batch.device)
        pairs[:N, :N] = window_mask(batch, N).to(batch.sum_dtype).sum(0)  # sentences in which (i, j) is a non-null pair
        return {"window_pairs": pairs}

    def first_pass_result(self, sums) -> dict:
        total, pairs = sums["window_sum"], sums["window_pairs"][None, None]
        return {"window_mean": np.divide(total, pairs, out=np.zeros_like(total), where=pairs > 0)}

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        if "window_mean" not in layer.first_pass:
            raise PipelineError("variability needs its first pass (ᾱ) before the main pass")
        N = min(ctx.cfg.variability_positions, ctx.T)
        mask = window_mask(ctx, N)[:, None]
        win = layer.att[:, :, :N, :N] * mask
        mean = layer.first_pass["window_mean"][layer.index, :, :N, :N].float()
        return {"var_abs_dev": ((win - mean[None]).abs() * mask).to(ctx.sum_dtype).sum((2, 3)),
                "var_mass": win.to(ctx.sum_dtype).sum((2, 3))}

    def ratios(self, get) -> dict:
        return {"variability": ratio(get("var_abs_dev"), 2 * get("var_mass"))}

    def findings(self, heads, layers, sums) -> list[Finding]:
        return [pearson(heads, "variability", "dep_align_either", "r_variability_dep_align")]

    def claims(self, c) -> list[Claim]:
        heads, early = c.tables["head_metrics"], c.first(2)
        first, rest = mean_in_layers(heads, "variability", early), mean_in_layers(heads, "variability", set(range(c.L)) - early)
        out = [Claim("early_layers_low_variability", "Many heads in the initial layers focus attention based on position "
                     "rather than content (low variability, Fig. 10), which may explain their low dependency alignment.",
                     f"mean variability over the heads of the first {len(early)} of {c.L} layers (scaled from 0-1 of 12) "
                     "is below the mean over the heads of the other layers", "lower in layers 0-1",
                     None if first is None or rest is None else f"{layer_names(early)}: {first:.3g}; other layers: {rest:.3g}",
                     first is not None and rest is not None and first < rest, first is not None and rest is not None)]
        # [0, 0.014], 0.004 + 0.01: a head attending to the previous piece hardly varies with the content; a corpus
        # moves its tiny deviations by thousandths, and 0.014 is still far below a content-dependent head.
        out.append(c.named_head("l4h11_most_position_focused", "Layer 4, head 11 is the most position-focused head "
                                "(variability 0.004).", "variability", (4, 11), "(4, 11): 0.004", 0.0, 0.014, highest=False,
                                paper_number=0.004))
        return out


METRIC = Variability()
