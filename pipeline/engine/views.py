"""What a metric reads: a batch's shared masks and relations (`BatchContext`) and one layer's attention under
either weighting (`LayerView`, `NormWeightedView`).

A room of its own because this is the metric author's side of the engine: every device part
(pipeline/metrics/) reduces a `LayerView` and reads a `BatchContext`, and nothing here calls the model.

Conventions (α_ij: attention from piece i to piece j, positions 0-based; j ≤ i for a causal model,
any j in the sentence for an encoder, adapter.causal): some pieces are null (attend.null_pieces:
position 0, the paper's rule and the default for decoders, or the special pieces such as [CLS] and
[SEP], the default for encoders); unless a sum says so, pairs with a null j and the rows of null
pieces are left out (for a decoder: j = 0 and i = 0); rows i ≥ length (right padding) are zeroed
before any metric sees them (the main pass's views; the first pass's keep them as the model gives them and
mask what they sum). Sums are float64 (float32 on Apple MPS, which has no float64).

Norm weighting (attend.norm_weighting; Kobayashi et al. 2020): where the model adapter gives the
norms n_j = ‖f_h(x_j)‖ of what each head adds per attended piece, a metric is also reduced on
α'_ij = α_ij n_j (`NormWeightedView`, sums under `norm.<key>`); rows of α' do not sum to 1, but every
metric is a ratio of sums, so each stays defined."""

from __future__ import annotations

import functools

import torch

from pipeline.engine.batches import Batch
from pipeline.sums import NORM_PREFIX, poisson_weights


def null_rule(attend_cfg, causal: bool) -> str:
    """attend.null_pieces resolved: "first" (position 0) or "special" (the special pieces)."""
    rule = getattr(attend_cfg, "null_pieces", "auto")
    return rule if rule != "auto" else ("first" if causal else "special")


