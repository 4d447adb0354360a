"""Dependency alignment (Eq. 4, Fig. 8): the share of a head's non-null attention between pieces whose
words are in a dependency relation, in the paper's three formulations: the attending piece's word is
the parent (variant 1), the receiving piece's word is the parent (variant 2), either (variant 3,
the sum: pieces of the same word are never related). Each variant has its baseline: the share of
piece pairs (i ≥ 2, 1 ≤ j < i: the diagonal i = j, a piece with itself, can never be related) whose
words are related in that way."""

from __future__ import annotations

from pipeline.metrics.base import DevicePart


class DependencyAlignment(DevicePart):
    name = "dependency_alignment"
    provides = (
        "dep_attending_parent",
        "dep_receiving_parent",
        "pairs",
        "pairs_attending_parent",
        "pairs_receiving_parent",
    )
    requires = ("attention_mass.mass",)

    def pair_features(self, batch) -> dict:
        return {
            "dep_attending_parent": batch.attending_parent,
            "dep_receiving_parent": batch.receiving_parent,
        }

    def batch_sums(self, batch) -> dict:
        off_diagonal = batch.nonnull.sum((1, 2)) - batch.attending.sum(
            1
        )  # nonnull holds (i, i) once per attending row
        return {
            "pairs": off_diagonal.to(batch.sum_dtype)[:, None],
            "pairs_attending_parent": batch.attending_parent.sum((1, 2)).to(batch.sum_dtype)[
                :, None
            ],
            "pairs_receiving_parent": batch.receiving_parent.sum((1, 2)).to(batch.sum_dtype)[
                :, None
            ],
        }


METRIC = DependencyAlignment()
