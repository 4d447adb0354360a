"""Exemplar sentences (section 5.4, Tables 1-3; the head cards of Fig. 4): per head, the top-k
sentences by their largest non-null weight α_ij, with the attending piece's whole attention row so
that reports can draw the pattern without the model. Candidates are ranked, not added: `Sums`
keeps the top k per head (ties to the smaller sentence id)."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class Exemplars(DevicePart):
    name = "exemplars"
    norm_weighting = False  # the sentences and their rows of attention, as the paper shows them

    def reduce_layer(self, layer) -> dict:
        B, H, T, _ = layer.att.shape
        best, where = layer.nonnull.reshape(B, H, -1).max(-1)
        i = where // T
        out = {"ex_value": best, "ex_i": i, "ex_j": where % T}
        width = layer.batch.row_width
        if width:  # the attending piece's whole row
            row = torch.gather(layer.att, 2, i[:, :, None, None].expand(B, H, 1, T))[:, :, 0]
            out["ex_row"] = torch.nn.functional.pad(row, (0, width - T))
        return out


METRIC = Exemplars()
