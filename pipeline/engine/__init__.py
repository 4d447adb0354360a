"""The attention engine: token arrays → padded batches → forward passes → per-head sums.

One room per concern, each a module of this package:
  batches.py     the corpus as flat arrays (`TokenArrays`), padded batches that fit a token budget (`plan_batches`),
                 a batch that runs out of device memory halved and retried (`fit_in_memory`)
  views.py       what a metric reads: the batch's shared masks (`BatchContext`) and one layer's attention under
                 either weighting (`LayerView`, `NormWeightedView`)
  reduction.py   the forward call through the model adapter and the reduction of each layer, on the device and in
                 the batch, into sums that merge (`Reduction`, `reduce_sentences`); every part's sums enter the
                 batch's Sums through `collect`
  first_pass.py  the metrics' first passes (variability's ᾱ) through the same `Reduction`, on truncated batches

The names below are the engine's public ones: import them from `pipeline.engine`."""

from pipeline.engine.batches import Batch, TokenArrays, comma_or_period, fit_in_memory, plan_batches
from pipeline.engine.first_pass import (
    first_pass_parts,
    first_pass_results,
    first_pass_sums,
    first_passes,
)
from pipeline.engine.reduction import (
    Reduction,
    collect,
    exemplar_candidates,
    over_batch,
    reduce_sentences,
    stack_layers,
)
from pipeline.engine.views import (
    BatchContext,
    LayerView,
    NormWeightedView,
    norm_weighting_reason,
    null_rule,
)

__all__ = [
    "Batch",
    "BatchContext",
    "LayerView",
    "NormWeightedView",
    "Reduction",
    "TokenArrays",
    "collect",
    "comma_or_period",
    "exemplar_candidates",
    "first_pass_parts",
    "first_pass_results",
    "first_pass_sums",
    "first_passes",
    "fit_in_memory",
    "norm_weighting_reason",
    "null_rule",
    "over_batch",
    "plan_batches",
    "reduce_sentences",
    "stack_layers",
]
