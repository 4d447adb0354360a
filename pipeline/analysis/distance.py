"""The analysis part of distance: ratio columns, findings, and the paper's claims. Its definition and device
part: pipeline/metrics/distance.py."""

from __future__ import annotations

import polars as pl

from pipeline.analysis.base import (
    NO_INTERVAL_ARGMAX,
    NO_INTERVAL_CORPUS,
    NO_INTERVAL_EXTREME,
    Analysis,
    Claim,
    Finding,
    band,
    defined,
    in_band,
    layer_names,
    pearson,
    ranked,
    ratio,
    top_row,
)


class DistanceAnalysis(Analysis):
    name = "distance"
    order = 60
    columns = ("mean_distance",)

    def ratios(self, get) -> dict:
        return {"mean_distance": ratio(get("distance.distance"), get("attention_mass.mass"))}

    def findings(self, heads, layers, sums) -> list[Finding]:
        top = ranked(layers, "mean_distance")
        far = float(top["layer"][0]) if top.height else float("nan")
        return [
            Finding(
                "sd_mean_distance",
                float(heads["mean_distance"].std(ddof=1)),
                n=heads.height,
                paper_value=3.6,
            ),
            Finding(
                "max_mean_distance",
                float(heads["mean_distance"].max()),
                n=heads.height,
                paper_value=14.2,
                interval_note=NO_INTERVAL_EXTREME,
            ),
            pearson(heads, "mean_distance", "mean_entropy", "r_distance_entropy", 0.61),
            pearson(heads, "mean_distance", "dep_align_either", "r_distance_dep_align", -0.73),
            Finding("layer_max_mean_distance", far, n=top.height, interval_note=NO_INTERVAL_ARGMAX),
        ]

    def claims(self, c) -> list[Claim]:
        heads, layers = c.tables["head_metrics"], c.tables["layer_metrics"]
        far, sd = c.layer("layer_max_mean_distance"), c.f.get("sd_mean_distance")
        deep = c.last(4)
        # "The deepest layers" are not numbered: the last third, as for "the deepest layers also target longer-range
        # relationships" (mean_dependency_distance).
        out = [
            Claim(
                "distance_deepest",
                "We found that attention distance (Eq. 6) is greatest in the deepest layers "
                "(Figure 11, right)",
                f"the layer with the largest mean distance lies in the last {len(deep)} of "
                f"{c.L} layers (the last third)",
                "deepest",
                f"layer {far} of {c.L}",
                far is not None and far in deep,
                far is not None,
                source="§5.3.3, p. 7",
                interval_note=NO_INTERVAL_ARGMAX,
            )
        ]
        # "Even when the heads are in the same layer": the mean of the per-layer SDs against the SD over all heads
        # (both from head_metrics, so that the two are of the same heads).
        defined_heads = ranked(heads, "mean_distance")
        within = defined_heads.group_by("layer").agg(sd=pl.col("mean_distance").std()).drop_nulls()
        within_sd = float(within["sd"].mean()) if within.height else None
        overall = defined_heads["mean_distance"].std() if defined_heads.height > 1 else None
        # ±0.9 (a quarter) around SD 3.6: every head's distance scales with sentence length, so a corpus whose
        # sentences are a quarter longer or shorter than the paper's 27.7 pieces scales the SD by about as much.
        spread = None if within_sd is None or not overall else bool(within_sd >= overall / 2)
        out.append(
            Claim(
                "distance_sd",
                "Attention distance varies greatly across heads (SD = 3.6), even when the "
                "heads are in the same layer",
                "SD across heads lies in the band, and the mean SD within a "
                "layer is at least half of it; direction: the latter alone",
                3.6,
                None
                if not defined(sd)
                else f"{sd:.3g} (within layers: "
                + ("n/a" if within_sd is None else f"{within_sd:.3g}")
                + ")",
                in_band(sd, 2.7, 4.5) and spread is not False,
                defined(sd),
                band(2.7, 4.5),
                spread,
                c.ci("sd_mean_distance"),
                source="§5.3.3, p. 7",
            )
        )
        # ±0.15 in r: over 144 heads the sampling error of r alone is about ±0.1 (95%), and a corpus shifts it
        # further; 0.46-0.76 is still "moderate", and -0.88 to -0.58 still a strong negative correlation.
        # The interval of r resamples sentences with the heads fixed; the paper's p treats the heads as the sample.
        for claim, statement, key, paper, low, high, sign in (
            (
                "distance_entropy_r",
                "Overall, we found a moderate correlation (r = 0.61, p < 0.001) between the two.",
                "r_distance_entropy",
                0.61,
                0.46,
                0.76,
                1,
            ),
            (
                "distance_dep_alignment_r",
                "Across all heads, we found a negative correlation between the two quantities "
                "(r = -0.73, p < 0.001).",
                "r_distance_dep_align",
                -0.73,
                -0.88,
                -0.58,
                -1,
            ),
        ):
            r, p = c.f.get(key), c.p.get(key)
            significant = defined(p) and p < 1e-3
            direction = defined(r) and r * sign > 0 and significant
            out.append(
                Claim(
                    claim,
                    statement,
                    f"r lies in the band and p < 0.001; direction: r {'>' if sign > 0 else '<'} 0 "
                    "with p < 0.001",
                    paper,
                    None
                    if not defined(r)
                    else f"r = {r:.3g}, p = " + (f"{p:.2g}" if defined(p) else "n/a"),
                    in_band(r, low, high) and significant,
                    defined(r),
                    band(low, high),
                    direction,
                    c.ci(key),
                    source="§5.3.3, p. 8",
                    interval_note="of r, resampling sentences with the heads fixed"
                    if c.ci(key)
                    else None,
                )
            )
        # ±3 pieces (a fifth) around 14.2: a head attending to repeated phrases spans about as far as the sentences
        # are long, so the corpus' sentence length sets it (27.7 pieces in the paper's).
        out.append(
            c.named_head(
                "l5h1_top_distance",
                "layer 5, head 1 (Figure 4, right), which has the highest mean "
                "attention distance of any head (14.2)",
                "mean_distance",
                (5, 1),
                "(5, 1): 14.2",
                11.2,
                17.2,
                paper_number=14.2,
                source="§5.3.3, p. 8",
            )
        )
        out.extend(self.layer_claims(c, layers))
        pieces = c.corpus("mean_sentence_pieces")
        # ±4 pieces (a seventh) around 27.7: a property of the corpus, not the model: another Wikipedia sample and
        # another sentence splitter give other lengths; it is the yardstick for every distance above.
        out.append(
            Claim(
                "mean_sentence_pieces",
                "Note that the average sentence length in the corpus is 27.7 tokens.",
                "mean pieces per sentence lies in the band",
                27.7,
                pieces,
                in_band(pieces, 23.7, 31.7),
                defined(pieces),
                band(23.7, 31.7),
                source="Figure 4 caption, p. 5",
                interval_note=NO_INTERVAL_CORPUS,
            )
        )
        return out

    @staticmethod
    def layer_claims(c, layers) -> list[Claim]:
        """Section 5.3.3 on layers 0-1 and 2-4 (scaled to depth: layers 2-4 of 12 are 5-12 of 30), from the
        layer means of layer_metrics (each layer's summed numerators over its summed denominators)."""
        early, middle = c.first(2), c.between(2, 4)
        span = layer_names(middle)
        shortest = top_row(layers, "mean_distance", highest=False)
        aligned = top_row(layers, "dep_align_either")
        out = [
            Claim(
                "layers_2_4_short_and_aligned",
                "The layers (2–4) in which attention spanned the shortest distance "
                "also had the highest dependency alignment.",
                f"the layer with the shortest mean distance and the "
                f"layer with the highest alignment both lie in {span} of {c.L} (scaled from 2-4 of 12)",
                "layers 2-4",
                None
                if shortest is None or aligned is None
                else f"shortest: layer {shortest['layer']}; most aligned: layer {aligned['layer']}",
                shortest is not None
                and aligned is not None
                and shortest["layer"] in middle
                and aligned["layer"] in middle,
                bool(middle) and shortest is not None and aligned is not None,
                source="§5.3.3, p. 8",
                interval_note=NO_INTERVAL_ARGMAX,
            )
        ]
        low = ranked(layers.filter(pl.col("layer").is_in(sorted(early))), "mean_distance")
        high = ranked(layers.filter(pl.col("layer").is_in(sorted(middle))), "mean_distance")
        ok = low.height > 0 and high.height > 0 and not early & middle
        out.append(
            Claim(
                "distance_layers_0_1_above_2_4",
                "many heads in layers 0 and 1 have high entropy (e.g., Figure 4, "
                "center), which may explain why these layers have a higher attention distance compared to layers 2–4.",
                f"every layer of the first {len(early)} has a larger mean distance than every layer of {span} "
                f"(of {c.L}, scaled from 0-1 and 2-4 of 12)",
                "0-1 > 2-4",
                f"lowest of {layer_names(early)}: {low['mean_distance'].min():.3g}; highest of {span}: "
                f"{high['mean_distance'].max():.3g}"
                if ok
                else None,
                ok and low["mean_distance"].min() > high["mean_distance"].max(),
                ok,
                source="§5.3.3, p. 8",
            )
        )
        return out


ANALYSIS = DistanceAnalysis()
