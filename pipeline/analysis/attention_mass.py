"""The analysis part of attention_mass: its sums copied into head_metrics. Its definition and device part:
pipeline/metrics/attention_mass.py."""

from __future__ import annotations

from pipeline.analysis.base import Analysis


class AttentionMassAnalysis(Analysis):
    name = "attention_mass"
    order = 0
    raw_columns = {"mass": "attention_mass.mass", "mass_all": "attention_mass.mass_all"}


ANALYSIS = AttentionMassAnalysis()
