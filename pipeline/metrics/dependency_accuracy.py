"""Per-head dependency accuracy with offset baselines (Clark et al. 2019, "What Does BERT Look At?", section 4):
for each dependency relation and each direction, the share of cases in which a head's most-attended non-null piece
lies in the related word.

Cases, at the level of pieces (every piece of a word carries the word's features, footnote 6). An arc joins a
dependent word d (its label is the relation) to its head word h ≠ d.
- dependent_to_head: each non-null piece i of d is a case when h has a non-null piece i can attend to (a causal model:
  at a position ≤ i, since it can only attend leftwards; an encoder: anywhere in the sentence). Null pieces
  (position 0 of a decoder, [CLS] and [SEP] of an encoder) are left out as everywhere else;
- head_to_dependent: each non-null piece i of h is a case for each of its dependents d with a piece i can attend to.
A case is correct when argmax_j α_ij over the non-null j, the head's most-attended non-null piece, lies in any piece
of the related word. Ties go to the first maximum, the leftmost piece (torch.argmax's rule). The cases (n) depend on
the corpus only: they are the same for every head.

Baseline (attention-free, as Clark et al.'s): the best fixed relative offset, "the related word is at the piece
i − k", for k = 1..OFFSETS, and for an encoder also k = −1..−OFFSETS (to the right; k = 0, the piece itself, is never
in another word); per relation and direction the k with the most correct cases (ties to the first: 1..OFFSETS, then
−1..−OFFSETS).

The argmax runs over the pairs the model can attend (engine.BatchContext.nonnull: for a causal model j ≤ i), every
other weight set to −1, so a row whose non-null weights are all 0 picks its first non-null piece."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline.metrics.base import FigureSpec, Finding, Metric, ratio

OFFSETS = 10  # baseline offsets k = 1..OFFSETS
DIRECTIONS = ("dependent_to_head", "head_to_dependent")
MIN_CASES = 30  # a (relation, direction) enters the findings with at least this many cases
SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "relation": pl.String, "direction": pl.String, "accuracy": pl.Float64,
          "n": pl.Int64, "baseline_offset": pl.Int32, "baseline_accuracy": pl.Float64}


def first_pieces(ctx) -> torch.Tensor:
    """[B, T]: the piece is its word's first piece at a position ≥ 1 (one piece stands for the word, so that each
    (attending piece, dependent word) pair is counted once). A word's pieces are consecutive (pieces and words are
    both in text order, pipeline/alignment.py), so that is position 1 or a piece whose predecessor is another word."""
    word = ctx.batch.word
    previous = torch.cat([torch.full_like(word[:, :1], -1), word[:, :-1]], 1)
    after_null = torch.cat([torch.ones_like(ctx.null[:, :1]), ctx.null[:, :-1]], 1)  # decoders: position 1
    return ctx.attending & (word >= 0) & (after_null | (previous != word))


def signed(index: np.ndarray) -> np.ndarray:
    """Index into the baseline's offsets → the offset k (1..OFFSETS, then −1..−OFFSETS for an encoder)."""
    return np.where(index < OFFSETS, index + 1, OFFSETS - index - 1)


