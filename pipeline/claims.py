"""The quantitative statements of the paper's section 5.3, checked against a run's tables.

Each claim gives the paper's value, this run's value, the criterion for "holds" (written out in
the table, so a reader can disagree with it), and whether it applies: claims naming a GPT-2 head
(e.g. layer 4, head 11) apply only to GPT-2 small. Depth-relative claims ("the last three of 12
layers") are scaled to the model's depth: last ⌈3L/12⌉ layers."""

from __future__ import annotations

import math

import polars as pl

SCHEMA = {"claim": pl.String, "statement": pl.String, "criterion": pl.String, "paper_value": pl.String,
          "run_value": pl.String, "applicable": pl.Boolean, "holds": pl.Boolean}


def is_gpt2_small(model: dict) -> bool:
    return model.get("model_type") == "gpt2" and model.get("num_layers") == 12 and model.get("num_heads") == 12


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _doubled_tags(pos: pl.DataFrame, direction: str) -> tuple[int, int]:
    """Tags (excluding SPACE/BOS) with a head whose share is more than double the tag's mean over heads."""
    d = pos.filter((pl.col("direction") == direction) & ~pl.col("tag").is_in(["SPACE", "BOS"]))
    per_tag = d.group_by("tag").agg(mean=pl.col("share").mean(), max=pl.col("share").max()).filter(pl.col("mean") > 0)
    return int((per_tag["max"] > 2 * per_tag["mean"]).sum()), per_tag.height


def _top_heads_in_layers(pos: pl.DataFrame, direction: str, tag: str, top: int, layers: set[int]) -> int | None:
    d = pos.filter((pl.col("direction") == direction) & (pl.col("tag") == tag)).sort("share", descending=True).head(top)
    return None if d.height < top else int(d["layer"].is_in(list(layers)).sum())


