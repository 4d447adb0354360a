"""The logit lens at corpus scale (beyond the paper; nostalgebraist 2020, "interpreting GPT: the logit lens"):
the residual stream at every depth decoded through the model's final norm and unembedding, as if the model
stopped there, and compared with the piece that actually comes next.

Depths d = 0..L: 0 is the input of the first block (the embeddings, with position embeddings where the model adds
them), d ≥ 1 the output of block d; depth L decoded is the model's own output distribution. For every piece i
whose next piece i + 1 is in the sentence (of the sentences sampled, see below), at every depth:
- rank: the number of vocabulary entries whose logit is strictly larger than the logit of the actual next piece
  (0-based: 0 is the lens's top-1 prediction);
- probability p_d(x_{i+1}) and its log, under softmax of the depth's logits;
- KL(P_L ‖ P_d) = Σ_v p_L(v) (log p_L(v) − log p_d(v)), in nats: how far the depth's distribution is from the
  final one (0 at d = L);
- final-prediction rank: the rank, by the same count, of the model's own top-1 prediction (the argmax of the logits
  at d = L; 0 at d = L by definition). This is the rank nostalgebraist's essay plots ("these are ranks of the
  model's final top-1 prediction, not the true token"); the rank above is of the true next piece.
These are summed per depth over the corpus, per part of speech of the next piece's word, and per relation between
the current and the next word: "same word" (the next piece continues the current word), "next depends on current:
<label of the next word>" (the current word is the next word's dependency head), "current depends on next: <label
of the current word>", and "unrelated" (anything else, pieces without a word included). Each group keeps n, the
top-1 and top-10 counts of either rank, Σ p, Σ log p, Σ KL and a histogram of either rank (bins exact for ranks 0..15, then
log-spaced, each 2^(1/4) ≈ 1.19 × wider than the last). The median rank is read from the histogram: the bin in
which the cumulative count first reaches half of n holds the lower median (the smallest rank r with at least half
of the cases at rank ≤ r); `median_rank` is that bin's lower edge and `median_rank_upper` its last rank, so the
median is exact below 16 and within 19% above (`final_pred_median_rank` and `final_pred_median_rank_upper` alike,
for the final prediction's rank).

Settle depth (the exemplars): for a piece that the final depth predicts correctly (rank 0 at d = L), the smallest
depth from which the actual next piece is the top-1 prediction at every later depth. A sentence's mean settle
depth is the mean over its such pieces (sentences with at least MIN_SETTLED of them); the k sentences
(attend.exemplars_per_head) with the earliest and the latest mean settle depth are kept as ranked candidates
(pipeline/sums.py: top k, ties to the smaller sentence id), so they do not depend on parts or batches.

In the same forward pass as the attention statistics: the engine keeps the residual stream of the decoded pieces
at every depth during the forward (ModelAdapter.map_attention, residuals=...), and decodes them after it (KL needs
the final depth first), vectorised over pieces, in chunks whose [pieces, vocabulary] arrays stay within
CHUNK_BYTES. attend.logit_lens_sample < 1 decodes a seeded uniform subset of the sentences, chosen by a hash of
(attend.bootstrap_seed, sentence id), so the subset does not depend on parts or batches; the other sentences'
residual streams are not kept. The lens needs a causal model (a bidirectional one sees the next piece) and its
unembedding (ModelAdapter.unembed: final norm, the real LM head, tied or not, and any logit scaling or soft-capping),
certified at load by the lens invariant (pipeline/models/invariants.py: the last depth equals the model's own
logits). No bootstrap
replicates: the sums are added over the batch as they are."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.metrics.base import DevicePart
from pipeline.sums import Sums

EXACT_RANKS = 16  # ranks 0..15 get a bin each; then log-spaced bins, each 2^(1/4) × the last


RANK_EDGES = np.array(
    list(range(EXACT_RANKS + 1)) + [int(EXACT_RANKS * 2 ** (k / 4)) for k in range(1, 81)],
    dtype=np.int64,
)  # bin b: [e_b, e_b+1)


BINS = len(RANK_EDGES) - 1


STATS = (
    "n",
    "top1",
    "top10",
    "prob",
    "log_prob",
    "kl",
    "final_top1",
    "final_top10",
)  # lens_stats, in this order


MIN_SETTLED = (
    3  # a sentence's mean settle depth needs at least this many correctly predicted pieces
)


CHUNK_BYTES = 256 * 2**20  # bound on the [pieces, vocabulary] arrays of one decoding step


BYTES_PER_LOGIT = 16  # what one (piece, vocabulary entry) takes in decode's buffers (four float32)


SET = "logit_lens_settle"  # its ranked candidates in Sums


def sampled(sentence_ids, share: float, seed: int) -> np.ndarray:
    """bool per sentence: whether the lens decodes it. u = splitmix64(splitmix64(seed) ^ id) / 2^64 is uniform in
    [0, 1) and a function of (seed, sentence id) alone; a sentence is in the sample when u < share."""
    if isinstance(
        share, str
    ):  # "auto" is resolved from the model's dimensions by the attend stage (models/memory.py)
        raise PipelineError(
            f"attend.logit_lens_sample is {share!r} here: it must be resolved to a share before the "
            "forward passes (stages/attend.py resolves it from the model's dimensions)"
        )
    ids = np.asarray(sentence_ids).astype(np.uint64)
    if share >= 1.0:
        return np.ones(ids.shape, dtype=bool)

    def mix(z):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        u = mix(mix(np.full(ids.shape, seed, dtype=np.uint64)) ^ ids)
    return (u >> np.uint64(11)).astype(np.float64) * 2.0**-53 < share


def decode(adapter, residuals: list[torch.Tensor], targets: torch.Tensor, dtype=torch.float64):
    """The lens on N pieces: residuals [N, D] per depth 0..L, targets [N] (the actual next pieces) → rank [L+1, N]
    (int64), log p [L+1, N] and KL(P_L ‖ P_d) [L+1, N] (in `dtype`, the sums' dtype), and final_rank [L+1, N] (int64):
    the rank at each depth of the final depth's top-1 prediction (its argmax; 0 at d = L), nostalgebraist's rank.

    Computed in float32, the logits' own precision (float64 exponentials cost 8× on a CPU), in chunks of pieces whose
    [chunk, V] buffers (four float32) stay within CHUNK_BYTES and are reused for every depth and chunk
    (fresh allocations of that size cost as much kernel time as the arithmetic); per chunk the final depth first.
    log p_d(x) = z_d(x) − logsumexp(z_d) and KL = Σ_v p_L(v) (z_L(v) − z_d(v)) − logsumexp(z_L) + logsumexp(z_d),
    z_d the logits at depth d: per depth one matmul, one logsumexp and one dot product, no [chunk, V] log-softmax."""
    depths, N = len(residuals), targets.numel()
    V = adapter.unembedding.shape[0]
    chunk = min(N, max(1, CHUNK_BYTES // (BYTES_PER_LOGIT * V)))
    if V >= 2**24:
        raise ValueError(
            f"a vocabulary of {V} entries: ranks are counted in float32, exact below 2^24"
        )
    device = targets.device
    rank = torch.zeros(depths, N, dtype=torch.int64, device=device)
    log_prob = torch.zeros(depths, N, dtype=dtype, device=device)
    kl = torch.zeros(depths, N, dtype=dtype, device=device)
    final_rank = torch.zeros(depths, N, dtype=torch.int64, device=device)
    buffers = [torch.empty(chunk, V, device=device) for _ in range(4)]
    with torch.inference_mode():
        for start in range(0, N, chunk):
            at, c = slice(start, start + chunk), min(chunk, N - start)
            final, z, scratch, p_final = (b[:c] for b in buffers)

            def logsumexp(x):
                top = x.amax(-1, keepdim=True)
                torch.sub(x, top, out=scratch).exp_()
                return scratch.sum(-1).log_() + top[:, 0]

            t = targets[at, None]
            adapter.unembed(residuals[-1][at], out=final)
            final_lse = logsumexp(final)
            final_top = final.argmax(-1, keepdim=True)  # [c, 1]: the model's own top-1 prediction
            torch.sub(final, final_lse[:, None], out=p_final).exp_()
            for d in range(depths):
                last = d == depths - 1
                x = final if last else adapter.unembed(residuals[d][at], out=z)
                target = x.gather(1, t)
                rank[d, at] = (
                    torch.gt(x, target, out=scratch).sum(-1).long()
                )  # 0/1 floats: exact below 2^24
                final_rank[d, at] = torch.gt(x, x.gather(1, final_top), out=scratch).sum(-1).long()
                lse = final_lse if last else logsumexp(x)
                log_prob[d, at] = (target[:, 0] - lse).to(dtype)
                if not last:  # KL(P_L ‖ P_L) = 0: left at zero
                    gap = torch.bmm(
                        p_final[:, None, :], torch.sub(final, x, out=scratch)[:, :, None]
                    )[:, 0, 0]
                    kl[d, at] = (gap - final_lse + lse).to(dtype)
    return rank, log_prob, kl, final_rank


def settle_depths(rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rank [L+1, N] → (settle depth [N], correct [N]): correct when the final depth's top-1 is the actual next
    piece; then the smallest depth from which it is top-1 at every later depth (L+1 less the trailing run of
    top-1 depths)."""
    top1 = (rank == 0).to(torch.int64)
    trailing = torch.flip(torch.cumprod(torch.flip(top1, [0]), 0), [0]).sum(0)
    return rank.shape[0] - trailing, top1[-1].bool()


class LogitLens(DevicePart):
    name = "logit_lens"
    provides = ("lens_stats", "lens_rank_hist", "lens_final_rank_hist")
    norm_weighting = False  # not a statistic of attention: computed once, no weighting column
    wants_residuals = True

    def disabled_reason(self, attend_cfg, adapter=None) -> str | None:
        if not getattr(attend_cfg, "logit_lens", False):
            return "attend.logit_lens is false"
        return None if adapter is None else self.model_reason(adapter)

    def model_reason(self, adapter) -> str | None:
        if not getattr(adapter, "causal", True):
            return (
                "the model's attention is not causal (bidirectional): every piece sees the next one, so decoding "
                "the next piece from the residual stream is meaningless"
            )
        reason = adapter.unembed_reason
        return None if reason is None else f"the residual stream cannot be unembedded: {reason}"

    # ---- on the device ----

    def residual_rows(self, ctx) -> torch.Tensor:
        """[B, T]: pieces i of the sampled sentences whose next piece i + 1 is in the sentence."""
        chosen = sampled(
            ctx.batch.sentence_ids.cpu().numpy(), ctx.cfg.logit_lens_sample, ctx.cfg.bootstrap_seed
        )
        chosen = torch.from_numpy(chosen).to(ctx.device)
        return chosen[:, None] & (ctx.idx[None, :] + 1 < ctx.batch.lengths[:, None])

    def groups(self, ctx, b: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """[3, N] group index of each decoded piece (b, i): all, POS of the next piece, relation of the two words."""
        batch, P, R = ctx.batch, ctx.n_pos, ctx.n_dep
        w_c, w_n = batch.word[b, i], batch.word[b, i + 1]
        h_c, h_n = batch.head[b, i], batch.head[b, i + 1]
        words = (w_c >= 0) & (w_n >= 0)
        same = words & (w_c == w_n)
        next_on_current = words & ~same & (h_n == w_c)
        current_on_next = words & ~same & ~next_on_current & (h_c == w_n)
        first = 1 + P  # the first relation group
        relation = torch.full_like(w_c, first + 1)  # unrelated
        relation = torch.where(same, first, relation)
        relation = torch.where(next_on_current, first + 2 + batch.dep[b, i + 1], relation)
        relation = torch.where(current_on_next, first + 2 + R + batch.dep[b, i], relation)
        return torch.stack([torch.zeros_like(w_c), 1 + batch.pos[b, i + 1], relation])

    def reduce_residuals(self, ctx, rows, residuals, adapter) -> Sums:
        dtype = ctx.sum_dtype
        b, i = rows.nonzero(as_tuple=True)
        targets = ctx.batch.input_ids[b, i + 1]
        rank, log_prob, kl, final_rank = decode(adapter, residuals, targets, dtype)
        depths, N = rank.shape
        G = 1 + ctx.n_pos + 2 + 2 * ctx.n_dep
        stats = torch.stack(
            [
                torch.ones_like(log_prob),
                (rank == 0).to(dtype),
                (rank < 10).to(dtype),
                log_prob.exp(),
                log_prob,
                kl,
                (final_rank == 0).to(dtype),
                (final_rank < 10).to(dtype),
            ],
            -1,
        )  # [L+1, N, len(STATS)]
        edges = torch.as_tensor(RANK_EDGES, device=rank.device)
        bins = torch.searchsorted(edges, rank, right=True) - 1  # [L+1, N]
        final_bins = torch.searchsorted(edges, final_rank, right=True) - 1
        totals = torch.zeros(depths, G, len(STATS), dtype=dtype, device=rank.device)
        hist = torch.zeros(depths, G * BINS, dtype=dtype, device=rank.device)
        final_hist = torch.zeros(depths, G * BINS, dtype=dtype, device=rank.device)
        ones = torch.ones_like(bins, dtype=dtype)
        for g in self.groups(ctx, b, i):
            totals.index_add_(1, g, stats)
            hist.scatter_add_(1, g[None] * BINS + bins, ones)
            final_hist.scatter_add_(1, g[None] * BINS + final_bins, ones)
        settle, correct = settle_depths(rank)
        per_sentence = torch.zeros(2, ctx.B, dtype=dtype, device=rank.device)
        per_sentence[0].index_add_(0, b, (settle * correct).to(dtype))
        per_sentence[1].index_add_(0, b, correct.to(dtype))
        decoded = torch.zeros(ctx.B, dtype=dtype, device=rank.device).index_add_(
            0, b, torch.ones(N, dtype=dtype, device=rank.device)
        )
        additive = {
            "lens_stats": totals,
            "lens_rank_hist": hist.reshape(depths, G, BINS),
            "lens_final_rank_hist": final_hist.reshape(depths, G, BINS),
        }
        return Sums(
            additive,
            None,
            ctx.cfg.exemplars_per_head,
            {SET: self.candidates(ctx, per_sentence, decoded)},
        )

    @staticmethod
    def candidates(ctx, per_sentence: torch.Tensor, decoded: torch.Tensor) -> dict:
        """The batch's sentences as ranked candidates [2, B] (earliest: −mean settle depth, latest: +mean); a sentence
        with fewer than MIN_SETTLED correctly predicted pieces gets −inf (never kept over a real one)."""
        settle_sum, count = per_sentence.cpu().double().numpy()
        enough = count >= MIN_SETTLED
        mean = np.where(enough, settle_sum / np.maximum(count, 1), np.nan)
        value = np.stack([np.where(enough, -mean, -np.inf), np.where(enough, mean, -np.inf)])
        ids = ctx.batch.sentence_ids.cpu().numpy().astype(np.int64)
        return {
            "value": value,
            "sentence_id": np.stack([ids, ids]),
            "mean_settle_depth": np.stack([mean, mean]),
            "n_settled": np.stack([count, count]),
            "n_decoded": np.stack([decoded.cpu().double().numpy()] * 2),
        }


METRIC = LogitLens()
