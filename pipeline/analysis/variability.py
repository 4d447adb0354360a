"""The analysis part of variability: ratio columns, findings, and the paper's claims. Its definition and
device part: pipeline/metrics/variability.py."""

from __future__ import annotations

from pipeline.analysis.base import (
    Analysis,
    Claim,
    Finding,
    layer_names,
    mean_in_layers,
    pearson,
    ratio,
)


class VariabilityAnalysis(Analysis):
    name = "variability"
    order = 50
    columns = ("variability",)
    raw_columns = {"var_abs_dev": "variability.var_abs_dev", "var_mass": "variability.var_mass"}

    def ratios(self, get) -> dict:
        return {
            "variability": ratio(get("variability.var_abs_dev"), 2 * get("variability.var_mass"))
        }

    def findings(self, heads, layers, sums) -> list[Finding]:
        return [pearson(heads, "variability", "dep_align_either", "r_variability_dep_align")]

    def claims(self, c) -> list[Claim]:
        heads, layers, early = c.tables["head_metrics"], c.tables["layer_metrics"], c.first(2)
        others = set(range(c.L)) - early
        first, rest = (
            mean_in_layers(heads, "variability", early),
            mean_in_layers(heads, "variability", others),
        )
        # The sentence says two things: alignment is low in the initial layers (below the other layers', from the
        # layer means of Fig. 8), and their heads are position-based (variability below the other layers' heads').
        low_align, rest_align = (
            mean_in_layers(layers, "dep_align_either", early),
            mean_in_layers(layers, "dep_align_either", others),
        )
        ok = None not in (first, rest, low_align, rest_align)
        out = [
            Claim(
                "early_layers_low_variability",
                "One possible explanation for the low alignment in the initial "
                "layers is that many heads in these layers focus attention based on position rather than content, "
                "according to the attention variability (Eq. 5) results in Figure 10.",
                f"over the first {len(early)} of {c.L} layers (scaled from 0-1 of 12) against the other layers: the "
                "mean dependency alignment of the layers is lower, and the mean variability of the heads is lower",
                "lower in layers 0-1",
                f"{layer_names(early)} vs other layers: alignment {low_align:.3g} vs {rest_align:.3g}; variability "
                f"{first:.3g} vs {rest:.3g}"
                if ok
                else None,
                ok and low_align < rest_align and first < rest,
                ok,
                source="§5.3.2, p. 6",
            )
        ]
        # [0, 0.014], 0.004 + 0.01: a head attending to the previous piece hardly varies with the content; a corpus
        # moves its tiny deviations by thousandths, and 0.014 is still far below a content-dependent head.
        out.append(
            c.named_head(
                "l4h11_most_position_focused",
                "layer 4, head 11 (Figure 1) … is also the most "
                "position-focused (Variability = 0.004).",
                "variability",
                (4, 11),
                "(4, 11): 0.004",
                0.0,
                0.014,
                highest=False,
                paper_number=0.004,
                source="§5.3.2, p. 7",
            )
        )
        return out


ANALYSIS = VariabilityAnalysis()