def evaluate(tables: dict[str, pl.DataFrame], model: dict) -> pl.DataFrame:
    heads, layers, pos = tables["head_metrics"], tables["layer_metrics"], tables["pos_share"]
    f = dict(zip(tables["findings"]["statistic"], tables["findings"]["value"]))
    p = dict(zip(tables["findings"]["statistic"], tables["findings"]["p_value"]))
    L = layers.height
    last = lambda n: set(range(L - math.ceil(n * L / 12), L))  # noqa: E731
    first = lambda n: set(range(0, math.ceil(n * L / 12)))  # noqa: E731
    rows = []

    def add(claim, statement, criterion, paper, run, holds, applicable=True):
        rows.append((claim, statement, criterion, _fmt(paper), _fmt(run), applicable, holds if applicable else None))

    add("null_attention_mean", "On average, 57% of attention goes to the first (null) token.",
        "mean over heads ≥ 0.3 (a large share)", 0.57, f.get("null_share_mean"), f.get("null_share_mean", 0) >= 0.3)
    add("null_attention_max", "Some heads put over 97% of their attention on the first token.",
        "max over heads > 0.97", 0.97, f.get("null_share_max"), f.get("null_share_max", 0) > 0.97)
    to_n, to_total = _doubled_tags(pos, "to")
    from_n, from_total = _doubled_tags(pos, "from")
    add("pos_to_specialised", "For 13 of 16 tags a head attends to the tag at more than double its mean share.",
        "more than half of the tags", "13/16", f"{to_n}/{to_total}", to_total > 0 and to_n > to_total / 2)
    add("pos_from_specialised", "For 7 of 16 tags a head attends from the tag at more than double its mean share: "
        "less pronounced than 'to'.", "at least one tag, and no more tags than for 'to'", "7/16",
        f"{from_n}/{from_total}", 0 < from_n <= to_n)
    for claim, statement, tag, direction, top, span, where in (
        ("propn_top5_late", "The top five heads attending to proper nouns are all in the last three layers.", "PROPN", "to", 5, last(3), "last"),
        ("det_top5_early", "The top five heads attending to determiners are all in the first four layers.", "DET", "to", 5, first(4), "first"),
        ("punct_from_top10_late", "The top ten heads attending from punctuation are all in the last six layers.", "PUNCT", "from", 10, last(6), "last"),
    ):
        n = _top_heads_in_layers(pos, direction, tag, top, span)
        add(claim, statement, f"all {top} in the {where} {len(span)} of {L} layers (scaled from 12)", f"{top}/{top}",
            None if n is None else f"{n}/{top}", n == top)
    peak = int(f.get("layer_max_dep_align", -1))
    depth = peak / max(L - 1, 1)
    add("dep_alignment_middle", "Attention aligns with dependency relations most strongly in the middle layers.",
        "peak layer at relative depth in [1/6, 2/3]", "middle", f"layer {peak} of {L}", 1 / 6 <= depth <= 2 / 3)
    far = int(f.get("layer_max_mean_distance", -1))
    add("distance_deepest", "Attention distance is greatest in the deepest layers.",
        "layer with the largest mean distance in the last third", "deepest", f"layer {far} of {L}", far >= 2 * (L - 1) / 3)
    add("distance_sd", "Mean attention distance varies greatly across heads (SD 3.6).",
        "SD across heads ≥ 1.8 pieces (half the paper's)", 3.6, f.get("sd_mean_distance"), f.get("sd_mean_distance", 0) >= 1.8)
    r, pr = f.get("r_distance_entropy"), p.get("r_distance_entropy")
    add("distance_entropy_r", "Distance and entropy correlate moderately (r = 0.61, p < 0.001).",
        "r > 0 with p < 0.001", 0.61, r, r is not None and r > 0 and pr is not None and pr < 1e-3)
    r, pr = f.get("r_distance_dep_align"), p.get("r_distance_dep_align")
    add("distance_dep_alignment_r", "Distance and dependency alignment correlate negatively (r = −0.73, p < 0.001).",
        "r < 0 with p < 0.001", -0.73, r, r is not None and r < 0 and pr is not None and pr < 1e-3)
    stats = tables.get("corpus_stats")
    if stats is not None and stats.height:
        prob = dict(stats.filter(pl.col("statistic") == "dependency_probability_at_distance").select("key", "value").iter_rows())
        p1, p5, p10 = prob.get("1"), prob.get("5"), prob.get("10")
        add("adjacent_dependency_probability", "Adjacent pieces are in a dependency relation with probability 0.42 "
            "(0.07 at distance 5, 0.02 at 10).", "decreasing: p(1) > p(5) > p(10)", 0.42, p1,
            None not in (p1, p5, p10) and p1 > p5 > p10)
    gpt2 = is_gpt2_small(model)
    def head_of(metric, descending=True):
        row = heads.sort(metric, descending=descending, nulls_last=True).row(0, named=True)
        return row["layer"], row["head"], row[metric]

    l, hd, v = head_of("dep_align_either")
    add("l4h11_top_alignment", "Layer 4, head 11 has the highest dependency alignment (0.42).", "argmax head is (4, 11)",
        "(4, 11): 0.42", f"({l}, {hd}): {v:.3g}", (l, hd) == (4, 11), gpt2)
    l, hd, v = head_of("mean_distance")
    add("l5h1_top_distance", "Layer 5, head 1 has the largest mean attention distance (14.2).", "argmax head is (5, 1)",
        "(5, 1): 14.2", f"({l}, {hd}): {v:.3g}", (l, hd) == (5, 1), gpt2)
    noun = pos.filter((pl.col("direction") == "to") & (pl.col("tag") == "NOUN") & (pl.col("layer") == 9) & (pl.col("head") == 0))
    add("l9h0_nouns", "Nouns receive 43% of attention in layer 9, head 0 (mean 21% over heads).", "share > 2 × mean",
        "0.43 vs 0.21", None if noun.is_empty() else float(noun["share"][0]),
        bool(not noun.is_empty() and noun["share"][0] > 2 * pos.filter((pl.col("direction") == "to") & (pl.col("tag") == "NOUN"))["share"].mean()),
        gpt2)
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")
