"""Attention to dependency labels (Fig. 9): the share of non-null attention received by pieces of each
dependency label, per head and per layer."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class DependencyLabels(DevicePart):
    name = "dependency_labels"
    provides = ("dep_to",)
    requires = ("attention_mass.mass",)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        return {
            "dep_to": torch.einsum("bhj,bjd->bhd", layer.received, ctx.dep_onehot).to(ctx.sum_dtype)
        }


METRIC = DependencyLabels()
