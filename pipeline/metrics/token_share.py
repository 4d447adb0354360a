"""Attention to special pieces and punctuation (beyond the paper; Clark et al. 2019, "What Does BERT Look
At?", Fig. 2): the share of ALL attention of the attending pieces — null pieces included — received by the
pieces of each tag, the special pieces ([CLS], [SEP], BOS) being tags of their own. Where the null
attention of Fig. 5 sets the null pieces apart, this shows how an encoder's attention splits between
[CLS], [SEP] and punctuation (Clark et al. find [SEP] takes much of it in the middle layers, as a
no-op), and for a decoder the share of its first piece's tag among the rest.

Per head: Σ_{i attending, j of the tag} α_ij / Σ_{i attending, all j} α_ij (the denominator is
attention_mass's mass_all)."""

from __future__ import annotations

import polars as pl
import torch

from pipeline.alignment import is_special_tag
from pipeline.metrics.base import FigureSpec, Metric
from pipeline.metrics.pos_share import share_tables

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "tag": pl.String, "share": pl.Float64}
BY_LAYER_SCHEMA = {"layer": pl.Int32, "tag": pl.String, "share": pl.Float64}


def shown_tags(tags) -> list[str]:
    """The tags the figure draws: the special pieces' and punctuation."""
    return sorted(t for t in set(tags) if is_special_tag(t)) + (["PUNCT"] if "PUNCT" in set(tags) else [])


class TokenShare(Metric):
    name = "token_share"
    order = 12
    description = ("Share of all attention (null pieces included) received by pieces of each tag; [CLS], [SEP] and BOS "
                   "are tags of their own (Clark et al. 2019, Fig. 2).")
    table_schemas = {"token_share": SCHEMA, "token_share_by_layer": BY_LAYER_SCHEMA}
    figures = (FigureSpec(
        "beyond_token_share", "Attention to special pieces and punctuation (beyond the paper)",
        "After Clark et al. (2019), \"What Does BERT Look At?\", Fig. 2: by layer, the share of all attention of the "
        "attending pieces, null pieces included, received by the special pieces the tokenizer adds ([CLS] and [SEP] for "
        "BERT; BOS when model.prepend_bos) and by punctuation (PUNCT), the mean over the heads of each layer (lines) and "
        "the spread over them (shaded: the lowest to the highest head). Fig. 5's null share sets the null pieces apart; "
        "this splits them.", "token_share", inputs=("token_share",)),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        every_piece = torch.nn.functional.one_hot(ctx.batch.pos, ctx.n_pos).to(torch.float32) * ctx.in_sentence[..., None]
        return {"all_to": torch.einsum("bhj,bjp->bhp", layer.received, every_piece).to(ctx.sum_dtype)}

    def tables(self, sums, inputs) -> dict:
        per_head, by_layer = share_tables(sums["all_to"], sums["mass_all"], inputs["pos_vocab"], "tag", inputs["tokens"], "pos")
        return {"token_share": per_head, "token_share_by_layer": by_layer}


METRIC = TokenShare()
