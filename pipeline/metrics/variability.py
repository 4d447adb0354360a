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
from pipeline.metrics._first_pass import FirstPass
from pipeline.metrics.base import DevicePart


def window_mask(batch, N: int) -> torch.Tensor:
    """[B, N, N]: the non-null pairs of the first N pieces (decoders: rows 1 ≤ i < N inside the sentence, 1 ≤ j ≤ i)."""
    return batch.nonnull[:, :N, :N].to(torch.float32)


class WindowMean(FirstPass):
    """ᾱ_ij = Σ α_ij / the number of sentences in which (i, j) is a non-null pair of the first N pieces: per sentence,
    its window of α and of pairs, padded to N × N (a batch's sentences may all be shorter than N)."""

    name = "variability"
    provides = ("window_sum", "window_pairs")

    def positions(self, attend_cfg) -> int:
        return attend_cfg.variability_positions

    def reduce_layer(self, layer) -> dict:
        ctx, window = layer.batch, layer.batch.cfg.variability_positions
        N = min(window, ctx.T)
        out = torch.zeros(ctx.B, layer.H, window, window, dtype=ctx.sum_dtype, device=ctx.device)
        out[:, :, :N, :N] = (layer.att[:, :, :N, :N].float() * window_mask(ctx, N)[:, None]).to(
            ctx.sum_dtype
        )
        return {"window_sum": out}

    def batch_sums(self, batch) -> dict:
        window = batch.cfg.variability_positions
        N = min(window, batch.T)
        pairs = torch.zeros(batch.B, window, window, dtype=batch.sum_dtype, device=batch.device)
        pairs[:, :N, :N] = window_mask(batch, N).to(
            batch.sum_dtype
        )  # 1 where (i, j) is a non-null pair
        return {"window_pairs": pairs}

    def result(self, sums) -> dict:
        total, pairs = sums["window_sum"], sums["window_pairs"][None, None]
        return {"window_mean": np.divide(total, pairs, out=np.zeros_like(total), where=pairs > 0)}


class Variability(DevicePart):
    name = "variability"
    provides = ("var_abs_dev", "var_mass")
    first_pass = WindowMean()  # ᾱ, before the main pass

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.variability_positions else "attend.variability_positions is 0"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        if "window_mean" not in layer.first_pass:
            raise PipelineError("variability needs its first pass (ᾱ) before the main pass")
        N = min(ctx.cfg.variability_positions, ctx.T)
        mask = window_mask(ctx, N)[:, None]
        win = layer.att[:, :, :N, :N] * mask
        mean = layer.first_pass["window_mean"][layer.index, :, :N, :N].float()
        return {
            "var_abs_dev": ((win - mean[None]).abs() * mask).to(ctx.sum_dtype).sum((2, 3)),
            "var_mass": win.to(ctx.sum_dtype).sum((2, 3)),
        }


METRIC = Variability()
