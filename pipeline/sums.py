"""Sums: what a pass over some sentences leaves behind, as a value with one merge.

Every statistic is a ratio of corpus-wide sums, so a pass over a batch, a part, or a worker's
share of the corpus reduces to `Sums`, and `a + b` (or `Sums.merge(parts)`) combines them:
additive keys add (so the result depends on the order and grouping of the parts only through float
rounding); exemplar candidates re-rank (top k by weight, ties to the smaller sentence id), so the
exemplars do not depend on them at all. Further named sets of ranked candidates (`ranked`: the logit lens's
earliest and latest sentences) merge the same way, each under its own name. The batch accumulator,
the merge of parts and any executor all use this one merge. Values are torch tensors while a pass
runs on the device and numpy arrays on disk; the merge works on either."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BOOT_PREFIX = (
    "boot."  # Poisson bootstrap replicates of a head-level sum: boot.<key> shaped [L, R, H]
)
EXEMPLAR_PREFIX = (
    "ex_"  # exemplar fields in an .npz file: ex_value, ex_sentence_id, ex_i, ex_j, ex_row
)
NORM_PREFIX = (
    "norm."  # sums of norm-weighted attention (Kobayashi et al. 2020): norm.<key>, boot.norm.<key>
)
WEIGHTINGS = {"attention": "", "norm": NORM_PREFIX}  # weighting → the prefix of its sums
RANKED_PREFIX = (
    "rk_"  # named candidate sets in an .npz file: rk_<set>.<field> (value, sentence_id, ...)
)


def merge_exemplars(a: dict | None, b: dict | None, k: int) -> dict | None:
    """Top-k by value along the candidate axis ([L, H, n]; "row" has a trailing width axis)."""
    if a is None or b is None:
        b = b if a is None else a
        if b is None:
            return None
    else:
        b = {
            name: np.concatenate(
                [a[name], b[name]], axis=-2 if np.ndim(b[name]) > np.ndim(b["value"]) else -1
            )
            for name in b
        }
    order = np.lexsort((b["sentence_id"], -b["value"]), axis=-1)[..., :k]
    out = {}
    for name, v in b.items():
        v = np.asarray(v)
        out[name] = (
            np.take_along_axis(v, order[..., None], axis=-2)
            if v.ndim == order.ndim + 1
            else np.take_along_axis(v, order, axis=-1)
        )
    return out


@dataclass
class Sums:
    additive: dict = field(
        default_factory=dict
    )  # key → tensor or array, shaped [L, H, ...] or per batch
    exemplars: dict | None = None  # value, sentence_id, i, j[, row]: [L, H, ≤k]
    k: int = 0  # exemplars kept per head
    ranked: dict = field(
        default_factory=dict
    )  # set name → candidates {value, sentence_id, ...}: [..., ≤k]

    def __add__(self, other: "Sums") -> "Sums":
        if not isinstance(other, Sums):
            return NotImplemented
        additive = dict(self.additive)
        for key, value in other.additive.items():
            additive[key] = additive[key] + value if key in additive else value
        k = max(self.k, other.k)
        ranked = {
            name: merge_exemplars(self.ranked.get(name), other.ranked.get(name), k)
            for name in {**self.ranked, **other.ranked}
        }
        return Sums(additive, merge_exemplars(self.exemplars, other.exemplars, k), k, ranked)

    @staticmethod
    def merge(parts) -> "Sums":
        total = Sums()
        for part in parts:
            total = total + part
        return total

    def __getitem__(self, key: str):
        return self.additive[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additive

    def of_weighting(self, weighting: str) -> "Sums":
        """The sums of one weighting ("attention" or "norm") under the keys without the weighting's prefix (attention_mass.mass, boot.attention_mass.mass, ...), so
        that every metric reads either weighting with the same code; the exemplars (raw attention only) go along.
        A view: no array is copied."""
        prefix, additive = WEIGHTINGS[weighting], {}
        for key, value in self.additive.items():
            boot = BOOT_PREFIX if key.startswith(BOOT_PREFIX) else ""
            name = key[len(boot) :]
            if prefix and name.startswith(prefix):
                additive[boot + name[len(prefix) :]] = value
            elif not prefix and not name.startswith(NORM_PREFIX):
                additive[key] = value
        return Sums(additive, self.exemplars, self.k, self.ranked)

    def to_numpy(self) -> "Sums":
        def host(v):
            return v if isinstance(v, np.ndarray) else v.detach().cpu().double().numpy()

        return Sums(
            {k: host(v) for k, v in self.additive.items()}, self.exemplars, self.k, self.ranked
        )

    def non_finite_keys(self) -> list[str]:
        return [k for k, v in self.to_numpy().additive.items() if not np.isfinite(v).all()]

    # One file per part of the attend stage: flat arrays, no pickles.
    def save(self, path: Path, write) -> None:
        arrays = dict(self.to_numpy().additive)
        arrays.update({EXEMPLAR_PREFIX + name: v for name, v in (self.exemplars or {}).items()})
        arrays.update(
            {
                f"{RANKED_PREFIX}{name}.{f}": v
                for name, c in self.ranked.items()
                if c
                for f, v in c.items()
            }
        )
        arrays["_exemplars_k"] = np.array(self.k)
        write(arrays, path)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Sums":
        exemplars = {
            name[len(EXEMPLAR_PREFIX) :]: v
            for name, v in arrays.items()
            if name.startswith(EXEMPLAR_PREFIX)
        }
        additive = {
            name: v
            for name, v in arrays.items()
            if not name.startswith((EXEMPLAR_PREFIX, RANKED_PREFIX, "_"))
        }
        ranked: dict = {}
        for name, v in arrays.items():
            if name.startswith(RANKED_PREFIX):
                which, _, f = name[len(RANKED_PREFIX) :].partition(".")
                ranked.setdefault(which, {})[f] = v
        return cls(additive, exemplars or None, int(arrays.get("_exemplars_k", 0)), ranked)


def poisson_weights(sentence_ids: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """[R, B] float64: each sentence's multiplicity in each replicate, seeded by (seed, sentence id) alone, so that
    the replicates do not depend on batching, parts or the executor (pipeline/analysis/bootstrap.py: the intervals)."""
    out = np.empty((replicates, len(sentence_ids)))
    for b, sid in enumerate(
        np.asarray(sentence_ids).tolist()
    ):  # per sentence (a batch holds tens), not per token
        out[:, b] = np.random.default_rng([seed, int(sid)]).poisson(1.0, replicates)
    return out
