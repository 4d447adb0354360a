"""The analysis part of logit_lens: tables. Its definition and device part: pipeline/metrics/logit_lens.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.base import Analysis, ratio
from pipeline.metrics.logit_lens import RANK_EDGES, SET

RELATIONS = (
    "same word",
    "unrelated",
)  # then "next depends on current: <label>", "current depends on next: <label>"


KINDS = ("earliest", "latest")


SCHEMA = {
    "depth": pl.Int32,
    "grouping": pl.String,
    "group": pl.String,
    "n": pl.Int64,
    "top1_share": pl.Float64,
    "top10_share": pl.Float64,
    "mean_prob": pl.Float64,
    "mean_log_prob": pl.Float64,
    "mean_kl": pl.Float64,
    "median_rank": pl.Int64,
    "median_rank_upper": pl.Int64,
    "final_pred_top1_share": pl.Float64,
    "final_pred_top10_share": pl.Float64,
    "final_pred_median_rank": pl.Int64,
    "final_pred_median_rank_upper": pl.Int64,
}


EXEMPLAR_SCHEMA = {
    "kind": pl.String,
    "rank": pl.Int32,
    "sentence_id": pl.Int64,
    "mean_settle_depth": pl.Float64,
    "n_settled": pl.Int64,
    "n_decoded": pl.Int64,
    "text": pl.String,
}


def group_labels(pos_vocab: list[str], dep_vocab: list[str]) -> list[tuple[str, str]]:
    """(grouping, group) of each group index: all, then the next piece's POS, then the relations."""
    return (
        [("all", "all")]
        + [("pos", p) for p in pos_vocab]
        + [("relation", r) for r in RELATIONS]
        + [("relation", f"next depends on current: {d}") for d in dep_vocab]
        + [("relation", f"current depends on next: {d}") for d in dep_vocab]
    )


def median_from_histogram(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """hist [..., BINS] → (lower edge, last rank) of the bin holding the lower median; -1 where n = 0."""
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.sum(-1, keepdims=True)
    reached = np.cumsum(hist, -1) >= n / 2
    b = np.where(n[..., 0] > 0, reached.argmax(-1), -1)
    low = np.where(b >= 0, RANK_EDGES[np.maximum(b, 0)], -1)
    high = np.where(b >= 0, RANK_EDGES[np.maximum(b, 0) + 1] - 1, -1)
    return low, high


class LogitLensAnalysis(Analysis):
    name = "logit_lens"
    order = 95
    table_schemas = {"logit_lens": SCHEMA, "logit_lens_exemplars": EXEMPLAR_SCHEMA}
    # ---- tables ----

    def tables(self, sums, inputs) -> dict:
        stats, hist = (
            np.asarray(sums["logit_lens.lens_stats"], dtype=np.float64),
            np.asarray(sums["logit_lens.lens_rank_hist"]),
        )
        depths, G, _ = stats.shape
        labels = group_labels(list(inputs["pos_vocab"]), list(inputs["dep_vocab"]))
        if len(labels) != G:
            raise ValueError(f"logit lens sums have {G} groups, the vocabularies {len(labels)}")
        n = stats[..., 0]
        low, high = median_from_histogram(hist)
        final_low, final_high = median_from_histogram(
            np.asarray(sums["logit_lens.lens_final_rank_hist"])
        )
        depth, group = np.meshgrid(np.arange(depths), np.arange(G), indexing="ij")
        table = pl.DataFrame(
            {
                "depth": depth.ravel().astype(np.int32),
                "grouping": [labels[g][0] for g in group.ravel()],
                "group": [labels[g][1] for g in group.ravel()],
                "n": np.rint(n).ravel().astype(np.int64),
                **{
                    column: ratio(stats[..., k], n).ravel()
                    for k, column in zip(
                        range(1, 6),
                        ("top1_share", "top10_share", "mean_prob", "mean_log_prob", "mean_kl"),
                    )
                },
                "median_rank": low.ravel().astype(np.int64),
                "median_rank_upper": high.ravel().astype(np.int64),
                "final_pred_top1_share": ratio(stats[..., 6], n).ravel(),
                "final_pred_top10_share": ratio(stats[..., 7], n).ravel(),
                "final_pred_median_rank": final_low.ravel().astype(np.int64),
                "final_pred_median_rank_upper": final_high.ravel().astype(np.int64),
            },
            schema=SCHEMA,
        )
        return {
            "logit_lens": table.filter(pl.col("n") > 0),
            "logit_lens_exemplars": self.exemplar_table(sums, inputs),
        }

    @staticmethod
    def exemplar_table(sums, inputs) -> pl.DataFrame:
        c = sums.ranked.get(SET)
        if not c:
            return pl.DataFrame(schema=EXEMPLAR_SCHEMA)
        kinds, k = np.asarray(c["value"]).shape
        df = pl.DataFrame(
            {
                "kind": [KINDS[r] for r in range(kinds) for _ in range(k)],
                "rank": np.tile(np.arange(k), kinds).astype(np.int32),
                "sentence_id": np.asarray(c["sentence_id"]).ravel().astype(np.int64),
                "value": np.asarray(c["value"], dtype=np.float64).ravel(),
                "mean_settle_depth": np.asarray(c["mean_settle_depth"], dtype=np.float64).ravel(),
                "n_settled": np.rint(np.asarray(c["n_settled"], dtype=np.float64))
                .ravel()
                .astype(np.int64),
                "n_decoded": np.rint(np.asarray(c["n_decoded"], dtype=np.float64))
                .ravel()
                .astype(np.int64),
            }
        )
        df = df.filter(pl.col("value") > -np.inf).drop("value")
        ids = pl.Series(df["sentence_id"].unique().sort().to_list(), dtype=pl.Int64).implode()
        text = (
            inputs["sentences"]
            .filter(pl.col("sentence_id").is_in(ids))
            .select("sentence_id", "text")
        )
        df = df.join(
            text.collect(engine="streaming"), on="sentence_id", how="left", maintain_order="left"
        )
        return df.select(list(EXEMPLAR_SCHEMA)).cast(EXEMPLAR_SCHEMA)


ANALYSIS = LogitLensAnalysis()
