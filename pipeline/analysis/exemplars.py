"""The analysis part of exemplars: tables. Its definition and device part: pipeline/metrics/exemplars.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.base import Analysis

SCHEMA = {
    "layer": pl.Int32,
    "head": pl.Int32,
    "rank": pl.Int32,
    "sentence_id": pl.Int64,
    "weight": pl.Float64,
    "attending_position": pl.Int64,
    "receiving_position": pl.Int64,
    "attention_row": pl.List(pl.Float64),
    "attending_piece": pl.String,
    "attending_char_start": pl.Int64,
    "attending_char_end": pl.Int64,
    "receiving_piece": pl.String,
    "receiving_char_start": pl.Int64,
    "receiving_char_end": pl.Int64,
    "text": pl.String,
    "n_pieces": pl.UInt32,
}


class ExemplarsAnalysis(Analysis):
    name = "exemplars"
    order = 80
    table_schemas = {"exemplars": SCHEMA}

    def tables(self, sums, inputs) -> dict:
        ex = sums.exemplars
        L, H, k = ex["value"].shape
        layer, head, rank = np.meshgrid(np.arange(L), np.arange(H), np.arange(k), indexing="ij")
        rows = (
            pl.Series(ex["row"].reshape(L * H * k, -1).tolist(), dtype=pl.List(pl.Float64))
            if "row" in ex
            else pl.Series([None] * (L * H * k), dtype=pl.List(pl.Float64))
        )
        df = pl.DataFrame(
            {
                "layer": layer.ravel().astype(np.int32),
                "head": head.ravel().astype(np.int32),
                "rank": rank.ravel().astype(np.int32),
                "sentence_id": ex["sentence_id"].ravel().astype(np.int64),
                "weight": ex["value"].ravel(),
                "attending_position": ex["i"].ravel().astype(np.int64),
                "receiving_position": ex["j"].ravel().astype(np.int64),
                "attention_row": rows,
            }
        ).filter(pl.col("weight") > -np.inf)
        ids = pl.Series(df["sentence_id"].unique().sort().to_list(), dtype=pl.Int64).implode()
        # lazy scans (the exemplar pool included): only these sentences are read
        tokens = (
            inputs["pool_tokens"]
            .filter(pl.col("sentence_id").is_in(ids))
            .collect(engine="streaming")
        )
        sentences = (
            inputs["pool_sentences"]
            .filter(pl.col("sentence_id").is_in(ids))
            .collect(engine="streaming")
        )
        pieces = tokens.select("sentence_id", "position", "piece", "char_start", "char_end")
        for role in ("attending", "receiving"):
            df = df.join(
                pieces.rename(
                    {
                        "position": f"{role}_position",
                        "piece": f"{role}_piece",
                        "char_start": f"{role}_char_start",
                        "char_end": f"{role}_char_end",
                    }
                ),
                on=["sentence_id", f"{role}_position"],
                how="left",
                maintain_order="left",
            )
        df = df.join(
            sentences.select("sentence_id", "text"),
            on="sentence_id",
            how="left",
            maintain_order="left",
        )
        lengths = tokens.group_by("sentence_id").agg(n_pieces=pl.len())
        df = df.join(lengths, on="sentence_id", how="left", maintain_order="left")
        df = df.with_columns(
            attention_row=pl.col("attention_row").list.head(pl.col("n_pieces"))
        )  # trim the padding
        return {"exemplars": df}


ANALYSIS = ExemplarsAnalysis()
