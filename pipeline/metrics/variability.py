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
        heads, layers, early = c.tables["head_metrics"], c.tables["layer_metrics"], c.first(2)
        others = set(range(c.L)) - early
        first, rest = mean_in_layers(heads, "variability", early), mean_in_layers(heads, "variability", others)
        # The sentence says two things: alignment is low in the initial layers (below the other layers', from the
        # layer means of Fig. 8), and their heads are position-based (variability below the other layers' heads').
        low_align, rest_align = mean_in_layers(layers, "dep_align_either", early), mean_in_layers(layers, "dep_align_either", others)
        ok = None not in (first, rest, low_align, rest_align)
        out = [Claim("early_layers_low_variability", "One possible explanation for the low alignment in the initial "
                     "layers is that many heads in these layers focus attention based on position rather than content, "
                     "according to the attention variability (Eq. 5) results in Figure 10.",
                     f"over the first {len(early)} of {c.L} layers (scaled from 0-1 of 12) against the other layers: the "
                     "mean dependency alignment of the layers is lower, and the mean variability of the heads is lower",
                     "lower in layers 0-1",
                     f"{layer_names(early)} vs other layers: alignment {low_align:.3g} vs {rest_align:.3g}; variability "
                     f"{first:.3g} vs {rest:.3g}" if ok else None,
                     ok and low_align < rest_align and first < rest, ok, source="§5.3.2, p. 6")]
        # [0, 0.014], 0.004 + 0.01: a head attending to the previous piece hardly varies with the content; a corpus
        # moves its tiny deviations by thousandths, and 0.014 is still far below a content-dependent head.
        out.append(c.named_head("l4h11_most_position_focused", "layer 4, head 11 (Figure 1) … is also the most "
                                "position-focused (Variability = 0.004).", "variability", (4, 11), "(4, 11): 0.004", 0.0,
                                0.014, highest=False, paper_number=0.004, source="§5.3.2, p. 7"))
        return out


METRIC = Variability()
