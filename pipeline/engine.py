"""The attention engine: token arrays → padded batches → forward passes → per-head sums.

The corpus is held as flat arrays (`TokenArrays`); `plan_batches` cuts length-sorted sentences into
batches that fit a padded-token budget; for each batch the model adapter hands over each layer's
attention [B, H, T, T] as the layer produces it, and every enabled metric of the registry reduces
it on the device into per-sentence sums [B, H, ...] (pipeline/metrics/), which the engine adds over
the batch ([H, ...]) and, for the bootstrap (pipeline/bootstrap.py), weighs with each sentence's
Poisson multiplicities ([R, H] per head-level sum). Pair features of all metrics are stacked and
reduced with one batched matmul. Nothing of the attention maps outlives its layer.

Norm weighting (attend.norm_weighting; Kobayashi et al. 2020): where the model adapter gives the
norms n_j = ‖f_h(x_j)‖ of what each head adds per attended piece, every metric but the exemplars is
reduced a second time on α'_ij = α_ij n_j, under keys `norm.<key>` (and `boot.norm.<key>`); rows of α'
do not sum to 1, but every metric is a ratio of sums, so each stays defined. The first pass does the
same, and each weighting's main pass reads its own ᾱ.

Conventions (α_ij: attention from piece i to piece j, positions 0-based; j ≤ i for a causal model,
any j in the sentence for an encoder, adapter.causal): some pieces are null (attend.null_pieces:
position 0, the paper's rule and the default for decoders, or the special pieces such as [CLS] and
[SEP], the default for encoders); unless a sum says so, pairs with a null j and the rows of null
pieces are left out (for a decoder: j = 0 and i = 0); rows i ≥ length (right padding) are zeroed
before any metric sees them. Sums are float64 (float32 on Apple MPS, which has no float64).

The residual stream (the logit lens, pipeline/metrics/logit_lens.py): a metric with `wants_residuals` names the
pieces it reads (`residual_rows`); in the same forward pass the adapter hands over the residual stream at every depth
0..L, the engine keeps those pieces' rows only ([N, D] per depth), and after the forward the metric reduces them
(`reduce_residuals`) into sums over the batch and ranked candidates, with no bootstrap replicates."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from pipeline.alignment import is_special_tag
from pipeline.bootstrap import PREFIX as BOOT, poisson_weights
from pipeline.errors import PipelineError
from pipeline.metrics import enabled
from pipeline.metrics.base import Metric
from pipeline.sums import EXEMPLAR_PREFIX, NORM_PREFIX, Sums


def comma_or_period(pieces: pl.Series) -> pl.Series:
    """Whether each piece is the token "." or "," itself (Clark et al. 2019, Fig. 2): its text, less a leading
    whitespace marker (GPT-2's Ġ, SentencePiece's ▁, a space), is exactly "." or ","."""
    return pieces.str.strip_chars_start("Ġ▁ ").is_in([".", ","])


@dataclass
class TokenArrays:
    """The corpus as flat numpy arrays (tokens sorted by sentence, position) plus per-sentence offsets."""

    sentence_ids: np.ndarray  # [S]
    starts: np.ndarray        # [S] index of each sentence's first piece
    lengths: np.ndarray       # [S]
    token_id: np.ndarray
    pos: np.ndarray           # index into pos_vocab
    dep: np.ndarray
    word: np.ndarray
    head: np.ndarray
    pos_vocab: list[str]
    dep_vocab: list[str]
    special: np.ndarray | None = None  # per piece: a special piece (BOS, [CLS], [SEP]): its pos is a special tag
    comma_or_period: np.ndarray | None = None  # per piece: the token "." or "," itself (token_share, Clark et al.)

    @classmethod
    def from_frame(cls, tokens: pl.DataFrame, pos_vocab: list[str] | None = None,
                   dep_vocab: list[str] | None = None) -> "TokenArrays":
        """Tags are indexed in the given vocabularies (the spaCy model's label sets, the same for every
        part), or in the labels the frame holds."""
        tokens = tokens.sort("sentence_id", "position")
        pos_vocab = pos_vocab if pos_vocab is not None else sorted(tokens["pos"].unique().to_list())
        dep_vocab = dep_vocab if dep_vocab is not None else sorted(tokens["dep"].unique().to_list())
        per_sentence = tokens.group_by("sentence_id", maintain_order=True).len()
        lengths = per_sentence["len"].to_numpy().astype(np.int64)
        return cls(
            sentence_ids=per_sentence["sentence_id"].to_numpy(),
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            lengths=lengths,
            token_id=tokens["token_id"].to_numpy(),
            pos=tokens["pos"].replace_strict(pos_vocab, range(len(pos_vocab)), return_dtype=pl.Int64).to_numpy(),
            dep=tokens["dep"].replace_strict(dep_vocab, range(len(dep_vocab)), return_dtype=pl.Int64).to_numpy(),
            word=tokens["word_index"].to_numpy(), head=tokens["head_word_index"].to_numpy(),
            pos_vocab=pos_vocab, dep_vocab=dep_vocab,
            special=np.array([is_special_tag(t) for t in pos_vocab], dtype=bool)[
                tokens["pos"].replace_strict(pos_vocab, range(len(pos_vocab)), return_dtype=pl.Int64).to_numpy()],
            comma_or_period=comma_or_period(tokens["piece"]).to_numpy() if "piece" in tokens.columns else None,
        )

    def length_order(self) -> np.ndarray:
        """Sentences by (length, sentence_id): results do not depend on corpus order, and padding is minimal."""
        return np.lexsort((self.sentence_ids, self.lengths))

    def batch(self, rows: np.ndarray, device: torch.device, max_len: int | None = None) -> "Batch":
        lengths = self.lengths[rows] if max_len is None else np.minimum(self.lengths[rows], max_len)
        T = int(lengths.max())
        offsets = np.arange(T)[None, :]
        valid = offsets < lengths[:, None]
        flat = np.where(valid, self.starts[rows][:, None] + offsets, 0)

        def take(values, fill):
            return torch.from_numpy(np.where(valid, values[flat], fill)).to(device)

        special = self.special if self.special is not None else np.zeros(len(self.token_id), dtype=bool)
        punct = self.comma_or_period if self.comma_or_period is not None else np.zeros(len(self.token_id), dtype=bool)
        return Batch(input_ids=take(self.token_id, 0), attention_mask=torch.from_numpy(valid.astype(np.int64)).to(device),
                     lengths=torch.from_numpy(lengths).to(device), sentence_ids=torch.from_numpy(self.sentence_ids[rows]).to(device),
                     pos=take(self.pos, 0), dep=take(self.dep, 0), word=take(self.word, -1), head=take(self.head, -1),
                     special=take(special, False), comma_or_period=take(punct, False))


@dataclass
class Batch:
    """A padded batch on the device. pos/dep index the run's tag vocabularies; word/head are -1 for none."""

    input_ids: torch.Tensor       # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    lengths: torch.Tensor         # [B]
    sentence_ids: torch.Tensor    # [B]
    pos: torch.Tensor             # [B, T]
    dep: torch.Tensor             # [B, T]
    word: torch.Tensor            # [B, T]
    head: torch.Tensor            # [B, T]
    special: torch.Tensor | None = None  # [B, T] bool: special pieces (BOS, [CLS], [SEP])
    comma_or_period: torch.Tensor | None = None  # [B, T] bool: the token "." or "," (TokenArrays.comma_or_period)

    @property
    def shape(self):
        return tuple(self.input_ids.shape)


