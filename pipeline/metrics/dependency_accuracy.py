"""Per-head dependency accuracy with offset baselines, as Clark et al. (2019, "What Does BERT Look At?", section 4.2,
Table 1) define it: at the level of words, each word's predicted head is the most-attended-to *other* word.

Word-level attention (their "mean" mode): a word's attention to another word is the sum of its attention to that
word's pieces, and a word split into several pieces attends with the mean of its pieces' rows. Null pieces (position
0 of a decoder, [CLS] and [SEP] of an encoder: Clark et al. drop [CLS] and [SEP]) neither attend nor receive here:
a word's row is the mean over its non-null pieces, its column the sum over them. A word is *present* when it has a
non-null piece; only present words are predicted or predict.

Cases: every present word d (its relation: d's label, the ROOT word included, as in Clark et al.'s "all"), whose gold
head is another present word h or, for the root, none (ROOT: no attention head can predict it, so root cases are
never correct for a head; Clark et al. count them in "all" too). A word whose head has no non-null piece (a decoder's
first word made only of position 0) is not a case. The cases are the same in both directions and for every head.
- dependent_to_head (Clark et al.'s "dep->head"): the prediction for d is argmax over present words b ≠ d of W[d, b];
- head_to_dependent (their "head<-dep", the word matrix transposed): argmax over present a ≠ d of W[a, d], the word
  that attends to d most.
Attention to the word itself is ignored. Ties go to the first maximum (the leftmost word), numpy's and torch's rule.
A causal model's word cannot attend to a later word, whose weight is then 0; a word whose weights to every other word
are 0 (for a causal model: the first word, dependent → head; the last word, head → dependent) predicts nothing and its
case is not correct. (Clark et al.'s softmax rows of an encoder are never 0; numpy's argmax would pick the first word.)

Baseline (attention-free, their offset_predictor): "the head of word d is the word d + o", for o in Clark et al.'s
−3..+2 (o < 0: to the left), clamped into the sentence as theirs is (a prediction before the first word is ROOT, one
past the last word the last word); per relation the best o (ties to the larger o, their max over (accuracy, o)).

Not as theirs: their special case for poss (counting 's as the dependent, a Penn Treebank convention) is not made.

On the device, per layer: the piece → word map M [B, T, W] (non-null pieces) gives W = (M/|pieces|)ᵀ α M in two
matmuls, [B, H, W, W]; two argmaxes over it; correct cases summed by relation."""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from pipeline.metrics.base import NO_INTERVAL_EXTREME, FigureSpec, Finding, Metric, ratio

OFFSETS = tuple(range(-3, 3))  # Clark et al.'s baseline offsets o: the head of word d is word d + o
DIRECTIONS = ("dependent_to_head", "head_to_dependent")  # Clark et al.'s "dep->head" and "head<-dep"
MIN_CASES = 30  # a relation enters dep_accuracy_mean_gain with at least this many cases
SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "relation": pl.String, "direction": pl.String, "accuracy": pl.Float64,
          "n": pl.Int64, "baseline_offset": pl.Int32, "baseline_accuracy": pl.Float64}


class Words:
    """One batch's words: the piece → word map of non-null pieces and each word's gold head, label and case."""

    def __init__(self, ctx):
        word, B = ctx.batch.word, ctx.B
        W = max(int(word.max()) + 1, 1) if word.numel() else 1
        index = torch.arange(W, device=ctx.device)
        self.map = ((word[..., None] == index) & ctx.receivable[..., None]).to(torch.float32)  # [B, T, W]
        pieces = self.map.sum(1)                                                               # [B, W]
        self.mean_rows = self.map / pieces.clamp_min(1.0)[:, None, :]                          # [B, T, W]
        self.present = pieces > 0
        slot = torch.where(word >= 0, word, W)  # every piece of a word carries its head and label; others: column W
        head = torch.full((B, W + 1), -1, dtype=torch.long, device=ctx.device).scatter_(1, slot, ctx.batch.head)[:, :W]
        label = torch.zeros((B, W + 1), dtype=torch.long, device=ctx.device).scatter_(1, slot, ctx.batch.dep)[:, :W]
        self.root = self.present & (head == index)
        inside = (head >= 0) & (head < W)
        head_present = inside & self.present.gather(1, head.clamp(0, W - 1))
        self.case = self.present & (self.root | ((head != index) & head_present))               # [B, W]
        self.gold = torch.where(self.root, -1, head)  # -1: ROOT
        self.onehot = torch.nn.functional.one_hot(label, ctx.n_dep).to(torch.float32) * self.case[..., None]  # [B, W, R]
        self.candidates = (self.present[:, :, None] & self.present[:, None, :]
                           & ~torch.eye(W, dtype=torch.bool, device=ctx.device))               # [B, W, W]
        self.hidden = ~self.candidates[:, None]  # [B, 1, W, W]: self, and words without a non-null piece
        self.n_words = word.max(1).values + 1  # [B]: words of the sentence (padding's word is −1)
        self.index = index


