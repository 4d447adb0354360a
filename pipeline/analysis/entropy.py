"""The analysis part of entropy: ratio columns, and the paper's claims. Its definition and device part:
pipeline/metrics/entropy.py."""

from __future__ import annotations

import math

from pipeline.analysis.base import (
    Analysis,
    Claim,
    layer_names,
    mean_in_layers,
    ratio,
)


class EntropyAnalysis(Analysis):
    name = "entropy"
    order = 70
    columns = ("mean_entropy",)
    raw_columns = {
        "entropy_rows": "entropy.entropy_rows",
        "entropy_skipped": "entropy.entropy_skipped",
    }

    def ratios(self, get) -> dict:
        return {"mean_entropy": ratio(get("entropy.entropy_sum"), get("entropy.entropy_rows"))}

    def claims(self, c) -> list[Claim]:
        heads, early = c.tables["head_metrics"], c.first(2)
        first, rest = (
            mean_in_layers(heads, "mean_entropy", early),
            mean_in_layers(heads, "mean_entropy", set(range(c.L)) - early),
        )
        out = [
            Claim(
                "early_layers_high_entropy",
                "As Figure 12 shows, many heads in layers 0 and 1 have high entropy (e.g., Figure 4, center)",
                f"mean entropy over the heads of the first {len(early)} of {c.L} layers (scaled from 0-1 of 12) is "
                "above the mean over the heads of the other layers",
                "higher in layers 0-1",
                None
                if first is None or rest is None
                else f"{layer_names(early)}: {first:.3g}; other layers: {rest:.3g}",
                first is not None and rest is not None and first > rest,
                first is not None and rest is not None,
                source="§5.3.3, p. 8",
            )
        ]
        # "One of the lowest": within the lowest tenth of heads (15 of 144). ±0.15 nats around 0.41: how diffuse a
        # repeated-phrase head is depends on how often the corpus repeats phrases, and the paper does not name its
        # logarithm's base (0.41 bits is 0.28 nats, inside the band).
        lowest = math.ceil(0.1 * c.tables["head_metrics"].height)
        out.append(
            c.named_head(
                "l5h1_low_entropy",
                "layer 5, head 1 (Figure 4, right), which has … one of the lowest "
                "mean entropy scores (0.41).",
                "mean_entropy",
                (5, 1),
                "(5, 1): 0.41",
                0.26,
                0.56,
                highest=False,
                top=lowest,
                paper_number=0.41,
                source="§5.3.3, p. 8",
            )
        )
        return out


ANALYSIS = EntropyAnalysis()
