"""The analysis part of positional: ratio columns, tables. Its definition and device part:
pipeline/metrics/positional.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis import roles
from pipeline.analysis.base import Analysis, ratio
from pipeline.config import RolesConfig

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "offset": pl.Int32, "share": pl.Float64}


def offset_profile(get) -> tuple[np.ndarray, np.ndarray]:
    """The offset sums [..., D] (decoder) or [..., 2D] (encoder: d = 1..D, then −1..−D) and their offsets d."""
    left = get("positional.positional_offset")
    try:
        right = get("positional.positional_offset_right")
    except KeyError:  # a causal model's sums have no offsets to the right
        right = None
    D = left.shape[-1]
    offsets = np.arange(1, D + 1)
    if right is None:
        return left, offsets
    return np.concatenate([left, right], -1), np.concatenate([offsets, -offsets])


def shares(offset: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """[..., D] offset sums / [...] mass: NaN where the mass is 0."""
    return ratio(offset, np.asarray(mass)[..., None])


class PositionalAnalysis(Analysis):
    name = "positional"
    order = 90
    columns = ("previous_piece_share", "max_offset_share", "argmax_offset")
    table_schemas = {"positional_profile": SCHEMA, "head_roles": roles.SCHEMA}

    def ratios(self, get) -> dict:
        sums, offsets = offset_profile(get)
        share = shares(sums, get("attention_mass.mass"))  # [..., D or 2D]
        defined = ~np.isnan(share).all(-1)
        best = np.where(
            defined, offsets[np.nan_to_num(share, nan=-1.0).argmax(-1)].astype(float), np.nan
        )
        return {
            "previous_piece_share": share[..., 0],
            "max_offset_share": np.where(defined, np.nan_to_num(share, nan=-1.0).max(-1), np.nan),
            "argmax_offset": best,
        }

    def tables(self, sums, inputs) -> dict:
        offset_sums, offsets = offset_profile(lambda k: sums[k])
        share = shares(offset_sums, sums["attention_mass.mass"])  # [L, H, D or 2D]
        L, H, _ = share.shape
        layer, head, offset = np.meshgrid(np.arange(L), np.arange(H), offsets, indexing="ij")
        profile = pl.DataFrame(
            {
                "layer": layer.ravel().astype(np.int32),
                "head": head.ravel().astype(np.int32),
                "offset": offset.ravel().astype(np.int32),
                "share": share.ravel(),
            },
            schema=SCHEMA,
        )
        roles_cfg = (
            inputs.get("roles") or RolesConfig()
        )  # aggregate.roles, which build_tables passes
        return {
            "positional_profile": profile,
            "head_roles": roles.head_roles(
                inputs["head_metrics"], inputs["layer_metrics"], roles_cfg
            ),
        }


ANALYSIS = PositionalAnalysis()
