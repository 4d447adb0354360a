"""The analysis part of dependency_accuracy: tables, findings. Its definition and device part:
pipeline/metrics/dependency_accuracy.py."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.base import (
    NO_INTERVAL_EXTREME,
    Analysis,
    Finding,
    ratio,
)
from pipeline.metrics.dependency_accuracy import OFFSETS

DIRECTIONS = (
    "dependent_to_head",
    "head_to_dependent",
)  # Clark et al.'s "dep->head" and "head<-dep"


MIN_CASES = 30  # a relation enters dep_accuracy_mean_gain with at least this many cases


SCHEMA = {
    "layer": pl.Int32,
    "head": pl.Int32,
    "relation": pl.String,
    "direction": pl.String,
    "accuracy": pl.Float64,
    "n": pl.Int64,
    "baseline_offset": pl.Int32,
    "baseline_accuracy": pl.Float64,
}


class DependencyAccuracyAnalysis(Analysis):
    name = "dependency_accuracy"
    order = 45
    table_schemas = {"dep_accuracy": SCHEMA}

    @staticmethod
    def best_offsets(offset_correct: np.ndarray) -> np.ndarray:
        """[R, K] → [R]: the index of the best offset per relation, the larger offset on ties (Clark et al.'s max)."""
        K = offset_correct.shape[-1]
        return K - 1 - offset_correct[..., ::-1].argmax(-1)

    def tables(self, sums, inputs) -> dict:
        correct, cases = (
            np.asarray(sums["dependency_accuracy.depacc_correct"]),
            np.asarray(sums["dependency_accuracy.depacc_cases"]),
        )  # [L, H, 2, R], [R]
        offsets = np.asarray(sums["dependency_accuracy.depacc_offset_correct"])  # [R, K]
        L, H, D, R = correct.shape
        best = self.best_offsets(offsets)
        base = ratio(np.take_along_axis(offsets, best[:, None], -1)[:, 0], cases)
        layer, head, direction, relation = np.meshgrid(
            np.arange(L), np.arange(H), np.arange(D), np.arange(R), indexing="ij"
        )
        table = pl.DataFrame(
            {
                "layer": layer.ravel().astype(np.int32),
                "head": head.ravel().astype(np.int32),
                "relation": pl.Series(
                    np.asarray(inputs["dep_vocab"], dtype=object)[relation.ravel()], dtype=pl.String
                ),
                "direction": pl.Series(
                    np.asarray(DIRECTIONS, dtype=object)[direction.ravel()], dtype=pl.String
                ),
                "accuracy": ratio(correct, cases).ravel(),
                "n": np.rint(np.broadcast_to(cases, correct.shape)).astype(np.int64).ravel(),
                "baseline_offset": np.broadcast_to(np.asarray(OFFSETS)[best], correct.shape)
                .ravel()
                .astype(np.int32),
                "baseline_accuracy": np.broadcast_to(base, correct.shape).ravel(),
            },
            schema=SCHEMA,
        )
        return {"dep_accuracy": table.filter(pl.col("n") > 0)}

    def findings(self, heads, layers, sums) -> list[Finding]:
        """dep_accuracy_mean_gain: over relations with ≥ MIN_CASES cases but ROOT (never predictable), the best head's
        accuracy (either direction) minus the best offset's; Clark et al.'s "all": the best single (head, direction)
        and the best single offset on every case."""
        correct, cases = (
            np.asarray(sums["dependency_accuracy.depacc_correct"]),
            np.asarray(sums["dependency_accuracy.depacc_cases"]),
        )
        offsets, roots = (
            np.asarray(sums["dependency_accuracy.depacc_offset_correct"]),
            np.asarray(sums["dependency_accuracy.depacc_root_cases"]),
        )
        frequent = (cases >= MIN_CASES) & (roots == 0)  # [R]
        best_head = (
            ratio(correct, cases).reshape(-1, cases.size).max(0)[frequent]
            if frequent.any()
            else np.array([])
        )
        base = ratio(offsets.max(-1), cases)[frequent]
        gain = float(np.mean(best_head - base)) if best_head.size else float("nan")
        total = cases.sum()
        all_head = ratio(correct.sum(-1), total)  # [L, H, 2]: one (head, direction) on every case
        all_base = ratio(offsets.sum(0), total)  # [K]: one offset on every case
        return [
            Finding(
                "dep_accuracy_mean_gain",
                gain,
                n=int(frequent.sum()),
                interval_note=NO_INTERVAL_EXTREME,
            ),
            Finding(
                "dep_accuracy_all_best_head",
                float(np.max(all_head)) if total > 0 else float("nan"),
                n=int(total),
                interval_note=NO_INTERVAL_EXTREME,
            ),
            Finding(
                "dep_accuracy_all_baseline",
                float(np.max(all_base)) if total > 0 else float("nan"),
                n=int(total),
                interval_note=NO_INTERVAL_EXTREME,
            ),
        ]


ANALYSIS = DependencyAccuracyAnalysis()
