"""The corpus on the device: flat token arrays → padded batches that fit, and a retry by halves when they do not.

A room of its own because batching is the one part of the engine that knows nothing of attention: the patterns
stage and the benches cut batches with it too, and what fits in memory is decided here (`plan_batches` by a padded-
token budget, `fit_in_memory` by halving a batch that ran out of device memory)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from pipeline.data.alignment import is_special_tag
from pipeline.errors import PipelineError


def comma_or_period(pieces: pl.Series) -> pl.Series:
    """Whether each piece is the token "." or "," itself (Clark et al. 2019, Fig. 2): its text, less a leading
    whitespace marker (GPT-2's Ġ, SentencePiece's ▁, a space), is exactly "." or ","."""
    return pieces.str.strip_chars_start("Ġ▁ ").is_in([".", ","])


@dataclass
class TokenArrays:
    """The corpus as flat numpy arrays (tokens sorted by sentence, position) plus per-sentence offsets."""

    sentence_ids: np.ndarray  # [S]
    starts: np.ndarray  # [S] index of each sentence's first piece
    lengths: np.ndarray  # [S]
    token_id: np.ndarray
    pos: np.ndarray  # index into pos_vocab
    dep: np.ndarray
    word: np.ndarray
    head: np.ndarray
    pos_vocab: list[str]
    dep_vocab: list[str]
    # per piece: a special piece (BOS, [CLS], [SEP]), whose pos is a special tag
    special: np.ndarray | None = None
    # per piece: the token "." or "," itself (token_share, Clark et al.)
    comma_or_period: np.ndarray | None = None

    @classmethod
    def from_frame(
        cls,
        tokens: pl.DataFrame,
        pos_vocab: list[str] | None = None,
        dep_vocab: list[str] | None = None,
    ) -> "TokenArrays":
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
            pos=tokens["pos"]
            .replace_strict(pos_vocab, range(len(pos_vocab)), return_dtype=pl.Int64)
            .to_numpy(),
            dep=tokens["dep"]
            .replace_strict(dep_vocab, range(len(dep_vocab)), return_dtype=pl.Int64)
            .to_numpy(),
            word=tokens["word_index"].to_numpy(),
            head=tokens["head_word_index"].to_numpy(),
            pos_vocab=pos_vocab,
            dep_vocab=dep_vocab,
            special=np.array([is_special_tag(t) for t in pos_vocab], dtype=bool)[
                tokens["pos"]
                .replace_strict(pos_vocab, range(len(pos_vocab)), return_dtype=pl.Int64)
                .to_numpy()
            ],
            comma_or_period=comma_or_period(tokens["piece"]).to_numpy()
            if "piece" in tokens.columns
            else None,
        )

    def length_order(self) -> np.ndarray:
        """Sentences by (length, sentence_id): results do not depend on corpus order, and padding is minimal."""
        return np.lexsort((self.sentence_ids, self.lengths))

    def batch(self, rows: np.ndarray, device: torch.device, max_len: int | None = None) -> "Batch":
        """Sentences `rows`, right-padded to the longest; max_len: each cut to its first max_len pieces."""
        lengths = self.lengths[rows] if max_len is None else np.minimum(self.lengths[rows], max_len)
        T = int(lengths.max())
        offsets = np.arange(T)[None, :]
        valid = offsets < lengths[:, None]
        flat = np.where(valid, self.starts[rows][:, None] + offsets, 0)

        def take(values, fill):
            return torch.from_numpy(np.where(valid, values[flat], fill)).to(device)

        special = (
            self.special if self.special is not None else np.zeros(len(self.token_id), dtype=bool)
        )
        punct = (
            self.comma_or_period
            if self.comma_or_period is not None
            else np.zeros(len(self.token_id), dtype=bool)
        )
        return Batch(
            input_ids=take(self.token_id, 0),
            attention_mask=torch.from_numpy(valid.astype(np.int64)).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            sentence_ids=torch.from_numpy(self.sentence_ids[rows]).to(device),
            pos=take(self.pos, 0),
            dep=take(self.dep, 0),
            word=take(self.word, -1),
            head=take(self.head, -1),
            special=take(special, False),
            comma_or_period=take(punct, False),
        )


@dataclass
class Batch:
    """A padded batch on the device. pos/dep index the run's tag vocabularies; word/head are -1 for none."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    sentence_ids: torch.Tensor  # [B]
    pos: torch.Tensor  # [B, T]
    dep: torch.Tensor  # [B, T]
    word: torch.Tensor  # [B, T]
    head: torch.Tensor  # [B, T]
    special: torch.Tensor | None = None  # [B, T] bool: special pieces (BOS, [CLS], [SEP])
    comma_or_period: torch.Tensor | None = None  # [B, T] bool: the token "." or ","

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


def fit_in_memory(
    compute, rows: np.ndarray, lengths: np.ndarray, device: torch.device, events: dict | None
):
    """compute(rows) → Sums; on running out of device memory, the rows are halved and each half retried
    (counted in events["batches_halved_oom"]). The retry happens after the handler has been left, so
    the failed pass's tensors (held by the exception's traceback) are freed first. lengths: the pieces each row
    puts in a batch (for the error when one sentence alone does not fit)."""
    try:
        return compute(rows)
    except torch.OutOfMemoryError:
        pass
    if len(rows) == 1:
        raise PipelineError(
            f"one sentence of {int(lengths[rows[0]])} pieces does not fit in device memory: "
            "lower corpus.max_pieces, or use model.dtype=bfloat16"
        )
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if events is not None:
        events["batches_halved_oom"] = events.get("batches_halved_oom", 0) + 1
    half = len(rows) // 2
    return fit_in_memory(compute, rows[:half], lengths, device, events) + fit_in_memory(
        compute, rows[half:], lengths, device, events
    )
