"""The denominators every share is taken over: non-null attention (mass: i ≥ 1, 1 ≤ j ≤ i for a decoder; an
encoder's non-special i and j) and all attention of the attending rows (mass_all: null pieces included, equal to
the number of attending pieces)."""

from __future__ import annotations

from pipeline.metrics.base import DevicePart


class AttentionMass(DevicePart):
    name = "attention_mass"
    provides = ("mass", "mass_all")

    def pair_features(self, batch) -> dict:
        return {"mass": batch.nonnull, "mass_all": batch.causal_rows}


METRIC = AttentionMass()
