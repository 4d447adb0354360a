"""Null attention (Fig. 5): the share of attention that goes to the null pieces — position 0, the first
piece (or the BOS token when one is prepended), for a decoder; the special pieces ([CLS], [SEP]) for an
encoder (attend.null_pieces) — which the paper treats as a no-op and leaves out of every other metric."""

from __future__ import annotations

from pipeline.metrics.base import Claim, FigureSpec, Finding, Metric, band, defined, in_band, ratio



class NullAttention(Metric):
    name = "null_attention"
    order = 10
    description = "Σ_{j null} α_ij / Σ_j α_ij over attending pieces (decoders: α_i0, i ≥ 1)."
    columns = ("null_share",)
    raw_columns = ("mass_null",)
    figures = (FigureSpec(
        "fig05_null_attention", "Null attention (Fig. 5)",
        "Share of each head's attention that goes to the null pieces — position 0 (the first piece; the BOS token when "
        "one is prepended), or an encoder's [CLS] and [SEP] (attend.null_pieces) — Σ_{j null} α_ij / Σ_j α_ij over the "
        "attending (non-null) pieces of every sentence: Σα_i0 / Σ_j α_ij over i ≥ 1 for a decoder.", "head_heatmap",
        options={"metric": "null_share", "title": "Attention to the first token", "label": "null share", "vmin": 0, "vmax": 1}),)

    def pair_features(self, batch) -> dict:
        return {"mass_null": batch.causal_rows & batch.null[:, None, :]}

    def ratios(self, get) -> dict:
        return {"null_share": ratio(get("mass_null"), get("mass_all"))}

    def findings(self, heads, layers, sums) -> list[Finding]:
        n = heads.height
        return [Finding("null_share_overall", float(ratio(sums["mass_null"].sum(), sums["mass_all"].sum())), n=n),
                Finding("null_share_mean", float(heads["null_share"].mean()), n=n, paper_value=0.57),
                Finding("null_share_max", float(heads["null_share"].max()), n=n, paper_value=0.97)]

    def claims(self, c) -> list[Claim]:
        mean, top = c.f.get("null_share_mean"), c.f.get("null_share_max")
        # ±0.10 around 57%: how much attention defaults to position 0 moves with the corpus and its sentence length,
        # so another sample shifts the mean over heads by a few points; a model putting a third or four fifths of
        # its attention there does not reproduce "57%".
        # ≥ 0.95 for "over 97%": the one most null-focused head of 144, just under the ceiling of 1; two points of
        # slack for the corpus, still a head with nearly all its attention on position 0.
        return [Claim("null_attention_mean", "On average, 57% of attention goes to the first (null) token.",
                      "mean over heads of the null share lies in the band", 0.57, mean, in_band(mean, 0.47, 0.67),
                      defined(mean), band(0.47, 0.67), interval=c.ci("null_share_mean")),
                Claim("null_attention_max", "Some heads put over 97% of their attention on the first token.",
                      "max over heads of the null share lies in the band", 0.97, top, in_band(top, 0.95, 1.0),
                      defined(top), band(0.95, 1.0), interval=c.ci("null_share_max"))]


METRIC = NullAttention()
