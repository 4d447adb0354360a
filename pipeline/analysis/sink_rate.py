"""The analysis part of sink_rate: ratio columns, findings. Its definition and device part:
pipeline/metrics/sink_rate.py."""

from __future__ import annotations

from pipeline.analysis.base import Analysis, Finding, ratio


class SinkRateAnalysis(Analysis):
    name = "sink_rate"
    order = 92
    columns = ("sink_frequency",)
    raw_columns = {
        "sink_sequences": "sink_rate.sink_sequences",
        "sink_sequence_count": "sink_rate.sink_sequence_count",
    }

    def ratios(self, get) -> dict:
        return {
            "sink_frequency": ratio(
                get("sink_rate.sink_sequences"), get("sink_rate.sink_sequence_count")
            )
        }

    def findings(self, heads, layers, sums) -> list[Finding]:
        sinks, count = sums["sink_rate.sink_sequences"], sums["sink_rate.sink_sequence_count"]
        sequences = int(round(float(count.reshape(-1)[0]))) if count.size else 0
        return [Finding("sink_rate", float(ratio(sinks.sum(), count.sum())), n=sequences)]


ANALYSIS = SinkRateAnalysis()
