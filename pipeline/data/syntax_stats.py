"""Corpus statistics at piece level (the paper's section 5.3 numbers), vectorised over the corpus:
a pair of pieces (i, j), i − j = d, is "in a dependency relation" when their words differ and one
word is the other's head."""

from __future__ import annotations

import numpy as np
import polars as pl

STATS_SCHEMA = {
    "statistic": pl.String,
    "key": pl.String,
    "value": pl.Float64,
    "paper_value": pl.Float64,
}
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


def statistic_counts(tokens: pl.DataFrame) -> dict:
    """Additive counts of one part (tokens: sentence_id, position, word_index, head_word_index, pos, dep; BOS rows
    removed): pairs and related pairs at each distance, tag counts, lengths. Parts merge by `add_counts`."""
    tokens = tokens.sort("sentence_id", "position")
    sentence = tokens["sentence_id"].to_numpy()
    word = tokens["word_index"].to_numpy()
    head = tokens["head_word_index"].to_numpy()
    lengths = tokens.group_by("sentence_id").len()["len"].to_numpy()
    pairs, related = {}, {}
    for d in range(1, int(lengths.max()) if len(lengths) else 0):
        same, rel = related_at_distance(sentence, word, head, d)
        pairs[str(d)], related[str(d)] = int(same.sum()), int(rel.sum())
    return {
        "pairs": pairs,
        "related": related,
        "sentences": int(len(lengths)),
        "pieces": int(len(sentence)),
        "pos": dict(tokens.group_by("pos").len().sort("pos").iter_rows()),
        "dep": dict(tokens.group_by("dep").len().sort("dep").iter_rows()),
    }  # sorted: the same part, the same bytes


def add_counts(a: dict, b: dict) -> dict:
    """The one merge of statistic counts: every number adds, key by key, at any depth."""
    out = dict(a)
    for key, value in b.items():
        out[key] = (
            add_counts(out.get(key, {}), value)
            if isinstance(value, dict)
            else out.get(key, 0) + value
        )
    return out


def statistics_table(counts: dict, max_distance: int = 30) -> pl.DataFrame:
    """Merged counts → the corpus_stats table (ratios of corpus-wide counts)."""
    rows = []
    related_total, distance_total, within_18 = 0, 0, 0
    for d in sorted(int(k) for k in counts["pairs"]):
        n_related = counts["related"][str(d)]
        related_total += n_related
        distance_total += d * n_related
        within_18 += n_related if d <= 18 else 0
        if d <= max_distance:
            rows.append(
                (
                    "dependency_probability_at_distance",
                    str(d),
                    n_related / max(counts["pairs"][str(d)], 1),
                )
            )
    rows.append(("mean_dependency_distance", "", distance_total / max(related_total, 1)))
    rows.append(("share_dependencies_within_18", "", within_18 / max(related_total, 1)))
    rows.append(("mean_sentence_pieces", "", counts["pieces"] / max(counts["sentences"], 1)))
    rows.append(("sentences", "", float(counts["sentences"])))
    rows.append(("pieces", "", float(counts["pieces"])))
    for column, statistic in (("pos", "pos_frequency"), ("dep", "dep_frequency")):
        total = sum(counts[column].values())
        rows.extend((statistic, k, v / total) for k, v in sorted(counts[column].items()))
    df = pl.DataFrame(
        rows, schema={"statistic": pl.String, "key": pl.String, "value": pl.Float64}, orient="row"
    )
    paper = pl.DataFrame(
        [(s, k, v) for (s, k), v in PAPER.items()],
        schema={"statistic": pl.String, "key": pl.String, "paper_value": pl.Float64},
        orient="row",
    )
    return df.join(paper, on=["statistic", "key"], how="left", maintain_order="left")


def format_comparison(stats: pl.DataFrame) -> str:
    lines = [f"{'statistic':<40}{'ours':>10}{'paper':>10}"]
    for row in stats.filter(pl.col("paper_value").is_not_null()).iter_rows(named=True):
        label = row["statistic"] + (f" d={row['key']}" if row["key"] else "")
        lines.append(f"{label:<40}{row['value']:>10.3f}{row['paper_value']:>10.3f}")
    return "\n".join(lines)