class DependencyAccuracy(Metric):
    name = "dependency_accuracy"
    order = 45
    description = ("Clark et al. (2019): per relation and direction, the share of cases in which the head's most-attended "
                   "non-null piece lies in the related word, with the best fixed-offset baseline.")
    table_schemas = {"dep_accuracy": SCHEMA}
    figures = (FigureSpec(
        "beyond_dependency_accuracy", "Dependency accuracy of the best head per relation (Clark et al. 2019, Table 1)",
        "After Clark et al. (2019), Table 1: for the most frequent dependency relations (by cases), in each direction, "
        "the accuracy of the single best head (the share of cases in which its most-attended non-null piece lies in the "
        "related word: the head word when a piece of the dependent attends, a dependent when a piece of the head word "
        "attends; for a causal model the related word must lie at least partly at or left of the attending piece) against "
        f"the best fixed-offset baseline (the piece k = 1..{OFFSETS} to the left, for an encoder also to the right, the "
        "same k for every case of the relation). Every piece of the attending word is a case; n is the number of cases. "
        "Beside each bar: the best head (L layer H head) and the baseline's offset (negative: to the right).", "dependency_accuracy", inputs=("dep_accuracy",)),)

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.dependency_accuracy else "attend.dependency_accuracy is false"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        B, H, T = ctx.B, layer.H, ctx.T
        # [B, H, T]: the most-attended non-null piece, the first on ties (a row whose non-null weights are all 0, as
        # float16 can make them: its first non-null piece, never a null one)
        top = layer.att.masked_fill(~ctx.nonnull[:, None], -1.0).argmax(-1)
        at_top = top[..., None]

        def looked_up(mask):  # mask [B, T, T] at (i, top_i), per head → [B, H, T]
            return mask[:, None].expand(B, H, T, T).gather(3, at_top).squeeze(-1)

        to_head = looked_up(ctx.receiving_parent).to(torch.float32)    # top lies in the attending word's head word
        to_dependent = looked_up(ctx.attending_parent)                 # top lies in a dependent of the attending word
        by_attending = torch.einsum("bhi,bir->bhr", to_head, ctx.dep_onehot)  # relation: the attending piece's label
        dep_at_top = ctx.batch.dep.gather(1, top.reshape(B, H * T)).reshape(B, H, T)  # relation: the dependent's label
        by_dependent = torch.zeros(B, H, ctx.n_dep, device=ctx.device).scatter_add_(
            2, dep_at_top, to_dependent.to(torch.float32))
        return {"depacc_correct": torch.stack([by_attending, by_dependent], 2).to(ctx.sum_dtype)}  # [B, H, 2, R]

    def batch_sums(self, ctx) -> dict:
        onehot, B, T = ctx.dep_onehot, ctx.B, ctx.T  # dep_onehot is zero at position 0 and on padding
        to_head, to_dependent = ctx.receiving_parent, ctx.attending_parent
        dependent_words = (to_dependent & first_pieces(ctx)[:, None, :]).sum(1, dtype=torch.float32)  # [B, j]: cases
        cases = torch.stack([torch.einsum("bi,bir->br", to_head.any(-1).to(torch.float32), onehot),      # one per (i, word)
                             torch.einsum("bj,bjr->br", dependent_words, onehot)], 1)  # [B, 2, R]
        offset, valid = ctx.at_offsets(OFFSETS)  # [B, T, K]: j = i − k, k = 1..10 (and −1..−10 for an encoder)
        K = offset.shape[-1]
        head_at = (to_head.gather(2, offset) & valid).to(torch.float32)            # piece i − k lies in i's head word
        dependent_at = (to_dependent.gather(2, offset) & valid).to(torch.float32)  # … in a dependent of i's word
        slot = ctx.batch.dep.gather(1, offset.reshape(B, -1)).reshape(B, T, K) * K + torch.arange(K, device=ctx.device)
        by_dependent = torch.zeros(B, ctx.n_dep * K, device=ctx.device).scatter_add_(
            1, slot.reshape(B, -1), dependent_at.reshape(B, -1)).reshape(B, ctx.n_dep, K)  # (label of i − k, k)
        baseline = torch.stack([torch.einsum("bik,bir->brk", head_at, onehot), by_dependent], 1)  # [B, 2, R, K]
        return {"depacc_cases": cases.to(ctx.sum_dtype), "depacc_offset_correct": baseline.to(ctx.sum_dtype)}  # per sentence

    def tables(self, sums, inputs) -> dict:
        correct, cases = np.asarray(sums["depacc_correct"]), np.asarray(sums["depacc_cases"])  # [L, H, 2, R], [2, R]
        offsets = np.asarray(sums["depacc_offset_correct"])                                     # [2, R, K]
        L, H, D, R = correct.shape
        best = offsets.argmax(-1)  # [2, R]: first maximum, the smallest offset on ties
        base = ratio(np.take_along_axis(offsets, best[..., None], -1)[..., 0], cases)
        layer, head, direction, relation = np.meshgrid(np.arange(L), np.arange(H), np.arange(D), np.arange(R), indexing="ij")
        n = np.broadcast_to(cases, correct.shape).ravel()
        table = pl.DataFrame({
            "layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
            "relation": pl.Series(np.asarray(inputs["dep_vocab"], dtype=object)[relation.ravel()], dtype=pl.String),
            "direction": pl.Series(np.asarray(DIRECTIONS, dtype=object)[direction.ravel()], dtype=pl.String),
            "accuracy": ratio(correct, cases).ravel(), "n": np.rint(n).astype(np.int64),
            "baseline_offset": np.broadcast_to(signed(best), correct.shape).ravel().astype(np.int32),
            "baseline_accuracy": np.broadcast_to(base, correct.shape).ravel()}, schema=SCHEMA)
        return {"dep_accuracy": table.filter(pl.col("n") > 0)}

    def findings(self, heads, layers, sums) -> list[Finding]:
        correct, cases = np.asarray(sums["depacc_correct"]), np.asarray(sums["depacc_cases"])
        offsets = np.asarray(sums["depacc_offset_correct"])
        frequent = cases >= MIN_CASES  # [2, R]
        best_head = ratio(correct, cases).reshape(-1, *cases.shape).max(0)[frequent] if frequent.any() else np.array([])
        base = ratio(offsets.max(-1), cases)[frequent]
        gain = float(np.mean(best_head - base)) if best_head.size else float("nan")
        total = cases.sum()
        pooled_head = ratio(correct.sum((-1, -2)), total)  # [L, H]: every case of every relation and direction
        pooled_base = ratio(offsets.sum((0, 1)), total)    # [K]: one offset for every case
        return [Finding("dep_accuracy_mean_gain", gain, n=int(frequent.sum())),
                Finding("dep_accuracy_all_best_head", float(np.max(pooled_head)) if total > 0 else float("nan"), n=int(total)),
                Finding("dep_accuracy_all_baseline", float(np.max(pooled_base)) if total > 0 else float("nan"), n=int(total))]


METRIC = DependencyAccuracy()
