"""Attention to [CLS], [SEP] and the tokens "." and "," (pipeline/metrics/token_share.py) against a slow reference
written from the two sources' code, one sentence, one head and one token at a time:
- Clark et al. (2019), General_Analysis.ipynb: per document, the attention map's columns of the token summed over ALL
  rows and divided by the number of tokens (rows), then averaged over documents (ours: sentences);
- Kobayashi et al. (2020), re-examine.py: per sequence, the mean over all rows of Σ_{j of the token} ‖α_ij f(x_j)‖ and
  the mean of ‖f(x_j)‖ over the token's pieces, then the mean over sequences.
The value norms ‖f_h(x_j)‖ are formed here with explicit matrix products from the weights (GPT-2: c_attn's value
third and c_proj; BERT: self.value and output.dense). A decoder with a BOS piece here; the encoder ([CLS], [SEP]) in
tests/test_encoder.py, through assert_token_share_matches_reference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import pytest
import torch
from test_norm_weighting import gpt2_value_norms

from helpers import run, table
from reference import attention_maps

STAGES = ["corpus", "annotate", "attend", "aggregate"]
SPECIAL = ("BOS", "[CLS]", "[SEP]")


def bert_value_norms(model_dir, tokens: pl.DataFrame) -> dict[int, np.ndarray]:
    """{sentence id: [L, H, n]} ‖f_h(x_j)‖ one sentence at a time: x = the layer's input (BERT is post-LN), v = x W_V + b_V
    (self.value), f_h = v_h W_O^h (output.dense's columns of head h), each a plain matrix product."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    H = model.config.num_attention_heads
    d = model.config.hidden_size // H
    out = {}
    for (sid,), group in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        with torch.no_grad():
            hidden = model(
                input_ids=torch.tensor([group["token_id"].to_list()]), output_hidden_states=True
            ).hidden_states
            per_layer = []
            for layer, block in enumerate(model.encoder.layer):
                x = hidden[layer][0].double()
                value = block.attention.self.value
                v = x @ value.weight.double().T + value.bias.double()  # [n, H·d]
                W_O = block.attention.output.dense.weight.double()  # [D, H·d]
                per_layer.append(
                    np.stack(
                        [
                            (v[:, h * d : (h + 1) * d] @ W_O[:, h * d : (h + 1) * d].T)
                            .norm(dim=-1)
                            .numpy()
                            for h in range(H)
                        ]
                    )
                )
        out[sid] = np.stack(per_layer)
    return out


def token_of(piece: str, pos: str) -> str:
    """Clark et al.'s token types: the special tokens by name; "." and "," (a byte-level piece's leading space, Ġ,
    is the space before the token, not part of it); everything else."""
    if pos in SPECIAL:
        return pos
    return ". or ," if piece.replace("Ġ", " ").replace("▁", " ").strip() in (".", ",") else "other"


def reference_token_share(maps: dict, norms: dict, tokens: pl.DataFrame) -> pl.DataFrame:
    feats = {sid: g.sort("position") for (sid,), g in tokens.group_by("sentence_id")}
    L, H = next(iter(maps.values())).shape[:2]
    rows = []
    for layer in range(L):
        for h in range(H):
            attention, weighted, value, with_token = (defaultdict(float) for _ in range(4))
            documents = 0
            for sid, A in maps.items():
                a, f = A[layer, h], feats[sid]
                n = a.shape[0]  # n_tokens: every piece of the sentence, the special ones included
                kinds = [token_of(p, t) for p, t in zip(f["piece"].to_list(), f["pos"].to_list())]
                documents += 1
                for token in set(kinds) | {"all"}:
                    members = [j for j in range(n) if token in (kinds[j], "all")]
                    attention[token] += sum(a[i, j] for i in range(n) for j in members) / n
                    weighted[token] += (
                        sum(a[i, j] * norms[sid][layer, h, j] for i in range(n) for j in members)
                        / n
                    )
                    value[token] += sum(norms[sid][layer, h, j] for j in members) / len(members)
                    with_token[token] += 1
            for token in attention:
                rows.append(
                    {
                        "layer": layer,
                        "head": h,
                        "token": token,
                        "mean_attention": attention[token] / documents,
                        "mean_weighted_norm": weighted[token] / documents,
                        "mean_value_norm": value[token] / with_token[token],
                        "sentences": with_token[token],
                    }
                )
    return pl.DataFrame(rows)


def assert_token_share_matches_reference(cfg, model_dir, norms_of) -> pl.DataFrame:
    """The run's token_share table against the reference on the run's own tokens (float32 attention: 1e-5)."""
    tokens = table(cfg, "tokens")
    got = table(cfg, "token_share")
    assert "weighting" not in got.columns  # both weightings are its columns
    want = reference_token_share(
        attention_maps(model_dir, tokens), norms_of(model_dir, tokens), tokens
    )
    keys = ["layer", "head", "token"]
    joined = got.join(
        want.cast({"layer": pl.Int32, "head": pl.Int32}),
        on=keys,
        how="full",
        coalesce=True,
        suffix="_want",
    )
    assert joined.height == got.height == want.height, (got.height, want.height)
    assert (joined["sentences"] == joined["sentences_want"]).all()
    for column in ("mean_attention", "mean_weighted_norm", "mean_value_norm"):
        x, y = joined[column].to_numpy(), joined[f"{column}_want"].to_numpy()
        assert np.allclose(x, y, rtol=1e-5, atol=1e-6), (column, np.abs(x - y).max())
    # invariants: each row's weights sum to 1, so the tokens (less "all") share each head's attention
    parts = (
        got.filter(pl.col("token") != "all")
        .group_by("layer", "head")
        .agg(pl.col("mean_attention").sum())
    )
    assert np.allclose(parts["mean_attention"], 1.0, atol=1e-6)
    assert np.allclose(got.filter(pl.col("token") == "all")["mean_attention"], 1.0, atol=1e-6)
    return got


@pytest.fixture(scope="module")
def bos_run(tiny_gpt2, tmp_path_factory):
    from conftest import make_config, write_corpus

    base = tmp_path_factory.mktemp("token-share")
    cfg = make_config(
        base,
        tiny_gpt2,
        write_corpus(base / "corpus.txt"),
        "model.bos=always",
        "attend.bootstrap_replicates=0",
        "attend.logit_lens=false",
    )
    run(cfg, STAGES)
    return cfg


def test_decoder_with_bos_matches_the_sources(bos_run, tiny_gpt2):
    got = assert_token_share_matches_reference(bos_run, tiny_gpt2, gpt2_value_norms)
    assert set(got["token"]) == {"BOS", ". or ,", "other", "all"}
    # the test is not vacuous: "." and "," occur, and the norms differ from the weights
    assert got.filter(pl.col("token") == ". or ,")["sentences"][0] > 0
    assert (got["mean_weighted_norm"] > 0).all() and not np.allclose(
        got["mean_weighted_norm"], got["mean_attention"]
    )


@pytest.mark.slow
def test_without_value_norms_the_norm_columns_are_nan(tiny_gpt2, tmp_path):
    from conftest import make_config, write_corpus

    cfg = make_config(
        tmp_path,
        tiny_gpt2,
        write_corpus(tmp_path / "corpus.txt"),
        "attend.norm_weighting=false",
        "attend.bootstrap_replicates=0",
        "attend.logit_lens=false",
    )
    run(cfg, STAGES)
    got = table(cfg, "token_share")
    assert got["mean_weighted_norm"].is_nan().all() and got["mean_value_norm"].is_nan().all()
    assert got["mean_attention"].is_not_nan().all() and set(got["token"]) == {
        ". or ,",
        "other",
        "all",
    }


def test_figure_names_what_each_panel_shows():
    from pipeline.report import figures

    from synthetic import token_share

    fig = figures.token_share(token_share(3, 2))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "attention weight α (Clark et al. 2019, Fig. 2)",
        "absolute norm ‖α f(x)‖ (Kobayashi et al. 2020)",
        "value norm ‖f(x)‖ (Kobayashi et al. 2020)",
    ]
    left = fig.axes[0]
    assert {line.get_label() for line in left.get_lines()} == {
        "[CLS]",
        "[SEP]",
        ". or ,",
        "other",
    }  # not "all": 1
    assert "all" in {line.get_label() for line in fig.axes[1].get_lines()}
    nan = token_share(3, 2).with_columns(
        mean_weighted_norm=float("nan"), mean_value_norm=float("nan")
    )
    fig = figures.token_share(nan)
    assert "not computed" in fig.axes[1].texts[0].get_text()


def test_comma_or_period_is_the_token_itself():
    from pipeline.engine import comma_or_period

    pieces = pl.Series([".", ",", "Ġ,", "Ġ.", "▁.", "...", '."', "Ġthe", "##.", "PUNCT", "!"])
    assert comma_or_period(pieces).to_list() == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
    ]
