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

Not the pooled rate (pipeline/roles.py, finding `sink_rate_pooled`): that thresholds each head's null share pooled
over the corpus (rows i ≥ 1 only, null pieces as attend.null_pieces says), once per head, not once per sequence.

Under norm weighting (α'_tj = α_tj ‖f(x_j)‖), whose rows do not sum to 1, the score uses the first token's share of
each row, α'_t0 / Σ_j α'_tj; on attention that share is A[t, 0] itself."""

from __future__ import annotations

import torch

from pipeline.metrics.base import FigureSpec, Finding, Metric, ratio


class SinkRate(Metric):
    name = "sink_rate"
    order = 92
    description = ("Gu et al. (2024): per sequence, a head is a sink when the first token's attention averaged over all "
                   "query rows exceeds attend.sink_epsilon; sink_frequency: the share of sequences on which it is one.")
    columns = ("sink_frequency",)
    raw_columns = ("sink_sequences", "sink_sequence_count")
    figures = (FigureSpec(
        "beyond_sink_rate", "Attention sink rate (Gu et al. 2024)",
        "As Gu et al. (2024), \"When Attention Sink Emerges in Language Models\": on each sentence, a head's score is the "
        "attention to the first token (position 0) averaged over all query rows, the first token's own row included; "
        "the head is a sink on that sentence when the score exceeds ε (attend.sink_epsilon, 0.3). Each cell: the share "
        "of sentences on which the head is a sink (sink_frequency). Their sink rate, the mean over heads and sentences, "
        "is the finding sink_rate; the pooled variant in the head roles (white dots) thresholds each head's null share "
        "over the whole corpus instead.", "head_heatmap",
        options={"metric": "sink_frequency", "title": "Share of sentences on which each head is a sink",
                 "label": "sink frequency", "vmin": 0, "vmax": 1}),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        first = layer.att[..., 0]  # [B, H, T]: A[t, 0]; padding rows are zero
        if layer.prefix:  # norm weighting: the first token's share of each row
            total = layer.att.sum(-1)
            first = torch.where(total > 0, first / total.clamp_min(1e-30), 0.0)
        score = first.sum(-1) / ctx.batch.lengths[:, None]  # [B, H]: the mean over the sentence's query rows
        sink = score > ctx.cfg.sink_epsilon
        return {"sink_sequences": sink.to(ctx.sum_dtype), "sink_sequence_count": torch.ones_like(sink, dtype=ctx.sum_dtype)}

    def ratios(self, get) -> dict:
        return {"sink_frequency": ratio(get("sink_sequences"), get("sink_sequence_count"))}

    def findings(self, heads, layers, sums) -> list[Finding]:
        sinks, count = sums["sink_sequences"], sums["sink_sequence_count"]
        sequences = int(round(float(count.reshape(-1)[0]))) if count.size else 0
        return [Finding("sink_rate", float(ratio(sinks.sum(), count.sum())), n=sequences)]


METRIC = SinkRate()
