"""The reduction at the heart of the tool: one batch of attention maps → additive per-head sums.

Every statistic of the paper (sections 5.1-5.2) is a ratio of corpus-wide sums. For a batch the
model's attention [B, H, T, T] of each layer is reduced *on the device* to the sums below, which
are float64 (float32 on Apple MPS, which has no float64), shaped [L, H, ...], and add across
batches and shards; the maps themselves are never kept. Conventions (α_ij: attention from piece i
to piece j ≤ i, positions 0-based):
- Position 0 is the null token (the first word, or BOS when prepended). Unless a sum says so,
  pairs with j = 0 are excluded, and so are attending rows i = 0 (they can only attend to j = 0).
- Rows i ≥ length (right padding) contribute nothing: they are zeroed first.

Sum keys (all [L, H] unless noted):
  mass            Σ α_ij over i ≥ 1, 1 ≤ j ≤ i                       (denominator of Eqs. 3-6)
  mass_all        Σ α_ij over i ≥ 1, 0 ≤ j ≤ i                       (= attending tokens)
  mass_null       Σ α_i0 over i ≥ 1                                   (null attention, Fig. 5)
  dep_attending_parent   Σ α_ij where x_i's word is the head of x_j's word (Eq. 4, variant 1)
  dep_receiving_parent   Σ α_ij where x_j's word is the head of x_i's word (Eq. 4, variant 2)
  distance        Σ α_ij (i − j)                                      (Eq. 6)
  entropy_sum     Σ over rows of the entropy of α_i,1..i renormalised (Eq. 7, footnote 4)
  entropy_rows    rows counted in entropy_sum; entropy_skipped: rows with α_i0 > threshold
  pos_to [L,H,P], pos_from [L,H,P], dep_to [L,H,D]  attention received by / sent from each tag
  var_abs_dev     Σ |α_ij − ᾱ_ij| over i < N, 1 ≤ j ≤ i               (Eq. 5 numerator / 1)
  var_mass        Σ α_ij over i < N, 1 ≤ j ≤ i                        (Eq. 5 denominator / 2)
  pairs, pairs_related [1]  piece pairs (i ≥ 1, 1 ≤ j ≤ i) and those in a dependency relation
Window sums for ᾱ (first pass): window_sum [L,H,N,N], window_rows [N]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAIR_FEATURES = ("mass", "mass_all", "mass_null", "dep_attending_parent", "dep_receiving_parent", "distance")
ADDITIVE_KEYS = PAIR_FEATURES + ("entropy_sum", "entropy_rows", "entropy_skipped", "pos_to", "pos_from",
                                 "dep_to", "var_abs_dev", "var_mass", "pairs", "pairs_related")


@dataclass
class Batch:
    """A padded batch on the device. pos/dep index the run's tag vocabularies; word/head are -1 for none."""

    input_ids: torch.Tensor      # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    lengths: torch.Tensor         # [B]
    sentence_ids: torch.Tensor    # [B]
    pos: torch.Tensor             # [B, T]
    dep: torch.Tensor             # [B, T]
    word: torch.Tensor            # [B, T]
    head: torch.Tensor            # [B, T]

    @property
    def shape(self):
        return tuple(self.input_ids.shape)