class BatchContext:
    """What every layer of one batch shares (masks, pair relations, one-hot tags), computed once
    and only when a metric asks for it. `causal`: whether piece i attends only to j ≤ i (the model
    adapter's); pair masks then hold only j ≤ i."""

    def __init__(
        self,
        batch: Batch,
        n_pos: int,
        n_dep: int,
        attend_cfg,
        first_pass: dict | None = None,
        row_width: int = 0,
        causal: bool = True,
    ):
        self.batch, self.n_pos, self.n_dep, self.cfg = batch, n_pos, n_dep, attend_cfg
        self.first_pass = first_pass or {}
        self.row_width = row_width
        self.causal = causal
        self.null_rule = null_rule(attend_cfg, causal)
        self.B, self.T = batch.shape
        self.device = batch.input_ids.device
        self.sum_dtype = torch.float32 if self.device.type == "mps" else torch.float64
        self.idx = torch.arange(self.T, device=self.device)

    cached = functools.cached_property

    def memo(self, key: str, make):
        """make() once per batch, shared by the layers (a metric's batch-only tensors: dependency accuracy's words,
        token share's categories), like the cached properties above but owned by the metric that makes it."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @functools.cached_property
    def _memo(self) -> dict:
        return {}

    @cached
    def in_sentence(self) -> torch.Tensor:  # [B, T]
        return self.idx[None, :] < self.batch.lengths[:, None]

    @cached
    def null(self) -> torch.Tensor:  # [B, T] the null pieces (decoders: position 0)
        if self.null_rule == "first":
            return self.in_sentence & (self.idx[None, :] == 0)
        special = (
            self.batch.special
            if self.batch.special is not None
            else torch.zeros_like(self.in_sentence)
        )
        return self.in_sentence & special

    @cached
    def null_f(self) -> torch.Tensor:
        return self.null.to(torch.float32)

    @cached
    def attending(self) -> torch.Tensor:
        """[B, T] rows of the sentence's non-null pieces (decoders: i ≥ 1)"""
        return self.in_sentence & ~self.null

    @property
    def receivable(self) -> torch.Tensor:
        """[B, T] pieces that receive: the same, non-null and in the sentence"""
        return self.attending

    @cached
    def attending_f(self) -> torch.Tensor:
        return self.attending.to(torch.float32)

    @cached
    def causal_rows(self) -> torch.Tensor:
        """[B, T, T] attending rows i, every j they can attend (j ≤ i if causal)"""
        rows = self.attending[:, :, None] & self.in_sentence[:, None, :]
        return rows & (self.idx[None, :] <= self.idx[:, None])[None] if self.causal else rows

    @cached
    def nonnull(self) -> torch.Tensor:
        """[B, T, T] the above, j non-null (decoders: i ≥ 1, 1 ≤ j ≤ i)"""
        return self.causal_rows & self.receivable[:, None, :]

    @cached
    def nonnull_f(self) -> torch.Tensor:
        return self.nonnull.to(torch.float32)

    def offsets(self, D: int) -> torch.Tensor:
        """The offsets d = i − j of a positional profile: 1..D to the left, and for an encoder also −1..−D (right)."""
        left = torch.arange(1, D + 1, device=self.device)
        return left if self.causal else torch.cat([left, -left])

    def at_offsets(self, D: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, K] column j = i − d of row i at each offset d of offsets(D) (clamped into the row), and whether (i, j)
        is a non-null pair: i attends, j receives (inside the sentence, non-null)."""
        j = self.idx[:, None] - self.offsets(D)[None, :]  # [T, K]
        inside = (j >= 0) & (j < self.T)
        at = j.clamp(0, self.T - 1)[None].expand(self.B, -1, -1)  # [B, T, K]
        receives = self.receivable.gather(1, at.reshape(self.B, -1)).reshape(at.shape)
        return at, inside[None] & self.attending[:, :, None] & receives

    @cached
    def different_words(self) -> torch.Tensor:  # [B, T, T] pieces of two different words
        w_i, w_j = self.batch.word[:, :, None], self.batch.word[:, None, :]
        return (w_i >= 0) & (w_j >= 0) & (w_i != w_j)

    @cached
    def attending_parent(self) -> torch.Tensor:  # x_i's word is the head of x_j's word
        return (
            self.nonnull
            & self.different_words
            & (self.batch.head[:, None, :] == self.batch.word[:, :, None])
        )

    @cached
    def receiving_parent(self) -> torch.Tensor:  # x_j's word is the head of x_i's word
        return (
            self.nonnull
            & self.different_words
            & (self.batch.head[:, :, None] == self.batch.word[:, None, :])
        )

    def onehot(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """[B, T, n] one-hot of a per-piece feature, zero for pieces that cannot receive (null pieces, padding)."""
        return torch.nn.functional.one_hot(values, n).to(torch.float32) * self.receivable[..., None]

    @cached
    def boot_weights(self) -> torch.Tensor | None:
        """[R, B] Poisson multiplicities, or None without a bootstrap"""
        R = getattr(self.cfg, "bootstrap_replicates", 0)
        if not R:
            return None
        w = poisson_weights(self.batch.sentence_ids.cpu().numpy(), R, self.cfg.bootstrap_seed)
        return torch.from_numpy(w).to(device=self.device, dtype=self.sum_dtype)

    @cached
    def pos_onehot(self) -> torch.Tensor:
        return self.onehot(self.batch.pos, self.n_pos)

    @cached
    def dep_onehot(self) -> torch.Tensor:
        return self.onehot(self.batch.dep, self.n_dep)


def norm_weighting_reason(attend_cfg, adapter) -> str | None:
    """Why a run has no norm-weighted sums (off in the config, or a model whose value path failed its invariant,
    pipeline/models/invariants.py), or None when it has them."""
    if not attend_cfg.norm_weighting:
        return "attend.norm_weighting is false"
    return adapter.value_norms_reason


class LayerView:
    """One layer's attention for one batch, padding rows zeroed, with the intermediates that
    several metrics share. `prefix` is its weighting's: "" for attention, "norm." for norm-weighted."""

    prefix = ""
    norms = None  # [B, H, T] the value norms ‖f_h(x_j)‖ (padding zeroed) where the pass has them, for a metric that
    #               reports them beside attention (token_share, Kobayashi et al. 2020); None elsewhere

    def __init__(
        self,
        batch: BatchContext,
        att: torch.Tensor,
        index: int,
        padding_masked: bool = True,
        norms: torch.Tensor | None = None,
    ):
        self.batch, self.index = batch, index
        if norms is not None:
            self.norms = norms.float().masked_fill(~batch.in_sentence[:, None, :], 0.0)
        self.att = (
            att.float().masked_fill(~batch.in_sentence[:, None, :, None], 0.0)
            if padding_masked
            else att
        )
        self.H = att.shape[1]

    @property
    def first_pass(self) -> dict:
        """The first pass's results under this view's weighting (attention's keys are unprefixed)."""
        first = self.batch.first_pass
        if not self.prefix:
            return first
        return {k[len(self.prefix) :]: v for k, v in first.items() if k.startswith(self.prefix)}

    def norm_weighted(self, norms: torch.Tensor) -> "NormWeightedView":
        return NormWeightedView(self, norms)

    @functools.cached_property
    def null_row_share(self) -> torch.Tensor:
        """[B, H, T]: Σ_{j null} α_ij / Σ_j α_ij, the numerator (rows sum to 1)"""
        if self.batch.null_rule == "first":
            return self.att[..., 0]
        return torch.einsum("bhij,bj->bhi", self.att, self.batch.null_f)

    @functools.cached_property
    def nonnull(self) -> torch.Tensor:
        """[B, H, T, T]: α_ij of attending rows i and non-null j, 0 elsewhere"""
        return self.att * self.batch.nonnull_f[:, None]

    @functools.cached_property
    def row_mass(self) -> torch.Tensor:  # [B, H, T]: Σ_{j non-null} α_ij
        return self.nonnull.sum(-1)

    @functools.cached_property
    def received(self) -> torch.Tensor:
        """[B, H, T]: Σ_{i attending} α_ij, attention received by each piece"""
        return torch.einsum("bhij,bi->bhj", self.att, self.batch.attending_f)


class NormWeightedView(LayerView):
    """The same layer under norm weighting: α'_ij = α_ij n_j, n_j = ‖f_h(x_j)‖ (Kobayashi et al. 2020), the norm
    of what head h adds to piece i for piece j. Norms of padding pieces are zeroed (they are never attended, and
    a padding piece's norm must not turn a zero weight into NaN)."""

    prefix = NORM_PREFIX

    def __init__(self, raw: LayerView, norms: torch.Tensor):
        self.batch, self.index, self.H = raw.batch, raw.index, raw.H
        if raw.norms is not None:  # already masked by LayerView
            norms = raw.norms
        else:
            norms = norms.float().masked_fill(~raw.batch.in_sentence[:, None, :], 0.0)
        self.att = raw.att.float() * norms[:, :, None, :]

    @functools.cached_property
    def null_row_share(self) -> torch.Tensor:
        """[B, H, T]: Σ_{j null} α'_ij / Σ_j α'_ij (0 for a row without weight)"""
        total = self.att.sum(-1)
        null = (
            self.att[..., 0]
            if self.batch.null_rule == "first"
            else torch.einsum("bhij,bj->bhi", self.att, self.batch.null_f)
        )
        return torch.where(total > 0, null / total.clamp_min(1e-30), 0.0)
