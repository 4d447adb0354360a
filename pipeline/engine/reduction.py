"""The forward pass and the reduction: one batch through the model (`adapter.map_attention`), each
layer's attention reduced inside the forward, as the layer produces it, by a set of device parts into
per-sentence sums [B, H, ...], added over the batch ([H, ...]) and, for the bootstrap, weighed with
each sentence's Poisson multiplicities ([R, H] per head-level sum; pipeline/sums.py draws them,
pipeline/analysis/bootstrap.py reads the replicates). Pair features of all parts are stacked and
reduced with one batched matmul. Nothing of the attention maps outlives its layer.

One path for both passes: the main pass reduces the enabled metrics on whole sentences; the first
pass (pipeline/engine/first_pass.py) reduces the metrics' `first_pass` parts with the same
`Reduction`, on batches cut to the first N pieces, without bootstrap replicates. Every part's sums
enter the batch's Sums through `collect`.

The residual stream (the logit lens, pipeline/metrics/logit_lens.py): a metric with
`wants_residuals` names the pieces it reads (`residual_rows`); in the same forward pass the adapter
hands over the residual stream at every depth 0..L, the engine keeps those pieces' rows only
([N, D] per depth), and after the forward the metric reduces them (`reduce_residuals`) into sums
over the batch and ranked candidates, with no bootstrap replicates."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.engine.batches import Batch, TokenArrays, fit_in_memory, plan_batches
from pipeline.engine.views import BatchContext, LayerView, norm_weighting_reason
from pipeline.errors import PipelineError
from pipeline.metrics import enabled
from pipeline.metrics.base import DevicePart
from pipeline.sums import BOOT_PREFIX as BOOT
from pipeline.sums import EXEMPLAR_PREFIX, NORM_PREFIX, Sums


def collect(part, sums: dict, prefix: str = "") -> dict:
    """The one way a part's sums (pair features, layer sums, batch sums, residual sums) enter a batch's Sums: under
    its own name, {prefix + "<metric>.<key>": value}, prefix being the weighting's ("" or "norm."), so that no two
    metrics can write the same sum; a key the part does not declare in `provides` is refused. Exemplar candidates
    (ex_*) are not sums and keep their names."""
    out = {}
    for key, value in sums.items():
        if key.startswith(EXEMPLAR_PREFIX):  # candidates, not sums: exemplar_candidates reads them
            out[key] = value
        elif key not in part.provides:
            raise PipelineError(
                f"{part.name} returned a sum {key!r} it does not declare (provides)"
            )
        else:
            out[f"{prefix}{part.name}.{key}"] = value
    return out


class Reduction:
    """A set of device parts (the enabled metrics, or a first pass) and how they reduce one batch.
    padding_masked: padding rows zeroed before a part sees them (the main pass); bootstrap: head-level sums get
    their replicates (the main pass; a first pass's sums are means' ingredients, not statistics)."""

    def __init__(
        self,
        attend_cfg,
        n_pos: int,
        n_dep: int,
        metrics: tuple[DevicePart, ...] | None = None,
        first_pass: dict | None = None,
        row_width: int = 0,
        padding_masked: bool = True,
        bootstrap: bool = True,
    ):
        self.cfg, self.n_pos, self.n_dep = attend_cfg, n_pos, n_dep
        self.metrics = enabled(attend_cfg) if metrics is None else metrics
        self.norm_metrics = tuple(m for m in self.metrics if m.norm_weighting)
        self.first_pass, self.row_width = first_pass, row_width
        self.padding_masked, self.bootstrap = padding_masked, bootstrap

    def norm_weighted(self, adapter) -> bool:
        """Whether this batch's metrics are also reduced on norm-weighted attention."""
        return bool(self.norm_metrics) and norm_weighting_reason(self.cfg, adapter) is None

    def context(self, batch: Batch, causal: bool = True) -> BatchContext:
        return BatchContext(
            batch, self.n_pos, self.n_dep, self.cfg, self.first_pass, self.row_width, causal
        )

    def pair_matrix(
        self, ctx: BatchContext
    ) -> tuple[list[tuple[DevicePart, str]], torch.Tensor | None]:
        """Every part's pair features as the columns of one [B, T·T, K] matrix, and whose each column is."""
        columns, feats = [], []
        for m in self.metrics:
            for name, f in m.pair_features(ctx).items():
                columns.append((m, name))
                feats.append(f.to(torch.float32))
        if not feats:
            return columns, None
        return columns, torch.stack(feats, dim=-1).reshape(ctx.B, ctx.T * ctx.T, -1)

    @staticmethod
    def reduce(view: LayerView, metrics, columns, pairs) -> dict[str, torch.Tensor]:
        """Per-sentence sums [B, H, ...] of one view of a layer (either weighting), keys with the view's prefix."""
        ctx, per_sentence = view.batch, {}
        if pairs is not None:
            B, H, T, _ = view.att.shape
            summed = torch.bmm(view.att.reshape(B, H, T * T), pairs).to(ctx.sum_dtype)  # [B, H, K]
            for k, (m, name) in enumerate(columns):
                per_sentence.update(collect(m, {name: summed[..., k]}, view.prefix))
        for m in metrics:
            per_sentence.update(collect(m, m.reduce_layer(view), view.prefix))
        return per_sentence

    def layer(
        self,
        ctx: BatchContext,
        att: torch.Tensor,
        index: int,
        columns,
        pairs,
        norms: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        view = LayerView(ctx, att, index, padding_masked=self.padding_masked, norms=norms)
        per_sentence = self.reduce(view, self.metrics, columns, pairs)
        if norms is not None:
            per_sentence.update(
                self.reduce(view.norm_weighted(norms), self.norm_metrics, columns, pairs)
            )
        return over_batch(
            per_sentence, (lambda: ctx.boot_weights) if self.bootstrap else (lambda: None)
        )

    def batch(self, adapter, batch: Batch) -> Sums:
        """One forward pass; each layer is reduced inside the model's forward, as it is produced. Sums that do not
        depend on attention (pair counts) are kept under both weightings, so that each weighting's sums are whole."""
        ctx = self.context(batch, getattr(adapter, "causal", True))
        columns, pairs = self.pair_matrix(ctx)
        norm = self.norm_weighted(adapter)
        lens = [
            (m, rows)
            for m in self.residual_metrics(adapter)
            if (rows := m.residual_rows(ctx)).any()
        ]
        kept = [[None] * (adapter.num_layers + 1) for _ in lens]

        def keep(depth, hidden):
            # the selected rows only: [N, D] per depth, for after the forward pass
            for (_, rows), store in zip(lens, kept):
                store[depth] = hidden[rows]

        per_layer = adapter.map_attention(
            batch.input_ids,
            batch.attention_mask,
            lambda index, att, norms=None: self.layer(ctx, att, index, columns, pairs, norms),
            value_norms=norm,
            **({"residuals": keep} if lens else {}),
        )
        stacked = stack_layers(per_layer)
        additive = {k: v for k, v in stacked.items() if not k.startswith(EXEMPLAR_PREFIX)}
        for m in self.metrics:
            counts = {k: v.sum(0) for k, v in m.batch_sums(ctx).items()}
            additive.update(collect(m, counts))
            if norm and m.norm_weighting:
                additive.update(collect(m, counts, NORM_PREFIX))
        out = Sums(
            additive, exemplar_candidates(stacked, batch.sentence_ids), self.cfg.exemplars_per_head
        )
        for (m, rows), residuals in zip(lens, kept):
            lensed = m.reduce_residuals(ctx, rows, residuals, adapter)
            out = out + dataclasses.replace(lensed, additive=collect(m, lensed.additive))
        return out

    def residual_metrics(self, adapter) -> list[DevicePart]:
        """The metrics that read the residual stream (the logit lens) and that this model can give."""
        return [m for m in self.metrics if m.wants_residuals and m.model_reason(adapter) is None]


def over_batch(per_sentence: dict[str, torch.Tensor], weights) -> dict[str, torch.Tensor]:
    """Per-sentence sums [B, H, ...] → their sum over the batch [H, ...]; a head-level sum ([B, H]) also gets its
    bootstrap replicates, weights() [R, B] @ sums → boot.<key> [R, H], unless weights() is None (no bootstrap, or
    a first pass). Exemplar candidates stay per sentence. `weights` is called only when there is a head-level sum
    (an exemplar-only pass draws none)."""
    out = {}
    for key, value in per_sentence.items():
        if key.startswith(EXEMPLAR_PREFIX):
            out[key] = value
            continue
        out[key] = value.sum(0)
        if value.ndim == 2 and (w := weights()) is not None:
            out[BOOT + key] = w @ value
    return out


def stack_layers(per_layer: list[dict]) -> dict[str, torch.Tensor]:
    """[{key: [H, ...]} per layer] → {key: [L, H, ...]}."""
    return {k: torch.stack([p[k] for p in per_layer]) for k in per_layer[0]}


def exemplar_candidates(stacked: dict, sentence_ids: torch.Tensor) -> dict | None:
    """Per-batch candidates ([L, B, H] on the device) → the exemplar layout of Sums ([L, H, B] on the host)."""
    if "ex_value" not in stacked:
        return None
    value = stacked["ex_value"].cpu().double().numpy()
    L, B, H = value.shape
    out = {
        "value": value.transpose(0, 2, 1),
        "sentence_id": np.broadcast_to(sentence_ids.cpu().numpy()[None, None, :], (L, H, B)),
        "i": stacked["ex_i"].cpu().numpy().transpose(0, 2, 1),
        "j": stacked["ex_j"].cpu().numpy().transpose(0, 2, 1),
    }
    if "ex_row" in stacked:  # [L, B, H, R] → [L, H, B, R]
        out["row"] = stacked["ex_row"].cpu().double().numpy().transpose(0, 2, 1, 3)
    return out


def reduce_sentences(
    adapter,
    arrays: TokenArrays,
    rows: np.ndarray,
    reduction: Reduction,
    token_budget: int,
    on_batch=None,
    events: dict | None = None,
    max_len: int | None = None,
) -> Sums:
    """A set of sentences (a work unit: rows of `arrays` in ascending length) → their merged sums on the host.
    max_len: each sentence cut to its first max_len pieces (a causal model's first pass). A batch that runs out of
    device memory is halved and retried (counted in events["batches_halved_oom"])."""
    lengths = arrays.lengths if max_len is None else np.minimum(arrays.lengths, max_len)
    total = Sums()
    for batch_rows in plan_batches(lengths[rows], token_budget):
        total = total + fit_in_memory(
            lambda r: reduction.batch(adapter, arrays.batch(r, adapter.device, max_len=max_len)),
            rows[batch_rows],
            lengths,
            adapter.device,
            events,
        )
        if on_batch is not None:
            on_batch(len(batch_rows))
    total = total.to_numpy()
    bad = total.non_finite_keys()
    if bad:
        raise PipelineError(
            f"non-finite attention sums ({', '.join(bad)}): the model produced NaN/inf attention "
            "(model.dtype float16 overflow?); try model.dtype=float32 or bfloat16"
        )
    return total
