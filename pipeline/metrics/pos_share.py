"""Attention to and from each part of speech (Eq. 3; Figs. 6-7, A.1-A.2): the share of a head's
non-null attention received by (`to`) or sent from (`from`) pieces of each tag. A word split into
pieces gives its tag to every piece (footnote 6)."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline.metrics.base import Claim, FigureSpec, Metric, ranked, ratio

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "direction": pl.String, "tag": pl.String, "share": pl.Float64,
          "tag_frequency": pl.Float64}


def share_table(values: np.ndarray, mass: np.ndarray, labels: list[str], label_name: str) -> pl.DataFrame:
    """[L, H, P] sums / [L, H] mass → long table (layer, head, label, share)."""
    L, H, P = values.shape
    share = ratio(values, mass[..., None])
    layer, head, label = np.meshgrid(np.arange(L), np.arange(H), np.arange(P), indexing="ij")
    return pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                         label_name: pl.Series(np.asarray(labels, dtype=object)[label.ravel()], dtype=pl.String),
                         "share": share.ravel()})


def doubled_tags(pos: pl.DataFrame, direction: str) -> tuple[int, int]:
    """Tags (excluding SPACE/BOS) with a head whose share is more than double the tag's mean over heads."""
    d = pos.filter((pl.col("direction") == direction) & ~pl.col("tag").is_in(["SPACE", "BOS"]))
    per_tag = d.group_by("tag").agg(mean=pl.col("share").mean(), max=pl.col("share").max()).filter(pl.col("mean") > 0)
    return int((per_tag["max"] > 2 * per_tag["mean"]).sum()), per_tag.height


def top_heads_in_layers(pos: pl.DataFrame, direction: str, tag: str, top: int, layers: set[int]) -> int | None:
    d = ranked(pos.filter((pl.col("direction") == direction) & (pl.col("tag") == tag)), "share").head(top)
    return None if d.height < top else int(d["layer"].is_in(list(layers)).sum())


class PosShare(Metric):
    name = "pos_share"
    order = 20
    description = "Share of non-null attention received by / sent from pieces of each part-of-speech tag."
    table_schemas = {"pos_share": SCHEMA}
    figures = (
        FigureSpec("fig06_pos_to", "Attention to each part of speech (Figs. 6, A.1)",
                   "Eq. 3: the share of each head's non-null attention (j ≥ 1) received by pieces of the tag. Each heatmap "
                   "has its own colour scale; the title gives the tag's mean over heads. A word split into pieces gives its "
                   "tag to every piece.", "tag_small_multiples", ("pos_share",), {"direction": "to"}),
        FigureSpec("fig07_pos_from", "Attention from each part of speech (Figs. 7, A.2)",
                   "The 'from' twin of Eq. 3: the share of each head's non-null attention sent by pieces of the tag.",
                   "tag_small_multiples", ("pos_share",), {"direction": "from"}),
    )

    def reduce_layer(self, layer) -> dict:
        ctx, sum_dtype = layer.batch, layer.batch.sum_dtype
        sent = layer.row_mass * ctx.attending_f[:, None, :]
        return {"pos_to": torch.einsum("bhj,bjp->bhp", layer.received, ctx.pos_onehot).to(sum_dtype).sum(0),
                "pos_from": torch.einsum("bhi,bip->bhp", sent, ctx.pos_onehot).to(sum_dtype).sum(0)}

    def tables(self, sums, inputs) -> dict:
        tokens = inputs["tokens"]  # a lazy scan of every part: aggregated as it streams
        freq = (tokens.filter(pl.col("position") >= 1).group_by("pos").len()
                .select(tag="pos", tag_frequency=pl.col("len") / pl.col("len").sum()).collect(engine="streaming"))
        present = tokens.select(pl.col("pos").unique()).collect(engine="streaming")["pos"]  # the label set, less labels never seen
        parts = [share_table(sums[f"pos_{d}"], sums["mass"], inputs["pos_vocab"], "tag").with_columns(direction=pl.lit(d))
                 for d in ("to", "from")]
        table = (pl.concat(parts).filter(pl.col("tag").is_in(present.implode())).join(freq, on="tag", how="left")
                 .with_columns(pl.col("tag_frequency").fill_null(0.0)).select(*SCHEMA))
        return {"pos_share": table}

    def claims(self, c) -> list[Claim]:
        pos = c.tables["pos_share"]
        to_n, to_total = doubled_tags(pos, "to")
        from_n, from_total = doubled_tags(pos, "from")
        out = [Claim("pos_to_specialised", "For 13 of 16 tags a head attends to the tag at more than double its mean share.",
                     "more than half of the tags", "13/16", f"{to_n}/{to_total}", to_total > 0 and to_n > to_total / 2),
               Claim("pos_from_specialised", "For 7 of 16 tags a head attends from the tag at more than double its mean "
                     "share: less pronounced than 'to'.", "at least one tag, and no more tags than for 'to'", "7/16",
                     f"{from_n}/{from_total}", 0 < from_n <= to_n)]
        for claim, statement, tag, direction, top, span, where in (
            ("propn_top5_late", "The top five heads attending to proper nouns are all in the last three layers.", "PROPN", "to", 5, c.last(3), "last"),
            ("det_top5_early", "The top five heads attending to determiners are all in the first four layers.", "DET", "to", 5, c.first(4), "first"),
            ("punct_from_top10_late", "The top ten heads attending from punctuation are all in the last six layers.", "PUNCT", "from", 10, c.last(6), "last"),
        ):
            n = top_heads_in_layers(pos, direction, tag, top, span)
            out.append(Claim(claim, statement, f"all {top} in the {where} {len(span)} of {c.L} layers (scaled from 12)",
                             f"{top}/{top}", None if n is None else f"{n}/{top}", n == top))
        nouns_to = pos.filter((pl.col("direction") == "to") & (pl.col("tag") == "NOUN"))
        noun = nouns_to.filter((pl.col("layer") == 9) & (pl.col("head") == 0))
        out.append(Claim("l9h0_nouns", "Nouns receive 43% of attention in layer 9, head 0 (mean 21% over heads).",
                         "share > 2 × mean", "0.43 vs 0.21", None if noun.is_empty() else float(noun["share"][0]),
                         bool(not noun.is_empty() and noun["share"][0] > 2 * nouns_to["share"].mean()), c.gpt2_small))
        return out


METRIC = PosShare()
