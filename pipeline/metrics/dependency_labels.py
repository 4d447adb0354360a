"""Attention to dependency labels (Fig. 9): the share of non-null attention received by pieces of each
dependency label, per head and per layer."""

from __future__ import annotations

import polars as pl
import torch

from pipeline.metrics.base import FigureSpec, Metric
from pipeline.metrics.pos_share import share_table



class DependencyLabels(Metric):
    name = "dependency_labels"
    order = 40
    description = "Share of non-null attention received by pieces of each dependency label."
    table_schemas = {"dep_share": {"layer": pl.Int32, "head": pl.Int32, "label": pl.String, "share": pl.Float64},
                     "dep_share_by_layer": {"layer": pl.Int32, "label": pl.String, "share": pl.Float64}}
    figures = (FigureSpec(
        "fig09_dependency_labels", "Attention to dependency labels by layer (Fig. 9)",
        "Share of each layer's non-null attention received by pieces of each dependency label (absolute, on a square-root "
        "colour scale). Above the line: every label section 5.3.2 discusses (subjects: nsubj, nsubjpass, csubj, "
        "csubjpass; aux, cc, det, expl, neg), however rare; below it, the most-attended other labels.",
        "dependency_labels", inputs=("dep_share_by_layer",)),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        return {"dep_to": torch.einsum("bhj,bjd->bhd", layer.received, ctx.dep_onehot).to(ctx.sum_dtype).sum(0)}

    def tables(self, sums, inputs) -> dict:
        vocab = inputs["dep_vocab"]
        seen = pl.col("label").is_in(inputs["tokens"].select(pl.col("dep").unique()).collect(engine="streaming")["dep"].implode())
        by_layer = share_table(sums["dep_to"].sum(1, keepdims=True), sums["mass"].sum(1, keepdims=True), vocab, "label")
        return {"dep_share": share_table(sums["dep_to"], sums["mass"], vocab, "label").filter(seen),
                "dep_share_by_layer": by_layer.drop("head").filter(seen)}


METRIC = DependencyLabels()
