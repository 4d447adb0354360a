"""Piece → word alignment: hypothesis property tests on generated text against a slow loop
reference, and hand-checked real sentences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data.alignment import align_pieces

from conftest import GPT2_TOKENIZER, SPACY_MODEL


@pytest.fixture(scope="module")
def gpt2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))


@pytest.fixture(scope="module")
def nlp():
    import spacy

    return spacy.load(SPACY_MODEL)


@pytest.fixture(scope="module")
def blank():
    import spacy

    return spacy.blank("en")


def slow_alignment(text, offsets, words):
    """Char by char: the word whose span holds the first non-whitespace character at or after the piece's start."""
    out = []
    for start, end in offsets:
        anchor = next((c for c in range(start, len(text)) if not text[c].isspace()), None)
        out.append(
            next(
                (w for w, (ws, we) in enumerate(words) if anchor is not None and ws <= anchor < we),
                -1,
            )
        )
    return out


def align_text(text, tok, nlp):
    doc = nlp(text)
    words = [(t.idx, t.idx + len(t.text)) for t in doc]
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    got, counts = align_pieces(
        text, np.array(offsets), np.array([w[0] for w in words]), np.array([w[1] for w in words])
    )
    return got.tolist(), counts, offsets, words, tok.convert_ids_to_tokens(enc["input_ids"])


word = st.one_of(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from(
        [
            "don't",
            "U.S.",
            "e.g.",
            "1,000",
            "co-operate",
            "naïve",
            "東京",
            "😀😀",
            "'s",
            "—",
            "...",
            "?!",
            '"."',
        ]
    ),
    st.text(alphabet="abcdefghij", min_size=30, max_size=80),  # long words
)
separator = st.sampled_from([" ", "  ", "   ", "\t", "\n", "", ", ", " (", ") ", " — "])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(word, separator), min_size=1, max_size=12))
def test_alignment_matches_slow_reference_on_generated_text(gpt2, blank, parts):
    text = "".join(w + s for w, s in parts)
    got, counts, offsets, words, pieces = align_text(text, gpt2, blank)
    assert got == slow_alignment(text, offsets, words)
    # Invariants of the rule.
    whitespace_only = [all(text[c].isspace() for c in range(s, e)) for s, e in offsets]
    # spaCy's tokens cover every non-whitespace character, so only pieces with nothing but whitespace after them get no word.
    trailing = [text[s:].isspace() for s, _ in offsets]
    assert [g == -1 for g in got] == trailing
    assert counts["whitespace_pieces"] == sum(whitespace_only)
    real = [g for g in got if g >= 0]
    assert real == sorted(real), "word indices never go backwards along the sentence"
    covered = {g for g in got if g >= 0}
    for w, (ws, we) in enumerate(words):  # every word with a piece starting inside it is found
        starts_inside = any(ws <= s < we and not text[s].isspace() for s, _ in offsets)
        if starts_inside:
            assert w in covered


def test_real_sentence_hand_checked(gpt2, nlp):
    got, counts, _, words, pieces = align_text(
        "Robert Boulter is an English film, television and theatre actor.", gpt2, nlp
    )
    assert pieces[:4] == ["Robert", "ĠB", "oul", "ter"]
    # Robert | B oul ter (one word: all three pieces get it) | is | an | English | film | , | television ...
    assert got == [0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert counts == {
        "whitespace_pieces": 0,
        "pieces_spanning_words": 0,
        "pieces_splitting_a_character": 0,
        "pieces_without_word": 0,
    }


def test_contraction_and_punctuation_runs(gpt2, nlp):
    got, counts, _, words, pieces = align_text('He didn\'t say "no".', gpt2, nlp)
    # spaCy: He | did | n't | say | " | no | " | .     GPT-2: He | Ġdidn | 't | Ġsay | Ġ" | no | ".
    assert pieces == ["He", "Ġdidn", "'t", "Ġsay", 'Ġ"', "no", '".']
    assert got == [0, 1, 2, 3, 4, 5, 6]
    assert counts["pieces_spanning_words"] == 2  # "didn" reaches into n't; '".' covers two tokens


def test_whitespace_and_multibyte_pieces(gpt2, nlp):
    got, counts, _, words, pieces = align_text("Hello,  world! Café 東京.", gpt2, nlp)
    assert counts["whitespace_pieces"] == 1  # the extra space of "  " is a piece of its own ...
    space = pieces.index("Ġ")
    assert (
        pieces[space + 1] == "Ġworld" and got[space] == got[space + 1]
    )  # ... and goes with the next word
    assert -1 not in got
    assert counts["pieces_splitting_a_character"] >= 2  # 東 and 京 are split into byte pieces
    tokyo = [g for g, p in zip(got, pieces) if p not in ("Ġ",)][-4:-1]
    assert len(set(tokyo)) == 1  # byte pieces of 東京 share one word


def test_digit_splitting_tokenizer_gives_the_space_to_the_number():
    """SmolLM2-style pre-tokenisation: ' 1905' → 'Ġ', '1', '9', '0', '5' — all five pieces are the number."""
    text = "In 1905 it rained."
    offsets = np.array(
        [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 10), (10, 17), (17, 18)]
    )
    words = [(0, 2), (3, 7), (8, 10), (11, 17), (17, 18)]
    got, counts = align_pieces(
        text, offsets, np.array([w[0] for w in words]), np.array([w[1] for w in words])
    )
    assert got.tolist() == [0, 1, 1, 1, 1, 1, 2, 3, 4]
    assert counts["whitespace_pieces"] == 1 and counts["pieces_without_word"] == 0
