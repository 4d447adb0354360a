"""Attention sink rate as Gu et al. (2024, "When Attention Sink Emerges in Language Models", section 3) define it.

Per sequence (a sentence as the model reads it: BOS, [CLS] and [SEP] included) of n pieces and per head, the score
is the first token's attention averaged over ALL query rows, the first token's own row included:
    score = (1/n) Σ_{t=0}^{n−1} A[t, 0]
and the head is a sink on that sequence when score > ε (attend.sink_epsilon, their 0.3). The sink rate is the
indicator averaged over (layer, head), then over sequences. Every sequence has every head, so that is
Σ_sequences Σ_(layer, head) 1[score > ε] / (sequences × L × H): two additive sums per head, the number of sequences on
which it is a sink (`sink_sequences`) and the number of sequences (`sink_sequence_count`), reduced on the device per
sentence. Per head, their ratio is `sink_frequency` (the share of sequences on which the head is a sink); per layer,
the layer's sink rate; the finding `sink_rate`, over all heads, is Gu et al.'s.

Not the pooled rate (pipeline/analysis/roles.py, finding `sink_rate_pooled`): that thresholds each head's null share pooled
over the corpus (rows i ≥ 1 only, null pieces as attend.null_pieces says), once per head, not once per sequence.

Under norm weighting (α'_tj = α_tj ‖f(x_j)‖), whose rows do not sum to 1, the score uses the first token's share of
each row, α'_t0 / Σ_j α'_tj; on attention that share is A[t, 0] itself."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class SinkRate(DevicePart):
    name = "sink_rate"
    provides = ("sink_sequences", "sink_sequence_count")

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        first = layer.att[..., 0]  # [B, H, T]: A[t, 0]; padding rows are zero
        if layer.prefix:  # norm weighting: the first token's share of each row
            total = layer.att.sum(-1)
            first = torch.where(total > 0, first / total.clamp_min(1e-30), 0.0)
        score = (
            first.sum(-1) / ctx.batch.lengths[:, None]
        )  # [B, H]: the mean over the sentence's query rows
        sink = score > ctx.cfg.sink_epsilon
        return {
            "sink_sequences": sink.to(ctx.sum_dtype),
            "sink_sequence_count": torch.ones_like(sink, dtype=ctx.sum_dtype),
        }


METRIC = SinkRate()
