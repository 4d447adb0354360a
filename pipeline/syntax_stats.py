"""Corpus statistics at piece level (the paper's section 5.3 numbers), vectorised over the corpus:
a pair of pieces (i, j), i − j = d, is "in a dependency relation" when their words differ and one
word is the other's head."""

from __future__ import annotations

import numpy as np
import polars as pl

STATS_SCHEMA = {"statistic": pl.String, "key": pl.String, "value": pl.Float64, "paper_value": pl.Float64}
PAPER = {  # Vig & Belinkov (2019), GPT-2 tokenizer on their Wikipedia sample
    ("dependency_probability_at_distance", "1"): 0.42,
    ("dependency_probability_at_distance", "5"): 0.07,
    ("dependency_probability_at_distance", "10"): 0.02,
    ("mean_dependency_distance", ""): 3.89,
    ("share_dependencies_within_18", ""): 0.998,
    ("mean_sentence_pieces", ""): 27.7,
}


def related_at_distance(sentence: np.ndarray, word: np.ndarray, head: np.ndarray, d: int):
    """(pairs, related) masks over flat piece arrays for all pairs (k, k-d) in one sentence."""
    same = sentence[d:] == sentence[:-d]
    wi, wj, hi, hj = word[d:], word[:-d], head[d:], head[:-d]
    related = same & (wi >= 0) & (wj >= 0) & (wi != wj) & ((hi == wj) | (hj == wi))
    return same, related


def corpus_statistics(tokens: pl.DataFrame, max_distance: int = 30) -> pl.DataFrame:
    """tokens: sentence_id, position, word_index, head_word_index, pos, dep (position 0 BOS rows removed)."""
    tokens = tokens.sort("sentence_id", "position")
    sentence = tokens["sentence_id"].to_numpy()
    word = tokens["word_index"].to_numpy()
    head = tokens["head_word_index"].to_numpy()
    lengths = tokens.group_by("sentence_id").len()["len"].to_numpy()
    rows = []
    related_total, distance_total, within_18 = 0, 0, 0
    for d in range(1, int(lengths.max())):
        pairs, related = related_at_distance(sentence, word, head, d)
        n_related = int(related.sum())
        related_total += n_related
        distance_total += d * n_related
        within_18 += n_related if d <= 18 else 0
        if d <= max_distance:
            rows.append(("dependency_probability_at_distance", str(d), n_related / max(int(pairs.sum()), 1)))
    rows.append(("mean_dependency_distance", "", distance_total / max(related_total, 1)))
    rows.append(("share_dependencies_within_18", "", within_18 / max(related_total, 1)))
    rows.append(("mean_sentence_pieces", "", float(lengths.mean())))
    rows.append(("sentences", "", float(len(lengths))))
    rows.append(("pieces", "", float(len(sentence))))
    for column, statistic in (("pos", "pos_frequency"), ("dep", "dep_frequency")):
        freq = tokens.group_by(column).len().with_columns(share=pl.col("len") / pl.col("len").sum()).sort(column)
        rows.extend((statistic, k, float(v)) for k, v in zip(freq[column], freq["share"]))
    df = pl.DataFrame(rows, schema={"statistic": pl.String, "key": pl.String, "value": pl.Float64}, orient="row")
    paper = pl.DataFrame([(s, k, v) for (s, k), v in PAPER.items()],
                         schema={"statistic": pl.String, "key": pl.String, "paper_value": pl.Float64}, orient="row")
    return df.join(paper, on=["statistic", "key"], how="left", maintain_order="left")


def format_comparison(stats: pl.DataFrame) -> str:
    lines = [f"{'statistic':<40}{'ours':>10}{'paper':>10}"]
    for row in stats.filter(pl.col("paper_value").is_not_null()).iter_rows(named=True):
        label = row["statistic"] + (f" d={row['key']}" if row["key"] else "")
        lines.append(f"{label:<40}{row['value']:>10.3f}{row['paper_value']:>10.3f}")
    return "\n".join(lines)
