"""Null attention (Fig. 5): the share of attention that goes to the null pieces — position 0, the first
piece (or the BOS token when one is prepended), for a decoder; the special pieces ([CLS], [SEP]) for an
encoder (attend.null_pieces) — which the paper treats as a no-op and leaves out of every other metric."""

from __future__ import annotations

from pipeline.metrics.base import DevicePart


class NullAttention(DevicePart):
    name = "null_attention"
    provides = ("mass_null",)
    requires = ("attention_mass.mass_all",)

    def pair_features(self, batch) -> dict:
        return {"mass_null": batch.causal_rows & batch.null[:, None, :]}


METRIC = NullAttention()
