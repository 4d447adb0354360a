"""Uncertainty on every number: a Poisson bootstrap over sentences, formed in the same pass.

Resampling sentences with replacement gives each sentence a multiplicity; the Poisson bootstrap
draws it independently per sentence, w ~ Poisson(1), which makes every replicate a weighted sum of
per-sentence sums (Σ_s w_rs · x_s) — additive over batches, parts and workers like every other sum
(pipeline/sums.py). The weights of a sentence are a function of (seed, sentence id) alone, so the
intervals do not depend on batching, part boundaries or the executor. A replicate's ratio (a share,
a mean distance, ...) is the ratio of its replicate sums; the interval is the percentile interval of
the R replicate values. The weights are drawn in the batch, on the device side (pipeline/sums.py); this
module forms the intervals."""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.sums import BOOT_PREFIX as PREFIX

LEVEL = 0.95


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, NaN where fewer than half the replicates are defined."""
    replicates = np.asarray(replicates, dtype=np.float64)
    tail = (1 - level) / 2 * 100
    defined = np.isfinite(replicates).sum(0) >= max(replicates.shape[0] / 2, 1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: handled by `defined`
        low, high = np.nanpercentile(replicates, [tail, 100 - tail], axis=0)
    return np.where(defined, low, np.nan), np.where(defined, high, np.nan)


def replicate_sums(additive: dict) -> dict[str, np.ndarray]:
    """{key: [R, L, H]} from the boot.<key> sums ([L, R, H]) of merged parts; empty when the run had no bootstrap."""
    return {
        k[len(PREFIX) :]: np.moveaxis(np.asarray(v), 1, 0)
        for k, v in additive.items()
        if k.startswith(PREFIX)
    }
