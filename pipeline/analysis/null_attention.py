"""The analysis part of null_attention: ratio columns, findings, and the paper's claims. Its definition and
device part: pipeline/metrics/null_attention.py."""

from __future__ import annotations

import polars as pl

from pipeline.analysis.base import (
    NO_INTERVAL_EXTREME,
    Analysis,
    Claim,
    Finding,
    band,
    defined,
    in_band,
    ranked,
    ratio,
    top_row,
)

SOURCE = "§5.2.3, p. 5"


class NullAttentionAnalysis(Analysis):
    name = "null_attention"
    order = 10
    columns = ("null_share",)
    raw_columns = {"mass_null": "null_attention.mass_null"}

    def ratios(self, get) -> dict:
        return {
            "null_share": ratio(get("null_attention.mass_null"), get("attention_mass.mass_all"))
        }

    def findings(self, heads, layers, sums) -> list[Finding]:
        n = heads.height
        return [
            Finding(
                "null_share_overall",
                float(
                    ratio(
                        sums["null_attention.mass_null"].sum(),
                        sums["attention_mass.mass_all"].sum(),
                    )
                ),
                n=n,
            ),
            Finding("null_share_mean", float(heads["null_share"].mean()), n=n, paper_value=0.57),
            Finding(
                "null_share_max",
                float(heads["null_share"].max()),
                n=n,
                paper_value=0.97,
                interval_note=NO_INTERVAL_EXTREME,
            ),
        ]

    def claims(self, c) -> list[Claim]:
        mean = c.f.get("null_share_mean")
        # ±0.10 around 57%: how much attention defaults to position 0 moves with the corpus and its sentence length,
        # so another sample shifts the mean over heads by a few points; a model putting a third or four fifths of
        # its attention there does not reproduce "57%".
        out = [
            Claim(
                "null_attention_mean",
                "On average, 57% of attention was directed to the first token.",
                "mean over heads of the null share lies in the band",
                0.57,
                mean,
                in_band(mean, 0.47, 0.67),
                defined(mean),
                band(0.47, 0.67),
                interval=c.ci("null_share_mean"),
                source=SOURCE,
            )
        ]
        # "Some heads focused over 97%": the paper's threshold, 0.97, and its plural, at least two heads. A count of
        # heads above a threshold (and the maximum) is an extreme over heads: no percentile interval.
        shares = ranked(c.tables["head_metrics"], "null_share")
        above = shares.filter(pl.col("null_share") >= 0.97)
        top = top_row(shares, "null_share")
        run = (
            None
            if top is None
            else (
                f"{above.height} heads ≥ 0.97; highest ({top['layer']}, {top['head']}): "
                f"{top['null_share']:.3g}"
            )
        )
        out.append(
            Claim(
                "null_attention_max",
                "Some heads focused over 97% of attention to this token on average (Figure 5)",
                "at least two heads ('some heads') have a null share ≥ 0.97 ('over 97%')",
                "over 0.97",
                run,
                above.height >= 2,
                top is not None,
                band(0.97, 1.0),
                source=SOURCE,
                interval_note=NO_INTERVAL_EXTREME,
            )
        )
        return out


ANALYSIS = NullAttentionAnalysis()
