"""Dependency alignment (Eq. 4, Fig. 8): the share of a head's non-null attention between pieces whose
words are in a dependency relation, in the paper's three formulations: the attending piece's word is
the parent (variant 1), the receiving piece's word is the parent (variant 2), either (variant 3,
the sum: pieces of the same word are never related). Each variant has its baseline: the share of
piece pairs (i ≥ 2, 1 ≤ j < i: the diagonal i = j, a piece with itself, can never be related) whose
words are related in that way."""

from __future__ import annotations

import polars as pl

from pipeline.metrics.base import Claim, FigureSpec, Finding, Metric, ranked, ratio



class DependencyAlignment(Metric):
    name = "dependency_alignment"
    order = 30
    description = "Share of non-null attention between pieces of a dependency parent and its child (three variants)."
    columns = ("dep_align_attending_parent", "dep_align_receiving_parent", "dep_align_either")
    layer_extra_columns = ("baseline_attending_parent", "baseline_receiving_parent", "baseline_dep_pair_share")
    figures = (FigureSpec(
        "fig08_dependency_alignment", "Dependency alignment by layer (Fig. 8)",
        "Eq. 4 per layer, from the layer's summed numerators and denominators, for the three formulations; each dashed "
        "line, in its formulation's colour, is its baseline: the share of piece pairs (i ≥ 2, 1 ≤ j < i; the diagonal "
        "i = j is left out, as a piece is never related to itself) whose words are related that way.",
        "dependency_alignment", inputs=("layer_metrics",)),)

    def pair_features(self, batch) -> dict:
        return {"dep_attending_parent": batch.attending_parent, "dep_receiving_parent": batch.receiving_parent}

    def batch_sums(self, batch) -> dict:
        off_diagonal = batch.nonnull.sum() - batch.attending.sum()  # nonnull holds (i, i) once per attending row
        return {"pairs": off_diagonal.to(batch.sum_dtype).reshape(1),
                "pairs_attending_parent": batch.attending_parent.sum().to(batch.sum_dtype).reshape(1),
                "pairs_receiving_parent": batch.receiving_parent.sum().to(batch.sum_dtype).reshape(1)}

    def ratios(self, get) -> dict:
        return {"dep_align_attending_parent": ratio(get("dep_attending_parent"), get("mass")),
                "dep_align_receiving_parent": ratio(get("dep_receiving_parent"), get("mass")),
                "dep_align_either": ratio(get("dep_attending_parent") + get("dep_receiving_parent"), get("mass"))}

    def layer_columns(self, sums) -> dict:
        L, pairs = sums["mass"].shape[0], sums["pairs"].sum()
        attending, receiving = sums["pairs_attending_parent"].sum(), sums["pairs_receiving_parent"].sum()
        return {"baseline_attending_parent": [float(ratio(attending, pairs))] * L,
                "baseline_receiving_parent": [float(ratio(receiving, pairs))] * L,
                "baseline_dep_pair_share": [float(ratio(attending + receiving, pairs))] * L}

    def findings(self, heads, layers, sums) -> list[Finding]:
        top = ranked(layers, "dep_align_either")
        peak = float(top["layer"][0]) if top.height else float("nan")
        return [Finding("layer_max_dep_align", peak, n=top.height),
                Finding("baseline_dep_pair_share", float(layers["baseline_dep_pair_share"][0]), n=layers.height)]

    def claims(self, c) -> list[Claim]:
        peak = c.layer("layer_max_dep_align")
        out = [Claim("dep_alignment_middle", "Attention aligns with dependency relations most strongly in the middle layers.",
                     "peak layer at relative depth in [1/6, 2/3]", "middle", f"layer {peak} of {c.L}",
                     peak is not None and 1 / 6 <= peak / max(c.L - 1, 1) <= 2 / 3, peak is not None)]
        stats = c.tables.get("corpus_stats")
        if stats is not None and stats.height:
            prob = dict(stats.filter(pl.col("statistic") == "dependency_probability_at_distance").select("key", "value").iter_rows())
            p1, p5, p10 = prob.get("1"), prob.get("5"), prob.get("10")
            out.append(Claim("adjacent_dependency_probability", "Adjacent pieces are in a dependency relation with "
                             "probability 0.42 (0.07 at distance 5, 0.02 at 10).", "decreasing: p(1) > p(5) > p(10)",
                             0.42, p1, None not in (p1, p5, p10) and p1 > p5 > p10))
        out.append(c.named_head_tops("l4h11_top_alignment", "Layer 4, head 11 has the highest dependency alignment (0.42).",
                                     "dep_align_either", (4, 11), "(4, 11): 0.42"))
        return out


METRIC = DependencyAlignment()
