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

import torch

from pipeline.metrics.base import DevicePart

OFFSETS = tuple(range(-3, 3))  # Clark et al.'s baseline offsets o: the head of word d is word d + o


class Words:
    """One batch's words: the piece → word map of non-null pieces and each word's gold head, label and case."""

    def __init__(self, ctx):
        word, B = ctx.batch.word, ctx.B
        W = max(int(word.max()) + 1, 1) if word.numel() else 1
        index = torch.arange(W, device=ctx.device)
        self.map = ((word[..., None] == index) & ctx.receivable[..., None]).to(
            torch.float32
        )  # [B, T, W]
        pieces = self.map.sum(1)  # [B, W]
        self.mean_rows = self.map / pieces.clamp_min(1.0)[:, None, :]  # [B, T, W]
        self.present = pieces > 0
        slot = torch.where(
            word >= 0, word, W
        )  # every piece of a word carries its head and label; others: column W
        head = torch.full((B, W + 1), -1, dtype=torch.long, device=ctx.device).scatter_(
            1, slot, ctx.batch.head
        )[:, :W]
        label = torch.zeros((B, W + 1), dtype=torch.long, device=ctx.device).scatter_(
            1, slot, ctx.batch.dep
        )[:, :W]
        self.root = self.present & (head == index)
        inside = (head >= 0) & (head < W)
        head_present = inside & self.present.gather(1, head.clamp(0, W - 1))
        self.case = self.present & (self.root | ((head != index) & head_present))  # [B, W]
        self.gold = torch.where(self.root, -1, head)  # -1: ROOT
        self.onehot = (
            torch.nn.functional.one_hot(label, ctx.n_dep).to(torch.float32) * self.case[..., None]
        )  # [B, W, R]
        self.candidates = (
            self.present[:, :, None]
            & self.present[:, None, :]
            & ~torch.eye(W, dtype=torch.bool, device=ctx.device)
        )  # [B, W, W]
        self.hidden = ~self.candidates[
            :, None
        ]  # [B, 1, W, W]: self, and words without a non-null piece
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


class DependencyAccuracy(DevicePart):
    name = "dependency_accuracy"
    provides = ("depacc_correct", "depacc_cases", "depacc_root_cases", "depacc_offset_correct")

    def disabled_reason(self, attend_cfg) -> str | None:
        return None if attend_cfg.dependency_accuracy else "attend.dependency_accuracy is false"

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        words = words_of(ctx)
        scores = word_attention(layer.att, words)  # [B, H, W, W]
        hidden = words.hidden
        to_head = most_attended(scores, hidden)  # [B, H, W]: d's most-attended-to other word
        from_head = most_attended(
            scores.transpose(-1, -2), hidden
        )  # the other word that attends to d most
        correct = torch.stack([to_head, from_head], 2) == words.gold[:, None, None]  # [B, H, 2, W]
        by_relation = torch.einsum("bhdw,bwr->bhdr", correct.to(torch.float32), words.onehot)
        return {"depacc_correct": by_relation.to(ctx.sum_dtype)}  # [B, H, 2, R]

    def batch_sums(self, ctx) -> dict:
        words = words_of(ctx)
        cases = words.onehot.sum(1)  # [B, R]
        roots = (words.onehot * words.root[..., None]).sum(1)
        offsets = torch.tensor(OFFSETS, device=ctx.device)
        last = (words.n_words - 1)[:, None, None]
        guess = torch.minimum(
            (words.index[None, :, None] + offsets).clamp_min(-1), last
        )  # [B, W, K]: −1 ROOT
        hits = (guess == words.gold[..., None]).to(torch.float32)
        baseline = torch.einsum("bwk,bwr->brk", hits, words.onehot)  # [B, R, K]
        return {
            "depacc_cases": cases.to(ctx.sum_dtype),
            "depacc_root_cases": roots.to(ctx.sum_dtype),
            "depacc_offset_correct": baseline.to(ctx.sum_dtype),
        }


METRIC = DependencyAccuracy()
