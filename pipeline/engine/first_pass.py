"""The first pass: what some metrics need from the whole corpus before the main pass (variability's mean ᾱ_ij over
the first N pieces of every sentence), reduced by the same `Reduction` as the main pass.

Each metric's `first_pass` part (pipeline/metrics/_first_pass.py) is reduced on batches cut to its first N pieces
(causal attention there depends on nothing later; an encoder's does, so it gets whole sentences), with padding rows
as the model gives them and no bootstrap replicates; under norm weighting it is reduced on α' too
(norm.<metric>.<key>), and each weighting's main pass reads its own ᾱ. Its sums are additive over parts: the attend stage writes each
part's (first-NNNNN.npz), merges them, and `first_pass_results` finishes the merged sums into the arrays the main
pass reads as `layer.first_pass[name]`."""

from __future__ import annotations

import numpy as np

from pipeline.engine.batches import TokenArrays
from pipeline.engine.reduction import Reduction, reduce_sentences
from pipeline.metrics import enabled
from pipeline.sums import NORM_PREFIX


def first_pass_parts(attend_cfg) -> list:
    """The first-pass parts of the enabled metrics that want a pass under this config (N > 0)."""
    return [
        m.first_pass
        for m in enabled(attend_cfg)
        if m.first_pass is not None and m.first_pass.positions(attend_cfg)
    ]


def first_pass_sums(
    adapter, arrays: TokenArrays, attend_cfg, events: dict | None = None
) -> dict[str, np.ndarray]:
    """{"<metric>.<key>": sum} over these sentences, and under norm weighting also {"norm.<metric>.<key>": sum}:
    additive over parts. One pass per part (each has its own N)."""
    out = {}
    if not len(arrays.lengths):
        return out
    for part in first_pass_parts(attend_cfg):
        reduction = Reduction(
            attend_cfg,
            len(arrays.pos_vocab),
            len(arrays.dep_vocab),
            metrics=(part,),
            padding_masked=False,
            bootstrap=False,
        )
        max_len = part.positions(attend_cfg) if adapter.causal else None
        sums = reduce_sentences(
            adapter,
            arrays,
            arrays.length_order(),
            reduction,
            attend_cfg.token_budget,
            events=events,
            max_len=max_len,
        )
        out.update(sums.additive)  # <metric>.<key>, norm.<metric>.<key> (engine.reduction.collect)
    return out


def first_pass_results(attend_cfg, sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The merged first-pass sums of all parts → {array name: array} for the main pass; those of norm weighting
    (norm.<metric>.<key>) → norm.<name>, which the norm-weighted view reads as <name>."""
    results = {}
    for part in first_pass_parts(attend_cfg):
        for weighting in ("", NORM_PREFIX):
            prefix = weighting + part.name + "."
            mine = {k[len(prefix) :]: v for k, v in sums.items() if k.startswith(prefix)}
            if mine:
                results.update({weighting + k: v for k, v in part.result(mine).items()})
    return results


def first_passes(
    adapter, arrays: TokenArrays, attend_cfg, events: dict | None = None
) -> dict[str, np.ndarray]:
    """The first pass over sentences held in memory, finished (bench and tests; the attend stage merges parts)."""
    return first_pass_results(attend_cfg, first_pass_sums(adapter, arrays, attend_cfg, events))
