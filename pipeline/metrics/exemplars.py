"""Exemplar sentences (section 5.4, Tables 1-3; the head cards of Fig. 4): per head, the top-k
sentences by their largest non-null weight α_ij, with the attending piece's whole attention row so
that reports can draw the pattern without the model. Candidates are ranked, not added: `Sums`
keeps the top k per head (ties to the smaller sentence id)."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline.metrics.base import FigureSpec, Metric

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "rank": pl.Int32, "sentence_id": pl.Int64, "weight": pl.Float64,
          "attending_position": pl.Int64, "receiving_position": pl.Int64, "attention_row": pl.List(pl.Float64),
          "attending_piece": pl.String, "attending_char_start": pl.Int64, "attending_char_end": pl.Int64,
          "receiving_piece": pl.String, "receiving_char_start": pl.Int64, "receiving_char_end": pl.Int64,
          "text": pl.String, "n_pieces": pl.UInt32}


class Exemplars(Metric):
    name = "exemplars"
    order = 80
    description = "Per head, the top-k sentences by their largest non-null weight, with the attending piece's row."
    table_schemas = {"exemplars": SCHEMA}
    norm_weighting = False  # the sentences and their rows of attention, as the paper shows them
    figures = (FigureSpec(
        "fig04_head_cards", "Head cards (Fig. 4)",
        "The most position-focused head (lowest variability), the most diffuse (highest entropy) and the one with the "
        "largest mean distance, each with its aggregate metrics and its whole attention pattern on its top exemplar "
        "sentence (rows attend, columns receive; square-root colour scale, so diffuse attention stays visible; column 0 "
        "is the null position). Orange circles: pairs of pieces whose words are in a dependency relation; the head's "
        "dependency alignment is the share of its non-null attention on such pairs, over the corpus and on this "
        "sentence. Red square: the sentence's largest non-null weight, which ranked it.", "head_cards",
        inputs=("head_metrics", "exemplars", "tokens", "patterns")),)

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

    def tables(self, sums, inputs) -> dict:
        ex = sums.exemplars
        L, H, k = ex["value"].shape
        layer, head, rank = np.meshgrid(np.arange(L), np.arange(H), np.arange(k), indexing="ij")
        rows = (pl.Series(ex["row"].reshape(L * H * k, -1).tolist(), dtype=pl.List(pl.Float64)) if "row" in ex
                else pl.Series([None] * (L * H * k), dtype=pl.List(pl.Float64)))
        df = pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                           "rank": rank.ravel().astype(np.int32), "sentence_id": ex["sentence_id"].ravel().astype(np.int64),
                           "weight": ex["value"].ravel(), "attending_position": ex["i"].ravel().astype(np.int64),
                           "receiving_position": ex["j"].ravel().astype(np.int64), "attention_row": rows}
                          ).filter(pl.col("weight") > -np.inf)
        ids = pl.Series(df["sentence_id"].unique().sort().to_list(), dtype=pl.Int64).implode()
        # lazy scans (the exemplar pool included): only these sentences are read
        tokens = inputs["pool_tokens"].filter(pl.col("sentence_id").is_in(ids)).collect(engine="streaming")
        sentences = inputs["pool_sentences"].filter(pl.col("sentence_id").is_in(ids)).collect(engine="streaming")
        pieces = tokens.select("sentence_id", "position", "piece", "char_start", "char_end")
        for role in ("attending", "receiving"):
            df = df.join(pieces.rename({"position": f"{role}_position", "piece": f"{role}_piece",
                                        "char_start": f"{role}_char_start", "char_end": f"{role}_char_end"}),
                         on=["sentence_id", f"{role}_position"], how="left", maintain_order="left")
        df = df.join(sentences.select("sentence_id", "text"), on="sentence_id", how="left", maintain_order="left")
        lengths = tokens.group_by("sentence_id").agg(n_pieces=pl.len())
        df = df.join(lengths, on="sentence_id", how="left", maintain_order="left")
        df = df.with_columns(attention_row=pl.col("attention_row").list.head(pl.col("n_pieces")))  # trim the padding
        return {"exemplars": df}


METRIC = Exemplars()
