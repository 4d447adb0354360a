"""Norm-weighted attention (Kobayashi et al. 2020): α_ij ‖f_h(x_j)‖, f_h(x) = (x W_V^h + b_V^h) W_O^h.

Against a slow reference that forms f_h with explicit matrix products from the weights (GPT-2, and a Llama-family
model with grouped-query attention built here), a model whose value vectors all have one norm (every table as under
attention), norm weighting switched off (attention rows only, identical to a run with it on), and a family without
support (off, with its reason)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from test_attention_metrics import METRICS, assert_frames_close

from helpers import run, table
from reference import attention_maps, reference_tables

WEIGHTED = (
    "head_metrics",
    "layer_metrics",
    "pos_share",
    "dep_share",
    "dep_share_by_layer",
    "positional_profile",
    "dep_accuracy",
    "head_roles",
    "findings",
)


def gpt2_value_norms(model_dir, tokens: pl.DataFrame) -> dict[int, np.ndarray]:
    """{sentence id: [L, H, n]} ‖f_h(x_j)‖ one sentence at a time: x = ln_1 of each block's input, v = x W_V + b_V
    (c_attn's last third), f_h = v_h W_O^h (c_proj's rows of head h), each a plain matrix product."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    D, H = model.config.n_embd, model.config.n_head
    d = D // H
    out = {}
    for (sid,), group in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        with torch.no_grad():
            hidden = model(
                input_ids=torch.tensor([group["token_id"].to_list()]), output_hidden_states=True
            ).hidden_states
            per_layer = []
            for layer, block in enumerate(model.h):
                x = block.ln_1(hidden[layer][0]).double()  # [n, D]
                v = (
                    x @ block.attn.c_attn.weight[:, 2 * D :].double()
                    + block.attn.c_attn.bias[2 * D :].double()
                )
                W_O = block.attn.c_proj.weight.double()  # [H·d, D]
                per_layer.append(
                    np.stack(
                        [
                            (v[:, h * d : (h + 1) * d] @ W_O[h * d : (h + 1) * d])
                            .norm(dim=-1)
                            .numpy()
                            for h in range(H)
                        ]
                    )
                )
        out[sid] = np.stack(per_layer)
    return out


THRESHOLD = (
    "attend.entropy_null_threshold=0.3"  # footnote 4's skip rule at work in this small model's rows
)


@pytest.fixture(scope="module")
def norm_run(tiny_gpt2, tmp_path_factory):
    from conftest import make_config, write_corpus

    base = tmp_path_factory.mktemp("norm")
    cfg = make_config(base, tiny_gpt2, write_corpus(base / "corpus.txt"), THRESHOLD)
    run(cfg)
    return cfg


def test_norm_weighted_tables_match_a_slow_reference(norm_run, tiny_gpt2):
    tokens = table(norm_run, "tokens")
    maps, norms = attention_maps(tiny_gpt2, tokens), gpt2_value_norms(tiny_gpt2, tokens)
    weighted = {
        sid: maps[sid] * norms[sid][:, :, None, :] for sid in maps
    }  # α'_ij = α_ij ‖f_h(x_j)‖
    ref_heads, ref_pos, ref_dep, _ = reference_tables(
        tiny_gpt2, tokens, window=10, threshold=0.3, k=3, maps=weighted
    )
    heads = table(norm_run, "head_metrics", "norm")
    assert_frames_close(
        heads.select("layer", "head", *METRICS),
        ref_heads.cast({"layer": pl.Int32, "head": pl.Int32}),
        ["layer", "head"],
        METRICS,
    )
    pos = (
        table(norm_run, "pos_share", "norm")
        .filter(pl.col("share") > 0)
        .select("layer", "head", "direction", "tag", "share")
    )
    assert_frames_close(
        pos,
        ref_pos.cast({"layer": pl.Int32, "head": pl.Int32}).filter(pl.col("share") > 0),
        ["layer", "head", "direction", "tag"],
        ["share"],
    )
    dep = table(norm_run, "dep_share", "norm").filter(pl.col("share") > 0)
    assert_frames_close(
        dep,
        ref_dep.cast({"layer": pl.Int32, "head": pl.Int32}).filter(pl.col("share") > 0),
        ["layer", "head", "label"],
        ["share"],
    )
    attention = table(
        norm_run, "head_metrics"
    )  # the weighting changes the numbers: the test is not vacuous
    assert not np.allclose(attention["null_share"], heads["null_share"], atol=1e-3)
    assert heads["entropy_skipped"].sum() > 0 and not attention["entropy_skipped"].equals(
        heads["entropy_skipped"]
    )
    both = table(norm_run, "head_metrics", weighting=None)
    assert (
        both.columns[0] == "weighting"
        and both["weighting"].to_list() == ["attention"] * 6 + ["norm"] * 6
    )
    assert (
        "weighting" not in table(norm_run, "exemplars", weighting=None).columns
    )  # exemplars: attention only
    for name in WEIGHTED:
        assert set(table(norm_run, name, weighting=None)["weighting"]) == {"attention", "norm"}, (
            name
        )
    assert (
        heads["null_share_ci_low"].is_not_nan().all()
    )  # the bootstrap covers the norm weighting too


