"""The analysis part of token_share: tables. Its definition and device part: pipeline/metrics/token_share.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.base import Analysis, ratio
from pipeline.data.alignment import is_special_tag
from pipeline.metrics.token_share import ALL, COMMA_OR_PERIOD, OTHER

SCHEMA = {
    "layer": pl.Int32,
    "head": pl.Int32,
    "token": pl.String,
    "mean_attention": pl.Float64,
    "mean_weighted_norm": pl.Float64,
    "mean_value_norm": pl.Float64,
    "sentences": pl.Int64,
}


def token_names(pos_vocab: list[str]) -> list[str]:
    """The token of each category index: the tags of pos_vocab (only the special ones are ever filled), then
    ". or ,", "other", "all"."""
    return list(pos_vocab) + [COMMA_OR_PERIOD, OTHER, ALL]


class TokenShareAnalysis(Analysis):
    name = "token_share"
    order = 12
    table_schemas = {"token_share": SCHEMA}

    def tables(self, sums, inputs) -> dict:
        attention = np.asarray(sums["token_share.ts_attention"], dtype=np.float64)  # [L, H, C]
        L, H, C = attention.shape
        names = token_names(inputs["pos_vocab"])
        if len(names) != C:
            raise ValueError(f"token_share sums have {C} tokens, the vocabulary {len(names)}")
        sentences = float(np.asarray(sums["token_share.ts_sentences"]).sum())
        present = np.asarray(sums["token_share.ts_sentences_with"], dtype=np.float64)  # [C]
        nan = np.full(attention.shape, np.nan)
        weighted = (
            ratio(sums["token_share.ts_weighted_norm"], sentences)
            if "token_share.ts_weighted_norm" in sums
            else nan
        )
        value = (
            ratio(sums["token_share.ts_value_norm"], present)
            if "token_share.ts_value_norm" in sums
            else nan
        )
        layer, head, c = np.meshgrid(np.arange(L), np.arange(H), np.arange(C), indexing="ij")
        df = pl.DataFrame(
            {
                "layer": layer.ravel().astype(np.int32),
                "head": head.ravel().astype(np.int32),
                "token": pl.Series(np.asarray(names, dtype=object)[c.ravel()], dtype=pl.String),
                "mean_attention": ratio(attention, sentences).ravel(),
                "mean_weighted_norm": np.asarray(weighted).ravel(),
                "mean_value_norm": np.asarray(value).ravel(),
                "sentences": np.broadcast_to(np.rint(present), (L, H, C)).ravel().astype(np.int64),
            },
            schema=SCHEMA,
        )
        kept = [
            n for k, n in enumerate(names) if present[k] > 0 and (k >= C - 3 or is_special_tag(n))
        ]
        return {"token_share": df.filter(pl.col("token").is_in(kept))}


ANALYSIS = TokenShareAnalysis()
