"""Mean attention distance (Eq. 6, Fig. 11): the attention-weighted mean of i − j over non-null
attention, per head and per layer, and how it relates to entropy and dependency alignment."""

from __future__ import annotations

import torch

from pipeline.metrics.base import Claim, FigureSpec, Finding, Metric, pearson, ranked, ratio



class Distance(Metric):
    name = "distance"
    order = 60
    description = "Σ α_ij (i − j) / Σ α_ij over non-null pairs."
    columns = ("mean_distance",)
    figures = (FigureSpec(
        "fig11_mean_distance", "Mean attention distance (Fig. 11)",
        "Eq. 6: attention-weighted mean of i − j over non-null attention, by layer and head (left) and by layer (right).",
        "distance_by_layer_and_head", inputs=("head_metrics", "layer_metrics")),)

    def pair_features(self, batch) -> dict:
        i, j = batch.idx[:, None], batch.idx[None, :]
        return {"distance": (i - j).to(torch.float32)[None] * batch.nonnull}

    def ratios(self, get) -> dict:
        return {"mean_distance": ratio(get("distance"), get("mass"))}

    def findings(self, heads, layers, sums) -> list[Finding]:
        top = ranked(layers, "mean_distance")
        far = float(top["layer"][0]) if top.height else float("nan")
        return [Finding("sd_mean_distance", float(heads["mean_distance"].std(ddof=1)), n=heads.height, paper_value=3.6),
                Finding("max_mean_distance", float(heads["mean_distance"].max()), n=heads.height, paper_value=14.2),
                pearson(heads, "mean_distance", "mean_entropy", "r_distance_entropy", 0.61),
                pearson(heads, "mean_distance", "dep_align_either", "r_distance_dep_align", -0.73),
                Finding("layer_max_mean_distance", far, n=top.height)]

    def claims(self, c) -> list[Claim]:
        far, sd = c.layer("layer_max_mean_distance"), c.f.get("sd_mean_distance")
        out = [Claim("distance_deepest", "Attention distance is greatest in the deepest layers.",
                     "layer with the largest mean distance in the last third", "deepest", f"layer {far} of {c.L}",
                     far is not None and far >= 2 * (c.L - 1) / 3, far is not None),
               Claim("distance_sd", "Mean attention distance varies greatly across heads (SD 3.6).",
                     "SD across heads ≥ 1.8 pieces (half the paper's)", 3.6, sd, (sd or 0) >= 1.8)]
        r, p = c.f.get("r_distance_entropy"), c.p.get("r_distance_entropy")
        out.append(Claim("distance_entropy_r", "Distance and entropy correlate moderately (r = 0.61, p < 0.001).",
                         "r > 0 with p < 0.001", 0.61, r, r is not None and r > 0 and p is not None and p < 1e-3))
        r, p = c.f.get("r_distance_dep_align"), c.p.get("r_distance_dep_align")
        out.append(Claim("distance_dep_alignment_r", "Distance and dependency alignment correlate negatively "
                         "(r = −0.73, p < 0.001).", "r < 0 with p < 0.001", -0.73, r,
                         r is not None and r < 0 and p is not None and p < 1e-3))
        out.append(c.named_head_tops("l5h1_top_distance", "Layer 5, head 1 has the largest mean attention distance (14.2).",
                                     "mean_distance", (5, 1), "(5, 1): 14.2"))
        return out


METRIC = Distance()
