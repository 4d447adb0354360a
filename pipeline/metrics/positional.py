"""Positional profile (beyond the paper): the share of each head's non-null attention at each offset
d = i − j, d = 1..D (attend.positional_offsets; 0 disables), and for an encoder also d = −1..−D (to
the right), over the same denominator as Eqs. 3-6 (`mass`: non-null pairs). Offset 0 (a piece with
itself) and attention to null pieces are not in the profile, so a head's shares sum to at most 1
(exactly 1 when D reaches the longest sentence and the head never attends to itself). From it: `previous_piece_share` (d = 1), `max_offset_share` and
`argmax_offset` (the offset with the largest share; the smallest such offset on a tie), the table
positional_profile.parquet, and the head roles (pipeline/analysis/roles.py, head_roles.parquet).

On the device: one gather of the diagonals α_i,i−d ([B, H, T, K], rows i, offsets d), masked to non-null
j = i − d inside the sentence, summed over rows: [B, H, D] per sentence for d = 1..D (positional_offset), and for an
encoder [B, H, D] for d = −1..−D (positional_offset_right), which the engine adds over the batch. Padding rows are
zeroed by the engine."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart


class Positional(DevicePart):
    name = "positional"
    provides = ("positional_offset", "positional_offset_right")
    requires = ("attention_mass.mass",)

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.positional_offsets else "attend.positional_offsets is 0"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        B, H, T, _ = layer.att.shape
        D = ctx.cfg.positional_offsets
        K = min(D, T - 1)  # offsets a batch of T pieces can have (each direction); the rest are 0
        j, valid = ctx.at_offsets(K)  # [B, T, K or 2K]
        at_offset = (
            layer.att.gather(-1, j[:, None].expand(B, H, T, -1)) * valid[:, None]
        )  # α_i,i−d at non-null j
        sums = at_offset.sum(2)  # [B, H, K or 2K]
        out = {
            "positional_offset": torch.nn.functional.pad(sums[..., :K], (0, D - K)).to(
                ctx.sum_dtype
            )
        }
        if not ctx.causal:
            out["positional_offset_right"] = torch.nn.functional.pad(sums[..., K:], (0, D - K)).to(
                ctx.sum_dtype
            )
        return out  # per sentence: the engine adds over B


METRIC = Positional()
