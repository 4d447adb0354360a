"""Large models (pipeline/models/memory.py): shapes from configs alone (parameter counts against the published
ones), the logit lens's share from the model's dimensions (attend.logit_lens_sample: auto), the memory estimate that
lowers the token budget or refuses in one line, the cap on pieces per sentence as attend sees it, and sums that
accumulate in float64 when the model runs in bfloat16."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.config import AttendConfig, ModelConfig
from pipeline.errors import PipelineError
from pipeline.models import memory
from pipeline.models.memory import (
    GiB,
    MemoryEstimate,
    estimate,
    fit_budget,
    forward_macs,
    lens_macs,
    lens_sample_share,
    resolve_lens_sample,
    shape_of,
)
from pipeline.run import io

from helpers import run, table


def llama_config(**dims):
    from transformers import LlamaConfig

    return LlamaConfig(**dims)


SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)


def llama_parameters(D, H, kv, F, L, V, d=None):
    """Closed form of a Llama base model: per layer q, k, v, o, gate/up/down and two norms; the embeddings and the
    final norm."""
    d = d or D // H
    return L * (D * H * d + 2 * D * kv * d + H * d * D + 3 * D * F + 2 * D) + V * D + D


def test_shapes_from_configs_match_the_published_counts():
    smol, big = shape_of(llama_config(**SMOLLM2)), shape_of(llama_config(**LLAMA3_8B))
    assert (
        smol.parameters == llama_parameters(576, 9, 3, 1536, 30, 49152) == 134_515_008
    )  # SmolLM2-135M
    assert smol.trunk_parameters == smol.parameters  # tied: the LM head is the embeddings
    assert big.trunk_parameters == llama_parameters(4096, 32, 8, 14336, 32, 128256)
    assert (
        big.parameters == big.trunk_parameters + 128256 * 4096 == 8_030_261_248
    )  # Llama-3-8B, as published
    assert (smol.embedding_parameters, big.embedding_parameters) == (49152 * 576, 128256 * 4096)
    assert (big.layers, big.heads, big.head_dim, big.width, big.vocab) == (
        32,
        32,
        128,
        4096,
        128256,
    )


def test_lens_cost_and_the_share_it_allows():
    smol, big = shape_of(llama_config(**SMOLLM2)), shape_of(llama_config(**LLAMA3_8B))
    assert lens_macs(smol) == 49152 * 576 * 31 and lens_macs(big) == 128256 * 4096 * 33
    # the convention (2 FLOPs per parameter of the whole model, LM head included): 6.5× and 2×
    assert lens_macs(smol) / smol.parameters == pytest.approx(6.52, abs=0.01)
    assert lens_macs(big) / big.parameters == pytest.approx(2.16, abs=0.01)
    # ours: the blocks' weights (embeddings are looked up) plus attention over C pieces
    C = 15.0
    assert forward_macs(smol, C) == smol.parameters - 49152 * 576 + 2 * 30 * 9 * 64 * C
    assert (
        forward_macs(big, C) == big.parameters - 2 * 128256 * 4096 + 2 * 32 * 32 * 128 * C
    )  # no LM head, no lookup
    for shape, expected in ((smol, 0.0182), (big, 0.0604)):
        share = lens_sample_share(shape, C)
        assert share == pytest.approx(expected, abs=5e-4)
        assert share * lens_macs(shape) == pytest.approx(
            0.15 * forward_macs(shape, C)
        )  # 15% of the forward pass
    tiny = shape_of(
        llama_config(
            hidden_size=8,
            intermediate_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            vocab_size=4,
        )
    )
    assert (
        lens_sample_share(tiny, C) == 1.0
    )  # a lens cheaper than 15% of the forward: every sentence


def test_an_explicit_share_wins_and_auto_says_what_it_chose():
    big = shape_of(llama_config(**LLAMA3_8B))
    assert resolve_lens_sample(AttendConfig(logit_lens_sample=0.3), big, 10_000, 30.0) == (
        0.3,
        None,
    )
    share, line = resolve_lens_sample(AttendConfig(), big, 10_000, 30.0)
    assert (
        share == pytest.approx(lens_sample_share(big, 15.0))
        and "auto → 0.06" in line
        and "\n" not in line
    )
    share, line = resolve_lens_sample(
        AttendConfig(), big, 500, 30.0
    )  # 6% of 500 is 30 sentences: raised to 100
    assert share == pytest.approx(100 / 500) and "at least 100 sentences" in line
    assert resolve_lens_sample(AttendConfig(), big, 40, 30.0)[0] == 1.0


def test_memory_estimate_closed_form_and_budget():
    big = shape_of(llama_config(**LLAMA3_8B))
    est = estimate(big, torch.bfloat16, longest=130, lens=False)
    assert est.weights == 8_030_261_248 * 2
    bytes_ = memory.ATTENTION_BYTES
    assert (
        est.attention(8192) == bytes_ * 32 * 8192 * 130
        and est.attention(64) == bytes_ * 32 * 130 * 130
    )  # one alone
    assert fit_budget(est, 8192, 80 * GiB, "m") == (
        8192,
        None,
    )  # 14 GiB of weights and ~1 GiB of maps fit an H100
    budget, line = fit_budget(est, 65536, 30 * GiB, "m")
    usable = int(30 * GiB * memory.USABLE)
    assert 130 <= budget < 65536 and est.total(budget) <= usable < est.total(
        budget + 1
    )  # the largest that fits
    assert line.startswith("attend.token_budget lowered from 65536 to ") and "\n" not in line
    with pytest.raises(
        PipelineError,
        match=r"needs ~30.0 GiB before any batch \(its weights: 29.9 GiB\), but 24.0 GiB are free: use model.dtype=bfloat16, "
        r"model.device_map=auto",
    ) as e:
        fit_budget(estimate(big, torch.float32, 130, False), 8192, 24 * GiB, "'llama'")
    assert "\n" not in str(e.value)
    one_long = MemoryEstimate(
        weights=0, fixed=0, attention_per_element=36, heads=32, longest=100_000, per_piece=0
    )
    with pytest.raises(
        PipelineError, match="one sentence of 100000 pieces .* lower corpus.max_pieces"
    ):
        fit_budget(one_long, 8192, 80 * GiB, "m")
    assert fit_budget(est, 8192, None, "m") == (
        8192,
        None,
    )  # unknown free memory (Apple MPS): as configured


def test_load_options_pass_dtype_and_device_map():
    from pipeline.models.loading import load_options

    cpu = torch.device("cpu")
    assert load_options(ModelConfig(dtype="bfloat16"), cpu) == {
        "dtype": torch.float32
    }  # a CPU computes in float32
    assert load_options(ModelConfig(device_map="auto"), cpu) == {
        "dtype": torch.float32,
        "device_map": "auto",
    }


def _attend_sums(cfg) -> dict:
    parts = sorted((cfg.run_dir / "attend").glob("part-*.npz"))
    out = {}
    for p in parts:
        for k, v in io.read_npz(p).items():
            out[k] = out.get(k, 0) + np.asarray(v, dtype=np.float64)
    return out


@pytest.mark.slow
def test_lowered_budget_and_capped_sentences_give_the_same_sums(
    tiny_gpt2, config_factory, monkeypatch, capsys
):
    """Short of memory the stage lowers the token budget (one line, recorded) and the sums stay the same; the cap on
    pieces (corpus.max_pieces, plus the BOS) holds for what attend sees; auto on a small corpus decodes every
    sentence."""
    common = ("corpus.max_pieces=12", "model.bos=always", "attend.bootstrap_replicates=0")
    plain = config_factory(tiny_gpt2, *common, run_name="plain")
    run(plain, ["corpus", "annotate", "attend"])
    longest = int(table(plain, "tokens").group_by("sentence_id").len()["len"].max())
    assert longest <= 12 + 1
    plan = json.loads((plain.run_dir / "run.json").read_text())["attend_plan"]
    assert plan["memory"]["longest_sentence"] == longest and plan["memory"]["token_budget"] == 128
    assert plan["logit_lens_sample"] == {"setting": 1.0, "share": 1.0}

    shape = memory.model_shape(plain.model)
    est = estimate(shape, torch.float32, longest, lens=True)
    monkeypatch.setattr(
        memory,
        "free_memory",
        lambda device, all_gpus=False: int(est.total(2 * longest) / memory.USABLE) + 1,
    )
    low = config_factory(tiny_gpt2, *common, "attend.logit_lens_sample=auto", run_name="low")
    capsys.readouterr()
    run(low, ["corpus", "annotate", "attend"])
    out = capsys.readouterr().out
    plan = json.loads((low.run_dir / "run.json").read_text())["attend_plan"]
    assert (
        plan["memory"]["token_budget"] == 2 * longest < 128
        and plan["memory"]["token_budget_configured"] == 128
    )
    assert f"[attend] attend.token_budget lowered from 128 to {2 * longest}" in out
    assert (
        plan["logit_lens_sample"] == {"setting": "auto", "share": 1.0}
        and "at least 100 sentences" in out
    )
    a, b = _attend_sums(plain), _attend_sums(low)
    assert a.keys() == b.keys() and any(k.startswith("logit_lens.") for k in a)
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6, equal_nan=True), (
            k,
            np.abs(a[k] - b[k]).max(),
        )  # float32 batches

    monkeypatch.setattr(memory, "free_memory", lambda device, all_gpus=False: 2**20)
    with pytest.raises(
        PipelineError, match=r"needs ~0.\d GiB before any batch .* but 0.0 GiB are free"
    ):
        run(
            config_factory(tiny_gpt2, *common, run_name="refused"), ["corpus", "annotate", "attend"]
        )


@pytest.mark.slow
def test_a_device_map_run_gives_the_same_sums(tiny_gpt2, config_factory):
    """model.device_map: the model is left where accelerate placed it (load_adapter does not move it) and the adapter
    brings each layer's maps, norms and residual stream to its device. On this CPU-only machine accelerate puts every
    layer on the CPU, so this covers the code path, not a split over GPUs (no GPU here)."""
    common = ("attend.bootstrap_replicates=0", "attend.logit_lens_sample=1.0")
    plain = config_factory(tiny_gpt2, *common, run_name="plain")
    mapped = config_factory(tiny_gpt2, *common, "model.device_map=auto", run_name="mapped")
    for cfg in (plain, mapped):
        run(cfg, ["corpus", "annotate", "attend"])
    parts = sorted(p.name for p in (plain.run_dir / "attend").glob("part-*.npz"))
    assert parts and parts == sorted(p.name for p in (mapped.run_dir / "attend").glob("part-*.npz"))
    for name in parts:  # part by part, every sum bit for bit
        a, b = (
            io.read_npz(plain.run_dir / "attend" / name),
            io.read_npz(mapped.run_dir / "attend" / name),
        )
        assert (
            a.keys() == b.keys()
            and any(k.startswith("norm.") for k in a)
            and any(k.startswith("logit_lens.") for k in a)
        )
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k]), equal_nan=True), (name, k)


@pytest.mark.slow
def test_bfloat16_model_sums_accumulate_in_float64(tiny_gpt2):
    """The engine reduces a bfloat16 model's attention into float64 sums: Σ of every attending row's attention is the
    number of rows (1,216 per head here, far past bfloat16's 256, where adding 1 is lost), and the sums stay within
    bfloat16's rounding of the float32 model's."""
    from pipeline.engine import Reduction, TokenArrays, reduce_sentences
    from pipeline.models import load_adapter

    rng = np.random.default_rng(0)
    S, T = 64, 20
    tokens = pl.DataFrame(
        {
            "sentence_id": np.repeat(np.arange(S), T),
            "position": np.tile(np.arange(T), S),
            "token_id": rng.integers(0, 50000, S * T),
            "pos": ["NOUN"] * (S * T),
            "dep": ["dep"] * (S * T),
            "word_index": np.tile(np.arange(T), S),
            "head_word_index": np.zeros(S * T, dtype=np.int64),
        }
    )
    arrays = TokenArrays.from_frame(tokens)
    attend = AttendConfig(variability_positions=0, bootstrap_replicates=0, logit_lens=False)
    sums = {}
    for dtype in (torch.float32, torch.bfloat16):
        adapter = load_adapter(ModelConfig(name=str(tiny_gpt2), device="cpu"), torch.device("cpu"))
        adapter.model.to(dtype)
        reduction = Reduction(attend, len(arrays.pos_vocab), len(arrays.dep_vocab))
        sums[dtype] = reduce_sentences(adapter, arrays, arrays.length_order(), reduction, 256)
    rows = S * (T - 1)
    bf16, f32 = sums[torch.bfloat16], sums[torch.float32]
    assert np.asarray(bf16["attention_mass.mass_all"]).dtype == np.float64
    assert np.allclose(bf16["attention_mass.mass_all"], rows, rtol=2e-3)
    assert np.allclose(f32["attention_mass.mass_all"], rows, rtol=1e-6)
    for key in (
        "attention_mass.mass",
        "null_attention.mass_null",
        "distance.distance",
        "norm.attention_mass.mass",
    ):
        assert np.allclose(bf16[key], f32[key], rtol=3e-2), key
    # what a bfloat16 accumulator would have given: stuck at 256
    stuck = torch.zeros((), dtype=torch.bfloat16)
    for _ in range(rows):
        stuck += 1
    assert float(stuck) == 256.0
