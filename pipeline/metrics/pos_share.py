"""Attention to and from each part of speech (Eq. 3; Figs. 6-7, A.1-A.2): the share of a head's
non-null attention received by (`to`) or sent from (`from`) pieces of each tag. A word split into
pieces gives its tag to every piece (footnote 6)."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class PosShare(DevicePart):
    name = "pos_share"
    provides = ("pos_to", "pos_from")
    requires = ("attention_mass.mass",)

    def reduce_layer(self, layer) -> dict:
        ctx, sum_dtype = layer.batch, layer.batch.sum_dtype
        sent = layer.row_mass * ctx.attending_f[:, None, :]
        return {
            "pos_to": torch.einsum("bhj,bjp->bhp", layer.received, ctx.pos_onehot).to(sum_dtype),
            "pos_from": torch.einsum("bhi,bip->bhp", sent, ctx.pos_onehot).to(sum_dtype),
        }


METRIC = PosShare()