def words_of(ctx) -> Words:
    """The batch's Words, made once per batch and shared by its layers (kept on the batch context)."""
    return ctx.memo("dependency_words", lambda: Words(ctx))


def most_attended(scores: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """[..., W, W] word weights → [..., W]: per row the first candidate with the largest weight; −2 (no word) where the
    row gives no weight to any candidate."""
    masked = scores.masked_fill(hidden, -1.0)
    best = masked.argmax(-1)
    return torch.where(masked.gather(-1, best[..., None])[..., 0] > 0, best, -2)


def word_attention(att: torch.Tensor, words: Words) -> torch.Tensor:
    """[B, H, T, T] piece attention → [B, H, W, W] word attention: columns summed over a word's non-null pieces, rows
    the mean over them."""
    to_words = torch.einsum("bhij,bjw->bhiw", att, words.map)
    return torch.einsum("biv,bhiw->bhvw", words.mean_rows, to_words)


class DependencyAccuracy(Metric):
    name = "dependency_accuracy"
    order = 45
    description = ("Clark et al. (2019): per relation and direction, the share of words whose most-attended-to other word "
                   "(word-level attention) is its head, with the best fixed-offset baseline (offsets −3..+2).")
    table_schemas = {"dep_accuracy": SCHEMA}
    figures = (FigureSpec(
        "beyond_dependency_accuracy", "Dependency accuracy of the best head per relation (Clark et al. 2019, Table 1)",
        "As Clark et al. (2019), Table 1, at the level of words (a word's attention to another word: the sum over that "
        "word's pieces; a word of several pieces attends with the mean of its pieces' rows; null pieces left out). For "
        "the most frequent dependency relations (ROOT left out: no head can predict it), the accuracy of the single best "
        "head over both directions, coloured by its direction: dependent → head, the share of words whose "
        "most-attended-to other word is their head; head → dependent (Clark et al.'s 'head<-dep', the word matrix "
        "transposed), the share of words attended most by their head. Grey: the best fixed offset, 'the head of word d "
        "is the word d + o' for o = −3..+2 (Clark et al.'s baselines), the same o for every word of the relation. n: "
        "the words of the relation. A causal model cannot attend to later words, so a relation whose head usually "
        "follows its dependent scores in the head → dependent direction only; dep_accuracy.parquet has both.",
        "dependency_accuracy", inputs=("dep_accuracy",)),)

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.dependency_accuracy else "attend.dependency_accuracy is false"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        words = words_of(ctx)
        scores = word_attention(layer.att, words)  # [B, H, W, W]
        hidden = words.hidden
        to_head = most_attended(scores, hidden)                      # [B, H, W]: d's most-attended-to other word
        from_head = most_attended(scores.transpose(-1, -2), hidden)  # the other word that attends to d most
        correct = torch.stack([to_head, from_head], 2) == words.gold[:, None, None]  # [B, H, 2, W]
        by_relation = torch.einsum("bhdw,bwr->bhdr", correct.to(torch.float32), words.onehot)
        return {"depacc_correct": by_relation.to(ctx.sum_dtype)}  # [B, H, 2, R]

    def batch_sums(self, ctx) -> dict:
        words = words_of(ctx)
        cases = words.onehot.sum(1)  # [B, R]
        roots = (words.onehot * words.root[..., None]).sum(1)
        offsets = torch.tensor(OFFSETS, device=ctx.device)
        last = (words.n_words - 1)[:, None, None]
        guess = torch.minimum((words.index[None, :, None] + offsets).clamp_min(-1), last)  # [B, W, K]: −1 ROOT
        hits = (guess == words.gold[..., None]).to(torch.float32)
        baseline = torch.einsum("bwk,bwr->brk", hits, words.onehot)  # [B, R, K]
        return {"depacc_cases": cases.to(ctx.sum_dtype), "depacc_root_cases": roots.to(ctx.sum_dtype),
                "depacc_offset_correct": baseline.to(ctx.sum_dtype)}

    @staticmethod
    def best_offsets(offset_correct: np.ndarray) -> np.ndarray:
        """[R, K] → [R]: the index of the best offset per relation, the larger offset on ties (Clark et al.'s max)."""
        K = offset_correct.shape[-1]
        return K - 1 - offset_correct[..., ::-1].argmax(-1)

    def tables(self, sums, inputs) -> dict:
        correct, cases = np.asarray(sums["depacc_correct"]), np.asarray(sums["depacc_cases"])  # [L, H, 2, R], [R]
        offsets = np.asarray(sums["depacc_offset_correct"])                                     # [R, K]
        L, H, D, R = correct.shape
        best = self.best_offsets(offsets)
        base = ratio(np.take_along_axis(offsets, best[:, None], -1)[:, 0], cases)
        layer, head, direction, relation = np.meshgrid(np.arange(L), np.arange(H), np.arange(D), np.arange(R), indexing="ij")
        table = pl.DataFrame({
            "layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
            "relation": pl.Series(np.asarray(inputs["dep_vocab"], dtype=object)[relation.ravel()], dtype=pl.String),
            "direction": pl.Series(np.asarray(DIRECTIONS, dtype=object)[direction.ravel()], dtype=pl.String),
            "accuracy": ratio(correct, cases).ravel(),
            "n": np.rint(np.broadcast_to(cases, correct.shape)).astype(np.int64).ravel(),
            "baseline_offset": np.broadcast_to(np.asarray(OFFSETS)[best], correct.shape).ravel().astype(np.int32),
            "baseline_accuracy": np.broadcast_to(base, correct.shape).ravel()}, schema=SCHEMA)
        return {"dep_accuracy": table.filter(pl.col("n") > 0)}

    def findings(self, heads, layers, sums) -> list[Finding]:
        """dep_accuracy_mean_gain: over relations with ≥ MIN_CASES cases but ROOT (never predictable), the best head's
        accuracy (either direction) minus the best offset's; Clark et al.'s "all": the best single (head, direction)
        and the best single offset on every case."""
        correct, cases = np.asarray(sums["depacc_correct"]), np.asarray(sums["depacc_cases"])
        offsets, roots = np.asarray(sums["depacc_offset_correct"]), np.asarray(sums["depacc_root_cases"])
        frequent = (cases >= MIN_CASES) & (roots == 0)  # [R]
        best_head = ratio(correct, cases).reshape(-1, cases.size).max(0)[frequent] if frequent.any() else np.array([])
        base = ratio(offsets.max(-1), cases)[frequent]
        gain = float(np.mean(best_head - base)) if best_head.size else float("nan")
        total = cases.sum()
        all_head = ratio(correct.sum(-1), total)      # [L, H, 2]: one (head, direction) on every case
        all_base = ratio(offsets.sum(0), total)       # [K]: one offset on every case
        return [Finding("dep_accuracy_mean_gain", gain, n=int(frequent.sum()), interval_note=NO_INTERVAL_EXTREME),
                Finding("dep_accuracy_all_best_head", float(np.max(all_head)) if total > 0 else float("nan"), n=int(total),
                        interval_note=NO_INTERVAL_EXTREME),
                Finding("dep_accuracy_all_baseline", float(np.max(all_base)) if total > 0 else float("nan"), n=int(total),
                        interval_note=NO_INTERVAL_EXTREME)]


METRIC = DependencyAccuracy()
