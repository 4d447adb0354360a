"""Aligning model pieces to spaCy words by character offsets.

The rule (one rule for every case):
  A piece belongs to the spaCy word that contains the first non-whitespace character at or after
  the piece's start.
- Leading spaces in a piece's offsets (GPT-2's `ĠThe` covers " The") are skipped by that rule.
- A whitespace-only piece belongs to the word that follows it, as byte-level BPE attaches a space
  to the next word (SmolLM2 splits " 1905" into `Ġ` + digits; the `Ġ` is part of the number).
  Only trailing whitespace belongs to no word: word_index = -1. Counted as `whitespace_pieces`.
- A piece whose non-whitespace characters reach into a second word takes the first word's
  features (counted as `pieces_spanning_words`).
- Byte-level pieces that split one multi-byte character share that character's word (counted as
  `pieces_splitting_a_character`).
A word split into several pieces gives its features to all of them (the paper's footnote 6)."""

from __future__ import annotations

import sys

import numpy as np

# Every code point for which str.isspace() is true, so whitespace tests can be vectorised.
_SPACE_CODES = np.array([c for c in range(sys.maxunicode + 1) if chr(c).isspace()], dtype=np.uint32)


def whitespace_mask(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.isin(codes, _SPACE_CODES)


def align_pieces(text: str, offsets: np.ndarray, word_starts: np.ndarray, word_ends: np.ndarray):
    """Returns (word_index per piece, counts). offsets: [n, 2] char spans; words: sorted char spans."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    word_starts = np.asarray(word_starts, dtype=np.int64)
    word_ends = np.asarray(word_ends, dtype=np.int64)
    n_chars = len(text)
    solid = ~whitespace_mask(text)
    index = np.arange(n_chars + 1)
    # next_solid[k]: first non-whitespace char at or after k; last_solid[k]: last at or before k-1.
    next_solid = np.minimum.accumulate(np.where(np.append(solid, True), index, n_chars)[::-1])[::-1]
    last_solid = np.maximum.accumulate(np.where(np.insert(solid, 0, True), index - 1, -1))
    starts, ends = np.clip(offsets[:, 0], 0, n_chars), np.clip(offsets[:, 1], 0, n_chars)
    first = next_solid[starts]
    last = last_solid[ends]
    has_text = first < ends

    def word_of(chars):
        w = np.searchsorted(word_starts, chars, side="right") - 1
        inside = (w >= 0) & (chars < word_ends[np.clip(w, 0, None)] if len(word_ends) else False)
        return np.where(inside, w, -1)

    word = np.where(
        first < n_chars,
        word_of(np.clip(first, 0, max(n_chars - 1, 0))) if len(word_starts) else -1,
        -1,
    )
    last_word = np.where(has_text, word_of(np.clip(last, 0, None)) if len(word_starts) else -1, -1)
    overlaps_previous = np.zeros(len(offsets), dtype=bool)
    overlaps_previous[1:] = starts[1:] < ends[:-1]
    counts = {
        "whitespace_pieces": int((~has_text).sum()),
        "pieces_spanning_words": int((has_text & (last_word != word)).sum()),
        "pieces_splitting_a_character": int(overlaps_previous.sum()),
        "pieces_without_word": int((word < 0).sum()),
    }
    return word.astype(np.int64), counts


def is_special_tag(tag: str) -> bool:
    """The pos/tag of a special piece that annotate puts around a sentence: BOS, or the piece itself ([CLS], [SEP],
    <s>); no spaCy tag looks like one."""
    return tag == "BOS" or (len(tag) > 2 and (tag[0], tag[-1]) in (("[", "]"), ("<", ">")))


def special_tags(tag):
    """is_special_tag as a polars expression over a column of tags."""
    return (tag == "BOS") | tag.str.contains(r"^\[.+\]$") | tag.str.contains(r"^<.+>$")
