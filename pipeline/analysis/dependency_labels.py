"""The analysis part of dependency_labels: tables, and the paper's claims. Its definition and device part:
pipeline/metrics/dependency_labels.py."""

from __future__ import annotations

import polars as pl

from pipeline.analysis.base import Analysis, Claim, mean_in_layers
from pipeline.analysis.pos_share import share_tables

SUBJECTS = (
    "nsubj",
    "nsubjpass",
    "csubj",
    "csubjpass",
)  # section 5.3.2; all in en_core_web_sm's parser labels


LOWER = ("aux", "cc", "det", "expl", "neg")  # spaCy 3 still calls negation "neg"


LOWER_SENTENCE = (
    "auxiliaries (aux), conjunctions (cc), determiners (det), expletives (expl), and negations (neg) were "
    "targeted more in lower layers"
)


SOURCE = "§5.3.2, p. 7"


class DependencyLabelsAnalysis(Analysis):
    name = "dependency_labels"
    order = 40
    table_schemas = {
        "dep_share": {"layer": pl.Int32, "head": pl.Int32, "label": pl.String, "share": pl.Float64},
        "dep_share_by_layer": {"layer": pl.Int32, "label": pl.String, "share": pl.Float64},
    }

    def tables(self, sums, inputs) -> dict:
        per_head, by_layer = share_tables(
            sums["dependency_labels.dep_to"],
            sums["attention_mass.mass"],
            inputs["dep_vocab"],
            "label",
            inputs["tokens"],
            "dep",
        )
        return {"dep_share": per_head, "dep_share_by_layer": by_layer}

    def claims(self, c) -> list[Claim]:
        """Fig. 9: each label's share of a layer's attention, averaged over the first third and over the last third of
        the layers (scaled: first and last ⌈4L/12⌉). "More in deeper layers" is last third > first third, for the four
        subject labels summed and for each low-layer label alone (the paper names each). A label the run's parser
        never produced is not applicable, not false."""
        dep = c.tables["dep_share_by_layer"]
        first, last = c.first(4), c.last(4)
        span = f"the first {len(first)} vs the last {len(last)} of {c.L} layers"

        def thirds(labels) -> tuple[float | None, float | None]:
            summed = (
                dep.filter(pl.col("label").is_in(list(labels)))
                .group_by("layer")
                .agg(share=pl.col("share").sum())
                if not first & last
                else dep.clear()
            )
            return mean_in_layers(summed, "share", first), mean_in_layers(summed, "share", last)

        subjects = [s for s in SUBJECTS if s in set(dep["label"])]
        low, high = thirds(subjects)
        ok = bool(subjects) and low is not None and high is not None
        out = [
            Claim(
                "dep_subjects_deeper",
                "Subjects (csubj, csubjpass, nsubj, nsubjpass) were targeted more in deeper layers",
                f"summed share of the subject labels present, mean over {span}: last > first",
                "deeper",
                f"{low:.3g} → {high:.3g} ({', '.join(subjects)})" if ok else None,
                ok and high > low,
                ok,
                source=SOURCE,
            )
        ]
        for label in LOWER:
            low, high = thirds([label])
            ok = label in set(dep["label"]) and low is not None and high is not None
            out.append(
                Claim(
                    f"dep_lower_{label}",
                    LOWER_SENTENCE,
                    f"share of '{label}' alone, mean over {span}: first > last",
                    "lower",
                    f"{label}: {low:.3g} → {high:.3g}" if ok else None,
                    ok and low > high,
                    ok,
                    source=SOURCE,
                )
            )
        return out


ANALYSIS = DependencyLabelsAnalysis()