class BatchReducer:
    """Holds what every layer of one batch shares (masks, pair features, one-hot tags)."""

    def __init__(self, batch: Batch, n_pos: int, n_dep: int, window: int, entropy_threshold: float,
                 window_mean: torch.Tensor | None = None, row_width: int = 0):
        B, T = batch.shape
        dev = batch.input_ids.device
        self.T, self.threshold, self.row_width = T, entropy_threshold, row_width
        self.sum_dtype = torch.float32 if dev.type == "mps" else torch.float64  # MPS has no float64
        idx = torch.arange(T, device=dev)
        i, j = idx[:, None], idx[None, :]
        in_sentence = idx[None, :] < batch.lengths[:, None]                     # [B, T]
        self.padding_rows = ~in_sentence                                         # [B, T]
        self.attending = in_sentence & (idx[None, :] >= 1)                       # rows i ≥ 1
        rows = self.attending[:, :, None]
        causal = (j <= i)[None]
        nonnull = rows & causal & (j >= 1)[None]                                 # [B, T, T]
        w_i, w_j = batch.word[:, :, None], batch.word[:, None, :]
        h_i, h_j = batch.head[:, :, None], batch.head[:, None, :]
        different = (w_i >= 0) & (w_j >= 0) & (w_i != w_j)
        attending_parent = nonnull & different & (h_j == w_i)
        receiving_parent = nonnull & different & (h_i == w_j)
        distance = (i - j).to(torch.float32)[None] * nonnull
        feats = [nonnull, rows & causal, rows & (j == 0)[None], attending_parent, receiving_parent]
        self.pair_features = torch.stack([f.to(torch.float32) for f in feats] + [distance], dim=-1).reshape(B, T * T, -1)
        self.pairs = nonnull.sum().to(self.sum_dtype).reshape(1)
        self.pairs_related = (attending_parent | receiving_parent).sum().to(self.sum_dtype).reshape(1)
        receivable = in_sentence & (idx[None, :] >= 1)
        self.pos_onehot = torch.nn.functional.one_hot(batch.pos, n_pos).to(torch.float32) * receivable[..., None]
        self.dep_onehot = torch.nn.functional.one_hot(batch.dep, n_dep).to(torch.float32) * receivable[..., None]
        self.attending_f = self.attending.to(torch.float32)
        self.window, self.n_window = window, min(window, T)
        if self.n_window:
            N = self.n_window
            wi, wj = idx[:N, None], idx[None, :N]
            self.window_mask = (in_sentence[:, :N, None] & (wj >= 1) & (wj <= wi)).to(torch.float32)  # [B, N, N]
            self.window_rows = torch.zeros(window, dtype=self.sum_dtype, device=dev)
            self.window_rows[:N] = in_sentence[:, :N].sum(0).to(self.sum_dtype)
        self.window_mean = window_mean

    def window_sum(self, att: torch.Tensor) -> torch.Tensor:
        """Σ over the batch of α_ij for i < N, 1 ≤ j ≤ i: [H, N, N] (the first pass needs only this)."""
        N = self.n_window
        out = torch.zeros(att.shape[1], self.window, self.window, dtype=self.sum_dtype, device=att.device)
        out[:, :N, :N] = (att[:, :, :N, :N].float() * self.window_mask[:, None]).to(self.sum_dtype).sum(0)
        return out

    def layer(self, att: torch.Tensor, index: int = 0) -> dict[str, torch.Tensor]:
        """att: layer `index`'s attention [B, H, T, T] → sums [H, ...] (float64) + exemplar candidates."""
        att = att.float().masked_fill(self.padding_rows[:, None, :, None], 0.0)
        B, H, T, _ = att.shape
        out = {}
        pair = torch.bmm(att.reshape(B, H, T * T), self.pair_features)           # [B, H, K]
        pair = pair.to(self.sum_dtype).sum(0)
        for k, name in enumerate(PAIR_FEATURES):
            out[name] = pair[:, k]
        nonnull = att[..., 1:]
        row_mass = nonnull.sum(-1)                                               # [B, H, T]
        null = att[..., 0]
        plogp = torch.special.xlogy(nonnull, nonnull).sum(-1)
        safe = row_mass.clamp_min(1e-30)
        entropy = torch.log(safe) - plogp / safe
        rows = self.attending[:, None, :]
        skipped = rows & (null > self.threshold)
        counted = rows & ~skipped & (row_mass > 0)
        out["entropy_sum"] = torch.where(counted, entropy, 0.0).to(self.sum_dtype).sum((0, 2))
        out["entropy_rows"] = counted.to(self.sum_dtype).sum((0, 2))
        out["entropy_skipped"] = skipped.to(self.sum_dtype).sum((0, 2))
        received = torch.einsum("bhij,bi->bhj", att, self.attending_f)            # [B, H, T]
        out["pos_to"] = torch.einsum("bhj,bjp->bhp", received, self.pos_onehot).to(self.sum_dtype).sum(0)
        out["dep_to"] = torch.einsum("bhj,bjd->bhd", received, self.dep_onehot).to(self.sum_dtype).sum(0)
        sent = row_mass * self.attending_f[:, None, :]
        out["pos_from"] = torch.einsum("bhi,bip->bhp", sent, self.pos_onehot).to(self.sum_dtype).sum(0)
        if self.n_window and self.window_mean is not None:
            N = self.n_window
            win = att[:, :, :N, :N] * self.window_mask[:, None]
            mean = self.window_mean[index, :, :N, :N].float()
            out["var_abs_dev"] = ((win - mean[None]).abs() * self.window_mask[:, None]).to(self.sum_dtype).sum((0, 2, 3))
            out["var_mass"] = win.to(self.sum_dtype).sum((0, 2, 3))
        best, where = nonnull.reshape(B, H, -1).max(-1)                          # exemplar candidates
        i = where // max(T - 1, 1)
        out["ex_value"], out["ex_i"], out["ex_j"] = best, i, where % max(T - 1, 1) + 1
        if self.row_width:  # the attending piece's whole row, so reports can draw the pattern without the model
            row = torch.gather(att, 2, i[:, :, None, None].expand(B, H, 1, T))[:, :, 0]
            out["ex_row"] = torch.nn.functional.pad(row, (0, self.row_width - T))
        return out