def save_tiny_llama(directory: Path, attention_bias: bool) -> Path:
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attention_bias=attention_bias,
        initializer_range=0.3,
    )
    LlamaModel(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("attention_bias", [False, True])
def test_llama_value_norms_with_grouped_query_attention(tmp_path, attention_bias):
    """The adapter's norms (the value projection's output, G_h = W_O^h W_O^hᵀ) against ‖v_kv(h) W_O^h‖ from explicit
    products, for 4 heads over 2 key/value heads, on a padded batch."""
    from pipeline.config import ModelConfig
    from pipeline.models import load_adapter

    adapter = load_adapter(
        ModelConfig(name=str(save_tiny_llama(tmp_path / "llama", attention_bias)), device="cpu"),
        torch.device("cpu"),
    )
    assert adapter.family.name == "llama" and adapter.value_norms_reason is None
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3], [11, 12, 13, 14, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    got = adapter.map_attention(
        ids, mask, lambda index, att, norms: norms.clone(), value_norms=True
    )  # [B, H, T] per layer
    model, H, d = adapter.model, 4, 8
    for b, n in enumerate((7, 4)):
        with torch.no_grad():
            hidden = model(input_ids=ids[b : b + 1, :n], output_hidden_states=True).hidden_states
        for layer, block in enumerate(model.layers):
            with torch.no_grad():
                x = block.input_layernorm(hidden[layer][0]).double()
                attn = block.self_attn
                v = x @ attn.v_proj.weight.double().T + (
                    attn.v_proj.bias.double() if attention_bias else 0.0
                )  # [n, 2·d]
                W_O = attn.o_proj.weight.double()  # [D, H·d]
                want = np.stack(
                    [
                        (v[:, (h // 2) * d : (h // 2 + 1) * d] @ W_O[:, h * d : (h + 1) * d].T)
                        .norm(dim=-1)
                        .numpy()
                        for h in range(H)
                    ]
                )
            assert np.allclose(got[layer][b, :, :n].numpy(), want, atol=1e-5, rtol=1e-5), (b, layer)
            assert not np.allclose(want[0], want[2])  # heads 0 and 2 read different key/value heads


def save_constant_value_gpt2(source: Path, directory: Path) -> float:
    """The tiny GPT-2 with zero value weights, the value bias one vector b repeated for every head, and the identity as
    output projection: f_h(x) = b_V^h W_O^h puts b in head h's columns, so ‖f_h(x)‖ = ‖b‖ for every piece, head and
    layer. Returns ‖b‖."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(source))
    D, H = model.config.n_embd, model.config.n_head
    b = torch.linspace(-1.0, 1.0, D // H) + 0.3
    with torch.no_grad():
        for block in model.h:
            block.attn.c_attn.weight[:, 2 * D :] = 0.0
            block.attn.c_attn.bias[2 * D :] = b.repeat(H)
            block.attn.c_proj.weight.copy_(torch.eye(D))
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(directory)
    return float(b.norm())


@pytest.mark.slow
def test_values_of_one_norm_give_the_attention_tables(tiny_gpt2, tmp_path, config_factory):
    """α'_ij = c α_ij with one c for every head and layer: every ratio, share, argmax, role and finding is that of
    attention; the raw sums are c times attention's."""
    from pipeline.analysis import analyses

    c = save_constant_value_gpt2(tiny_gpt2, tmp_path / "constant")
    cfg = config_factory(tmp_path / "constant", "attend.bootstrap_replicates=20")
    run(cfg)
    raw = {column for m in analyses() for column in m.raw_columns} - {
        "entropy_rows",
        "entropy_skipped",
    }
    for name in WEIGHTED:
        attention, norm = table(cfg, name), table(cfg, name, "norm")
        assert attention.height == norm.height > 0, name
        keys = [column for column in attention.columns if not attention[column].dtype.is_float()]
        assert attention.select(keys).equals(norm.select(keys)), (
            name
        )  # roles, argmax offsets, labels
        values = [
            column
            for column in attention.columns
            if attention[column].dtype.is_float() and column not in raw
        ]
        for column in values:
            x, y = attention[column].to_numpy(), norm[column].to_numpy()
            assert np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True), (
                name,
                column,
                np.nanmax(np.abs(x - y)),
            )
    heads, norm_heads = table(cfg, "head_metrics"), table(cfg, "head_metrics", "norm")
    assert np.allclose(norm_heads["mass"], c * heads["mass"], rtol=1e-5) and abs(c - 1) > 0.1


@pytest.mark.slow
def test_switched_off_gives_attention_rows_identical_to_a_run_with_it(
    norm_run, config_factory, tiny_gpt2
):
    off = config_factory(
        tiny_gpt2, THRESHOLD, "attend.norm_weighting=false", "report.formats=[png]", run_name="off"
    )
    from stages import STAGE_NAMES

    state = run(off, stages=STAGE_NAMES).state
    assert state["metrics"]["norm_weighting"] == "disabled: attend.norm_weighting is false"
    for name in (*WEIGHTED, "exemplars"):
        everything = table(off, name, weighting=None)
        if name != "exemplars":
            assert set(everything["weighting"]) == {"attention"}, name
        assert table(off, name).equals(table(norm_run, name)), name
    html = (Path(off.reports_dir) / off.run_name / "index.html").read_text()
    assert "norm weighting was not computed (disabled: attend.norm_weighting is false)" in html


def test_a_model_without_value_norms_runs_with_norm_weighting_off(tmp_path):
    """OLMo with clip_qkv (its values are clamped, which f_h would leave out: a named exception,
    pipeline/models/families.py): the feature is off with its reason, and the reduction runs without norm sums."""
    from transformers import OlmoConfig, OlmoModel

    from pipeline.config import AttendConfig, ModelConfig
    from pipeline.engine import Reduction, TokenArrays, norm_weighting_reason, reduce_sentences
    from pipeline.models import load_adapter

    torch.manual_seed(0)
    OlmoModel(
        OlmoConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=64,
            clip_qkv=8.0,
        )
    ).save_pretrained(tmp_path / "olmo")
    adapter = load_adapter(
        ModelConfig(name=str(tmp_path / "olmo"), device="cpu"), torch.device("cpu")
    )
    attend = AttendConfig(variability_positions=0, bootstrap_replicates=0)
    assert "clip_qkv" in norm_weighting_reason(attend, adapter)
    tokens = pl.DataFrame(
        {
            "sentence_id": [0] * 4,
            "position": [0, 1, 2, 3],
            "token_id": [5, 6, 7, 8],
            "pos": ["DET", "NOUN", "VERB", "PUNCT"],
            "dep": ["det", "nsubj", "ROOT", "punct"],
            "word_index": [0, 1, 2, 3],
            "head_word_index": [1, 2, 2, 2],
        }
    )
    arrays = TokenArrays.from_frame(tokens)
    reduction = Reduction(attend, len(arrays.pos_vocab), len(arrays.dep_vocab))
    sums = reduce_sentences(adapter, arrays, arrays.length_order(), reduction, 64)
    assert "attention_mass.mass" in sums and not any(
        k.startswith(("norm.", "boot.norm.")) for k in sums.additive
    )


@pytest.mark.slow
def test_the_report_reads_attention_for_the_paper_and_both_weightings_for_their_figure(tmp_path):
    """Claims and the paper's figures from the attention rows alone (norm rows that differ change nothing); the side by
    side figure draws both weightings' null shares on one colour scale and their 'to' shares by layer."""
    from pipeline.config import ReportConfig
    from pipeline.report import figures
    from stages.report import build_report

    from synthetic import tables, with_norm_weighting, write_run

    paper = tables()
    runs = {
        "plain": write_run(tmp_path / "plain", paper),
        "both": write_run(
            tmp_path / "both",
            with_norm_weighting(paper, scale=0.5),
            metrics={"norm_weighting": "enabled"},
        ),
    }
    for name, run_dir in runs.items():
        build_report(run_dir, tmp_path / "reports" / name, ReportConfig(formats=["png"]))
    claims = {name: pl.read_parquet(run_dir / "claims.parquet") for name, run_dir in runs.items()}
    assert claims["both"].equals(claims["plain"])
    assert (tmp_path / "reports" / "both" / "figures" / "beyond_norm_weighting.png").is_file()
    assert not (tmp_path / "reports" / "plain" / "figures" / "beyond_norm_weighting.png").exists()
    assert "Kobayashi et al. (2020)" in (tmp_path / "reports" / "both" / "index.html").read_text()

    heads, pos = paper["head_metrics"], paper["pos_share"]
    norm_heads = heads.with_columns(pl.col("null_share") * 0.5)
    norm_pos = pos.with_columns(pl.col("share") * 0.5)
    fig = figures.norm_weighting(heads, norm_heads, pos, norm_pos, top_tags=3)
    maps = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(maps) == 2 and maps[0].get_clim() == maps[1].get_clim()
    assert np.allclose(maps[0].get_array(), figures.grid(heads, "null_share"))
    assert np.allclose(maps[1].get_array(), figures.grid(norm_heads, "null_share"))
    attention_lines, norm_lines = (ax.get_lines() for ax in fig.axes if ax.get_lines())
    assert len(attention_lines) == len(norm_lines) == 3
    for a, b in zip(attention_lines, norm_lines):
        assert a.get_label() == b.get_label() and np.allclose(b.get_ydata(), 0.5 * a.get_ydata())
