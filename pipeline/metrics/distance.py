"""Mean attention distance (Eq. 6, Fig. 11): the attention-weighted mean of |i − j| over non-null
attention (i − j for a causal model, where j ≤ i), per head and per layer, and how it relates to
entropy and dependency alignment. The sign of i − j is kept in the positional profile."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class Distance(DevicePart):
    name = "distance"
    provides = ("distance",)
    requires = ("attention_mass.mass",)

    def pair_features(self, batch) -> dict:
        i, j = batch.idx[:, None], batch.idx[None, :]
        return {"distance": (i - j).abs().to(torch.float32)[None] * batch.nonnull}


METRIC = Distance()