def reduce_batch(attentions, reducer: BatchReducer) -> dict[str, torch.Tensor]:
    """All layers of one forward pass → {key: [L, H, ...]} plus per-batch pair counts."""
    per_layer = [reducer.layer(a, index) for index, a in enumerate(attentions)]
    out = {k: torch.stack([p[k] for p in per_layer]) for k in per_layer[0]}
    out["pairs"], out["pairs_related"] = reducer.pairs, reducer.pairs_related
    return out


class Accumulator:
    """Running float64 sums on the device, plus the top-k exemplar sentences per head on the host."""

    def __init__(self, k: int):
        self.k = k
        self.sums: dict[str, torch.Tensor] = {}
        self.exemplars: dict[str, np.ndarray] | None = None

    def add(self, batch_sums: dict[str, torch.Tensor], sentence_ids: torch.Tensor) -> None:
        for key, value in batch_sums.items():
            if key.startswith("ex_"):
                continue
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        if "ex_value" in batch_sums:
            value = batch_sums["ex_value"].cpu().double().numpy()               # [L, B, H]
            L, B, H = value.shape
            candidates = {
                "value": value.transpose(0, 2, 1),
                "sentence_id": np.broadcast_to(sentence_ids.cpu().numpy()[None, None, :], (L, H, B)),
                "i": batch_sums["ex_i"].cpu().numpy().transpose(0, 2, 1),
                "j": batch_sums["ex_j"].cpu().numpy().transpose(0, 2, 1),
            }
            if "ex_row" in batch_sums:                                            # [L, B, H, R] → [L, H, B, R]
                candidates["row"] = batch_sums["ex_row"].cpu().double().numpy().transpose(0, 2, 1, 3)
            self.exemplars = merge_exemplars(self.exemplars, candidates, self.k)

    def to_numpy(self) -> dict[str, np.ndarray]:
        arrays = {k: v.cpu().double().numpy() for k, v in self.sums.items()}
        if self.exemplars is not None:
            arrays.update({f"ex_{k}": v for k, v in self.exemplars.items()})
        return arrays


def merge_exemplars(a: dict | None, b: dict, k: int) -> dict:
    """Top-k by value (ties: smaller sentence_id first) along the last axis; order-independent."""
    if a is not None:
        b = {name: np.concatenate([a[name], b[name]], axis=-2 if np.ndim(b[name]) > np.ndim(b["value"]) else -1) for name in b}
    order = np.lexsort((b["sentence_id"], -b["value"]), axis=-1)[..., :k]
    out = {}
    for name, v in b.items():  # "row" has a trailing width axis; the rest are [L, H, n]
        v = np.asarray(v)
        out[name] = np.take_along_axis(v, order[..., None], axis=-2) if v.ndim == order.ndim + 1 else np.take_along_axis(v, order, axis=-1)
    return out


def merge_sums(parts: list[dict[str, np.ndarray]], k: int) -> dict[str, np.ndarray]:
    """Shards → one set of sums: additive keys add, exemplars re-rank."""
    total: dict[str, np.ndarray] = {}
    exemplars = None
    for part in parts:
        for key, value in part.items():
            if key.startswith("ex_"):
                continue
            total[key] = total[key] + value if key in total else value.copy()
        if "ex_value" in part:
            ex = {name[3:]: value for name, value in part.items() if name.startswith("ex_")}
            exemplars = merge_exemplars(exemplars, ex, k)
    if exemplars is not None:
        total.update({f"ex_{k}": v for k, v in exemplars.items()})
    return total