def plan_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive runs whose padded size (count × longest) fits the budget; a longer sentence goes alone.
    With lengths in ascending order padding is minimal."""
    batches, start, longest = [], 0, 0
    for k, n in enumerate(lengths):
        if k > start and (k + 1 - start) * max(longest, n) > budget:
            batches.append(np.arange(start, k))
            start, longest = k, 0
        longest = max(longest, int(n))
    if len(lengths):
        batches.append(np.arange(start, len(lengths)))
    return batches


def null_rule(attend_cfg, causal: bool) -> str:
    """attend.null_pieces resolved: "first" (position 0) or "special" (the special pieces)."""
    rule = getattr(attend_cfg, "null_pieces", "auto")
    return rule if rule != "auto" else ("first" if causal else "special")


class BatchContext:
    """What every layer of one batch shares (masks, pair relations, one-hot tags), computed once
    and only when a metric asks for it. `causal`: whether piece i attends only to j ≤ i (the model
    adapter's); pair masks then hold only j ≤ i."""

    def __init__(self, batch: Batch, n_pos: int, n_dep: int, attend_cfg, first_pass: dict | None = None,
                 row_width: int = 0, causal: bool = True):
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
    def in_sentence(self) -> torch.Tensor:           # [B, T]
        return self.idx[None, :] < self.batch.lengths[:, None]

    @cached
    def null(self) -> torch.Tensor:                  # [B, T] the null pieces (decoders: position 0)
        if self.null_rule == "first":
            return self.in_sentence & (self.idx[None, :] == 0)
        special = self.batch.special if self.batch.special is not None else torch.zeros_like(self.in_sentence)
        return self.in_sentence & special

    @cached
    def null_f(self) -> torch.Tensor:
        return self.null.to(torch.float32)

    @cached
    def attending(self) -> torch.Tensor:             # [B, T] rows of the sentence's non-null pieces (decoders: i ≥ 1)
        return self.in_sentence & ~self.null

    @property
    def receivable(self) -> torch.Tensor:            # [B, T] pieces that receive: the same, non-null and in the sentence
        return self.attending

    @cached
    def attending_f(self) -> torch.Tensor:
        return self.attending.to(torch.float32)

    @cached
    def causal_rows(self) -> torch.Tensor:           # [B, T, T] attending rows i, every j they can attend (j ≤ i if causal)
        rows = self.attending[:, :, None] & self.in_sentence[:, None, :]
        return rows & (self.idx[None, :] <= self.idx[:, None])[None] if self.causal else rows

    @cached
    def nonnull(self) -> torch.Tensor:               # [B, T, T] the above, j non-null (decoders: i ≥ 1, 1 ≤ j ≤ i)
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
        j = self.idx[:, None] - self.offsets(D)[None, :]                             # [T, K]
        inside = (j >= 0) & (j < self.T)
        at = j.clamp(0, self.T - 1)[None].expand(self.B, -1, -1)                        # [B, T, K]
        receives = self.receivable.gather(1, at.reshape(self.B, -1)).reshape(at.shape)
        return at, inside[None] & self.attending[:, :, None] & receives

    @cached
    def different_words(self) -> torch.Tensor:       # [B, T, T] pieces of two different words
        w_i, w_j = self.batch.word[:, :, None], self.batch.word[:, None, :]
        return (w_i >= 0) & (w_j >= 0) & (w_i != w_j)

    @cached
    def attending_parent(self) -> torch.Tensor:      # x_i's word is the head of x_j's word
        return self.nonnull & self.different_words & (self.batch.head[:, None, :] == self.batch.word[:, :, None])

    @cached
    def receiving_parent(self) -> torch.Tensor:      # x_j's word is the head of x_i's word
        return self.nonnull & self.different_words & (self.batch.head[:, :, None] == self.batch.word[:, None, :])

    def onehot(self, values: torch.Tensor, n: int) -> torch.Tensor:
        """[B, T, n] one-hot of a per-piece feature, zero for pieces that cannot receive (null pieces, padding)."""
        return torch.nn.functional.one_hot(values, n).to(torch.float32) * self.receivable[..., None]

    @cached
    def boot_weights(self) -> torch.Tensor | None:   # [R, B] Poisson multiplicities, or None without a bootstrap
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

    def __init__(self, batch: BatchContext, att: torch.Tensor, index: int, padding_masked: bool = True,
                 norms: torch.Tensor | None = None):
        self.batch, self.index = batch, index
        if norms is not None:
            self.norms = norms.float().masked_fill(~batch.in_sentence[:, None, :], 0.0)
        self.att = att.float().masked_fill(~batch.in_sentence[:, None, :, None], 0.0) if padding_masked else att
        self.H = att.shape[1]

    @property
    def first_pass(self) -> dict:
        """The first pass's results under this view's weighting (attention's keys are unprefixed)."""
        first = self.batch.first_pass
        if not self.prefix:
            return first
        return {k[len(self.prefix):]: v for k, v in first.items() if k.startswith(self.prefix)}

    def norm_weighted(self, norms: torch.Tensor) -> "NormWeightedView":
        return NormWeightedView(self, norms)

    @functools.cached_property
    def null_row_share(self) -> torch.Tensor:  # [B, H, T]: Σ_{j null} α_ij / Σ_j α_ij, the numerator (rows sum to 1)
        if self.batch.null_rule == "first":
            return self.att[..., 0]
        return torch.einsum("bhij,bj->bhi", self.att, self.batch.null_f)

    @functools.cached_property
    def nonnull(self) -> torch.Tensor:  # [B, H, T, T]: α_ij of attending rows i and non-null j, 0 elsewhere
        return self.att * self.batch.nonnull_f[:, None]

    @functools.cached_property
    def row_mass(self) -> torch.Tensor:  # [B, H, T]: Σ_{j non-null} α_ij
        return self.nonnull.sum(-1)

    @functools.cached_property
    def received(self) -> torch.Tensor:  # [B, H, T]: Σ_{i attending} α_ij, attention received by each piece
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
    def null_row_share(self) -> torch.Tensor:  # [B, H, T]: Σ_{j null} α'_ij / Σ_j α'_ij (0 for a row without weight)
        total = self.att.sum(-1)
        null = self.att[..., 0] if self.batch.null_rule == "first" else torch.einsum("bhij,bj->bhi", self.att,
                                                                                      self.batch.null_f)
        return torch.where(total > 0, null / total.clamp_min(1e-30), 0.0)


class Reduction:
    """The enabled metrics of a run and how they reduce one batch."""

    def __init__(self, attend_cfg, n_pos: int, n_dep: int, metrics: tuple[Metric, ...] | None = None,
                 first_pass: dict | None = None, row_width: int = 0):
        self.cfg, self.n_pos, self.n_dep = attend_cfg, n_pos, n_dep
        self.metrics = enabled(attend_cfg) if metrics is None else metrics
        self.norm_metrics = tuple(m for m in self.metrics if m.norm_weighting)
        self.first_pass, self.row_width = first_pass, row_width

    def norm_weighted(self, adapter) -> bool:
        """Whether this batch's metrics are also reduced on norm-weighted attention."""
        return bool(self.norm_metrics) and norm_weighting_reason(self.cfg, adapter) is None

    def context(self, batch: Batch, causal: bool = True) -> BatchContext:
        return BatchContext(batch, self.n_pos, self.n_dep, self.cfg, self.first_pass, self.row_width, causal)

    def pair_matrix(self, ctx: BatchContext) -> tuple[list[str], torch.Tensor | None]:
        names, feats = [], []
        for m in self.metrics:
            for name, f in m.pair_features(ctx).items():
                names.append(name)
                feats.append(f.to(torch.float32))
        if not feats:
            return names, None
        return names, torch.stack(feats, dim=-1).reshape(ctx.B, ctx.T * ctx.T, -1)

    @staticmethod
    def reduce(view: LayerView, metrics, names, pairs) -> dict[str, torch.Tensor]:
        """Per-sentence sums [B, H, ...] of one view of a layer (either weighting), keys with the view's prefix."""
        ctx, per_sentence = view.batch, {}
        if pairs is not None:
            B, H, T, _ = view.att.shape
            summed = torch.bmm(view.att.reshape(B, H, T * T), pairs).to(ctx.sum_dtype)  # [B, H, K]
            per_sentence.update({name: summed[..., k] for k, name in enumerate(names)})
        for m in metrics:
            per_sentence.update(m.reduce_layer(view))
        return {view.prefix + k: v for k, v in per_sentence.items()}

    def layer(self, ctx: BatchContext, att: torch.Tensor, index: int, names, pairs,
              norms: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        view = LayerView(ctx, att, index, norms=norms)
        per_sentence = self.reduce(view, self.metrics, names, pairs)
        if norms is not None:
            per_sentence.update(self.reduce(view.norm_weighted(norms), self.norm_metrics, names, pairs))
        return over_batch(per_sentence, lambda: ctx.boot_weights)

    def batch(self, adapter, batch: Batch) -> Sums:
        """One forward pass; each layer is reduced inside the model's forward, as it is produced. Sums that do not
        depend on attention (pair counts) are kept under both weightings, so that each weighting's sums are whole."""
        ctx = self.context(batch, getattr(adapter, "causal", True))
        names, pairs = self.pair_matrix(ctx)
        norm = self.norm_weighted(adapter)
        lens = [(m, rows) for m in self.residual_metrics(adapter) if (rows := m.residual_rows(ctx)).any()]
        kept = [[None] * (adapter.num_layers + 1) for _ in lens]

        def keep(depth, hidden):  # the selected rows only: [N, D] per depth, for after the forward pass
            for (_, rows), store in zip(lens, kept):
                store[depth] = hidden[rows]

        per_layer = adapter.map_attention(
            batch.input_ids, batch.attention_mask,
            lambda index, att, norms=None: self.layer(ctx, att, index, names, pairs, norms), value_norms=norm,
            **({"residuals": keep} if lens else {}))
        stacked = stack_layers(per_layer)
        additive = {k: v for k, v in stacked.items() if not k.startswith(EXEMPLAR_PREFIX)}
        for m in self.metrics:
            counts = {k: v.sum(0) for k, v in m.batch_sums(ctx).items()}
            additive.update(counts)
            if norm and m.norm_weighting:
                additive.update({NORM_PREFIX + k: v for k, v in counts.items()})
        out = Sums(additive, exemplar_candidates(stacked, batch.sentence_ids), self.cfg.exemplars_per_head)
        for (m, rows), residuals in zip(lens, kept):
            out = out + m.reduce_residuals(ctx, rows, residuals, adapter)
        return out

    def residual_metrics(self, adapter) -> list[Metric]:
        """The metrics that read the residual stream (the logit lens) and that this model can give."""
        return [m for m in self.metrics if m.wants_residuals and m.model_reason(adapter) is None]


def over_batch(per_sentence: dict[str, torch.Tensor], weights) -> dict[str, torch.Tensor]:
    """Per-sentence sums [B, H, ...] → their sum over the batch [H, ...]; a head-level sum ([B, H]) also gets its
    bootstrap replicates, weights() [R, B] @ sums → boot.<key> [R, H]. Exemplar candidates stay per sentence.
    `weights` is called only when there is a head-level sum (an exemplar-only pass draws none)."""
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
    out = {"value": value.transpose(0, 2, 1),
           "sentence_id": np.broadcast_to(sentence_ids.cpu().numpy()[None, None, :], (L, H, B)),
           "i": stacked["ex_i"].cpu().numpy().transpose(0, 2, 1),
           "j": stacked["ex_j"].cpu().numpy().transpose(0, 2, 1)}
    if "ex_row" in stacked:  # [L, B, H, R] → [L, H, B, R]
        out["row"] = stacked["ex_row"].cpu().double().numpy().transpose(0, 2, 1, 3)
    return out


def reduce_sentences(adapter, arrays: TokenArrays, rows: np.ndarray, reduction: Reduction, token_budget: int,
                     on_batch=None, events: dict | None = None) -> Sums:
    """A set of sentences (a work unit: rows of `arrays` in ascending length) → their merged sums on the host.
    A batch that runs out of device memory is halved and retried (counted in events["batches_halved_oom"])."""
    total = Sums()
    for batch_rows in plan_batches(arrays.lengths[rows], token_budget):
        total = total + reduce_fitting(adapter, arrays, rows[batch_rows], reduction, events)
        if on_batch is not None:
            on_batch(len(batch_rows))
    total = total.to_numpy()
    bad = total.non_finite_keys()
    if bad:
        raise PipelineError(f"non-finite attention sums ({', '.join(bad)}): the model produced NaN/inf attention "
                            "(model.dtype float16 overflow?); try model.dtype=float32 or bfloat16")
    return total


def fit_in_memory(compute, rows: np.ndarray, lengths: np.ndarray, device: torch.device, events: dict | None) -> Sums:
    """compute(rows) → Sums; on running out of device memory, the rows are halved and each half retried
    (counted in events["batches_halved_oom"]). The retry happens after the handler has been left, so
    the failed pass's tensors (held by the exception's traceback) are freed first."""
    try:
        return compute(rows)
    except torch.OutOfMemoryError:
        pass
    if len(rows) == 1:
        raise PipelineError(f"one sentence of {int(lengths[rows[0]])} pieces does not fit in device memory: "
                            "lower corpus.max_pieces, or use model.dtype=bfloat16")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if events is not None:
        events["batches_halved_oom"] = events.get("batches_halved_oom", 0) + 1
    half = len(rows) // 2
    return (fit_in_memory(compute, rows[:half], lengths, device, events)
            + fit_in_memory(compute, rows[half:], lengths, device, events))


def reduce_fitting(adapter, arrays: TokenArrays, rows: np.ndarray, reduction: Reduction, events: dict | None) -> Sums:
    return fit_in_memory(lambda r: reduction.batch(adapter, arrays.batch(r, adapter.device)), rows, arrays.lengths,
                         adapter.device, events)


def first_pass_of_layer(metric: Metric, view: LayerView, norms: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """One layer's first-pass sums under attention and, given the norms, under norm weighting (norm.<key>)."""
    out = metric.first_pass_layer(view)
    if norms is not None and metric.norm_weighting:
        weighted = view.norm_weighted(norms)
        out.update({weighted.prefix + k: v for k, v in metric.first_pass_layer(weighted).items()})
    return out


def first_pass_sums(adapter, arrays: TokenArrays, attend_cfg, events: dict | None = None) -> dict[str, np.ndarray]:
    """Metrics that need corpus-wide quantities before the main pass (variability's ᾱ over the first N
    positions) get a pass over the first N pieces of every sentence: causal attention there depends on
    nothing later (an encoder's does, so it gets whole sentences). Returns {"<metric>.<key>": sum} over these sentences, and under norm weighting also
    {"norm.<metric>.<key>": sum}: additive over parts."""
    out = {}
    order = arrays.length_order()
    norm = norm_weighting_reason(attend_cfg, adapter) is None
    for metric in enabled(attend_cfg):
        N = metric.first_pass_positions(attend_cfg)
        if not N or not len(order):
            continue
        total = Sums()
        max_len = N if adapter.causal else None
        prefix = np.minimum(arrays.lengths[order], N) if adapter.causal else arrays.lengths[order]
        weighted = norm and metric.norm_weighting

        def first_pass_batch(rows, metric=metric, weighted=weighted):
            batch = arrays.batch(order[rows], adapter.device, max_len=max_len)
            ctx = BatchContext(batch, len(arrays.pos_vocab), len(arrays.dep_vocab), attend_cfg, causal=adapter.causal)
            per_layer = adapter.map_attention(
                batch.input_ids, batch.attention_mask,
                lambda index, att, norms=None: first_pass_of_layer(
                    metric, LayerView(ctx, att, index, padding_masked=False), norms), value_norms=weighted)
            stacked = stack_layers(per_layer)
            counts = metric.first_pass_batch(ctx)
            return Sums({**stacked, **counts, **({NORM_PREFIX + k: v for k, v in counts.items()} if weighted else {})})

        for rows in plan_batches(prefix, attend_cfg.token_budget):
            total = total + fit_in_memory(first_pass_batch, rows, prefix, adapter.device, events)
        for k, v in total.to_numpy().additive.items():
            weighting = NORM_PREFIX if k.startswith(NORM_PREFIX) else ""
            out[f"{weighting}{metric.name}.{k[len(weighting):]}"] = v
    return out


def first_pass_results(attend_cfg, sums: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The merged first-pass sums of all parts → {array name: array} for the main pass; those of norm weighting
    (norm.<metric>.<key>) → norm.<name>, which the norm-weighted view reads as <name>."""
    results = {}
    for metric in enabled(attend_cfg):
        if metric.first_pass_positions(attend_cfg):
            for weighting in ("", NORM_PREFIX):
                prefix = weighting + metric.name + "."
                mine = {k[len(prefix):]: v for k, v in sums.items() if k.startswith(prefix)}
                if mine:
                    results.update({weighting + k: v for k, v in metric.first_pass_result(mine).items()})
    return results


def first_passes(adapter, arrays: TokenArrays, attend_cfg, events: dict | None = None) -> dict[str, np.ndarray]:
    """The first pass over sentences held in memory, finished (bench and tests; the attend stage merges parts)."""
    return first_pass_results(attend_cfg, first_pass_sums(adapter, arrays, attend_cfg, events))
