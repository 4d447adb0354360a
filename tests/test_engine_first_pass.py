"""The first pass (variability's ᾱ, footnote 3) runs through the main pass's reduction (pipeline/engine/first_pass.py):
its result against a slow per-sentence reference written from the definition, its pair counts in closed form, no
bootstrap replicates, and sums that do not depend on the batching (token budget, a batch halved out of memory).
Synthetic tokens on the tiny GPT-2: no annotate stage, so these test the engine alone."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

WINDOW = 10
LENGTHS = (3, 4, 7, 9, 10, 11, 12, 15, 18, 24)  # shorter than the window, as long, longer


def tokens_frame(seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for sid, n in enumerate(LENGTHS):
        words = np.arange(n) // 2
        heads = rng.integers(0, words.max() + 1, words.max() + 1)
        for p in range(n):
            rows.append(
                {
                    "sentence_id": 100 + sid,
                    "position": p,
                    "token_id": int(rng.integers(10, 50000)),
                    "pos": ["NOUN", "VERB", "ADJ"][p % 3],
                    "dep": ["nsubj", "obj"][p % 2],
                    "word_index": int(words[p]),
                    "head_word_index": int(heads[words[p]]),
                }
            )
    return pl.DataFrame(rows).sample(
        fraction=1.0, shuffle=True, seed=seed
    )  # corpus order must not matter


@pytest.fixture(scope="module")
def setup(tiny_gpt2):
    from pipeline.config import AttendConfig, ModelConfig
    from pipeline.engine import TokenArrays
    from pipeline.models import load_adapter

    adapter = load_adapter(ModelConfig(name=str(tiny_gpt2), device="cpu"), torch.device("cpu"))
    tokens = tokens_frame()
    cfg = AttendConfig(variability_positions=WINDOW, bootstrap_replicates=20, token_budget=64)
    return adapter, tokens, TokenArrays.from_frame(tokens), cfg


def slow_window_mean(model_dir, tokens: pl.DataFrame) -> np.ndarray:
    """ᾱ_ij per layer and head: the mean of α_ij over the sentences in which (i, j) is a non-null pair of the first
    WINDOW pieces (decoder, null piece = position 0: 1 ≤ j ≤ i < min(n, WINDOW)); each sentence alone, no padding."""
    from reference import attention_maps

    maps = attention_maps(model_dir, tokens)
    L, H = next(iter(maps.values())).shape[:2]
    mean = np.zeros((L, H, WINDOW, WINDOW))
    for i in range(1, WINDOW):
        for j in range(1, i + 1):
            reach = [a[:, :, i, j] for a in maps.values() if a.shape[2] > i]
            if reach:
                mean[:, :, i, j] = sum(reach) / len(reach)
    return mean


def test_first_pass_gives_the_window_mean_of_its_definition(setup, tiny_gpt2):
    from pipeline.engine import first_passes

    adapter, tokens, arrays, cfg = setup
    first = first_passes(adapter, arrays, cfg)
    assert first["window_mean"].shape == (2, 3, WINDOW, WINDOW)
    np.testing.assert_allclose(
        first["window_mean"], slow_window_mean(tiny_gpt2, tokens), rtol=0, atol=1e-6
    )
    assert "norm.window_mean" in first  # the norm-weighted main pass reads its own ᾱ


def test_first_pass_sums_pair_counts_in_closed_form_and_no_bootstrap(setup):
    from pipeline.engine import first_pass_sums

    adapter, _, arrays, cfg = setup
    sums = first_pass_sums(adapter, arrays, cfg)
    assert set(sums) == {
        "variability.window_sum",
        "variability.window_pairs",
        "norm.variability.window_sum",
        "norm.variability.window_pairs",
    }  # boot.* none
    want = np.zeros((WINDOW, WINDOW))
    for i in range(1, WINDOW):
        want[i, 1 : i + 1] = sum(
            n > i for n in LENGTHS
        )  # sentences that reach row i, every 1 ≤ j ≤ i
    np.testing.assert_array_equal(sums["variability.window_pairs"], want)
    np.testing.assert_array_equal(sums["norm.variability.window_pairs"], want)
    assert (
        not sums["variability.window_sum"][..., 0].any()
        and not np.triu(sums["variability.window_sum"], 1).any()
    )


def test_first_pass_does_not_depend_on_batching(setup, monkeypatch):
    from pipeline.engine import first_pass_sums
    from pipeline.models import ModelAdapter

    adapter, _, arrays, cfg = setup
    small = first_pass_sums(adapter, arrays, cfg)
    whole = first_pass_sums(adapter, arrays, cfg.model_copy(update={"token_budget": 4096}))
    real = ModelAdapter.map_attention

    def two_at_a_time(self, input_ids, attention_mask, fn, value_norms=False, **kwargs):
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, input_ids, attention_mask, fn, value_norms, **kwargs)

    monkeypatch.setattr(ModelAdapter, "map_attention", two_at_a_time)
    events = {}
    halved = first_pass_sums(adapter, arrays, cfg.model_copy(update={"token_budget": 4096}), events)
    assert events["batches_halved_oom"] >= len(LENGTHS) // 2
    for (
        key
    ) in small:  # the model's float32 attention moves with the batch's padding: rounding, no more
        tolerance = 0 if key.endswith("window_pairs") else 1e-5
        np.testing.assert_allclose(whole[key], small[key], rtol=tolerance, atol=0)
        np.testing.assert_allclose(halved[key], small[key], rtol=tolerance, atol=0)
