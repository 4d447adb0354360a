"""The Poisson bootstrap (pipeline/analysis/bootstrap.py): coverage with a known truth, collapse where every sentence is
the same, replicates equal to weighted per-sentence sums, and independence of batching."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.analysis import bootstrap
from pipeline.sums import poisson_weights

from conftest import write_corpus
from helpers import run, table

RATIOS = ["null_share", "dep_align_either", "mean_distance", "mean_entropy", "variability"]


def test_the_interval_covers_a_known_ratio_about_95_percent_of_the_time():
    """Simulated corpora with a known population ratio E[x]/E[y] (a share's numerator and denominator per sentence):
    the 95% interval from 200 Poisson replicates contains it in 90-98.5% of 400 corpora (binomial noise on 400 draws
    is ±2.2%); a bootstrap that ignored the sentence-to-sentence variance would cover far less."""
    rng = np.random.default_rng(1)
    truth, covered, S = 0.3, 0, 400
    for trial in range(400):
        y = rng.gamma(4.0, 5.0, S)  # per-sentence mass
        x = rng.beta(3.0, 7.0, S) * y  # per-sentence attention on related pairs: E[x]/E[y] = 0.3
        w = poisson_weights(np.arange(S) + trial * S, 200, seed=0)
        low, high = bootstrap.interval((w @ x) / (w @ y))
        covered += bool(low <= truth <= high)
    assert 0.90 <= covered / 400 <= 0.985, covered


def test_weights_depend_on_the_sentence_and_seed_only():
    ids = np.array([5, 9, 12])
    w = poisson_weights(ids, 50, seed=3)
    assert w.shape == (50, 3) and np.array_equal(
        w[:, 1], poisson_weights(np.array([9]), 50, seed=3)[:, 0]
    )
    assert not np.array_equal(w, poisson_weights(ids, 50, seed=4))
    assert abs(poisson_weights(np.arange(2000), 100, 0).mean() - 1.0) < 0.02  # Poisson(1)


@pytest.mark.slow
def test_identical_sentences_give_intervals_of_zero_width(tiny_gpt2, tmp_path, config_factory):
    """Every sentence the same: every replicate's ratio is the full corpus's, whatever the weights."""
    corpus = write_corpus(
        tmp_path / "same.txt", ["The old man sat on the bench by the river."] * 12
    )
    cfg = config_factory(
        tiny_gpt2, "attend.bootstrap_replicates=50", corpus=corpus, run_name="same"
    )
    run(cfg)
    heads, layers = table(cfg, "head_metrics"), table(cfg, "layer_metrics")
    assert table(cfg, "sentences").height == 12
    for frame in (heads, layers):
        for c in RATIOS:
            assert np.allclose(
                frame[f"{c}_ci_low"], frame[c], rtol=1e-6, atol=1e-6, equal_nan=True
            ), c
            assert np.allclose(
                frame[f"{c}_ci_high"], frame[c], rtol=1e-6, atol=1e-6, equal_nan=True
            ), c


@pytest.fixture()
def boot_run(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, "attend.bootstrap_replicates=40", run_name="boot")
    run(cfg)
    return cfg


@pytest.mark.slow
def test_replicates_are_weighted_per_sentence_sums(boot_run, tiny_gpt2):
    """Independent of the batch: each sentence through the engine alone, then Σ_s w_rs x_s per replicate."""
    from pipeline.config import AttendConfig
    from pipeline.engine import Reduction, TokenArrays, first_passes, reduce_sentences
    from pipeline.models import load_adapter, resolve_device
    from pipeline.run.parts import read_meta

    tokens = table(boot_run, "tokens")
    vocab = read_meta(boot_run.run_dir / "tokens")
    arrays = TokenArrays.from_frame(tokens, vocab["pos_vocab"], vocab["dep_vocab"])
    adapter = load_adapter(boot_run.model, resolve_device("cpu"))
    single = AttendConfig(
        bootstrap_replicates=0,
        dependency_accuracy=False,
        positional_offsets=0,
        norm_weighting=False,
        logit_lens_sample=1.0,
    )
    first = {
        k: __import__("torch").from_numpy(v).float()
        for k, v in first_passes(adapter, arrays, single).items()
    }
    reduction = Reduction(single, len(arrays.pos_vocab), len(arrays.dep_vocab), first_pass=first)
    per_sentence = [
        reduce_sentences(adapter, arrays, np.array([s]), reduction, 4096)
        for s in range(len(arrays.lengths))
    ]
    x = np.stack(
        [
            p["dependency_alignment.dep_attending_parent"]
            + p["dependency_alignment.dep_receiving_parent"]
            for p in per_sentence
        ]
    )  # [S, L, H]
    y = np.stack([p["attention_mass.mass"] for p in per_sentence])
    w = poisson_weights(arrays.sentence_ids, 40, seed=0)  # [R, S]
    low, high = bootstrap.interval(np.einsum("rs,slh->rlh", w, x) / np.einsum("rs,slh->rlh", w, y))
    heads = table(boot_run, "head_metrics").sort("layer", "head")
    assert np.allclose(heads["dep_align_either_ci_low"], low.ravel(), rtol=1e-6)
    assert np.allclose(heads["dep_align_either_ci_high"], high.ravel(), rtol=1e-6)
    assert (heads["dep_align_either_ci_low"] <= heads["dep_align_either"]).all()
    assert (heads["dep_align_either"] <= heads["dep_align_either_ci_high"]).all()


@pytest.mark.slow
def test_intervals_do_not_depend_on_batches_and_the_point_values_not_on_the_bootstrap(
    boot_run, tiny_gpt2, config_factory
):
    small = config_factory(
        tiny_gpt2, "attend.bootstrap_replicates=40", "attend.token_budget=64", run_name="small"
    )
    none = config_factory(tiny_gpt2, "attend.bootstrap_replicates=0", run_name="none")
    run(small)
    run(none)
    a, b, c = (table(cfg, "head_metrics").sort("layer", "head") for cfg in (boot_run, small, none))
    for column in RATIOS:
        for side in ("low", "high"):
            name = f"{column}_ci_{side}"
            assert np.allclose(a[name], b[name], rtol=1e-6, equal_nan=True), name
            assert c[name].is_nan().all()
        assert np.allclose(a[column], c[column], rtol=1e-12, equal_nan=True)
    f = (
        table(boot_run, "findings")
        .filter(pl.col("statistic") == "r_distance_entropy")
        .row(0, named=True)
    )
    assert f["ci_low"] <= f["value"] <= f["ci_high"]
    assert table(none, "findings")["ci_low"].is_null().all()


@pytest.mark.slow
def test_extremes_over_heads_get_a_note_instead_of_an_interval(boot_run):
    """A percentile bootstrap of a maximum or an argmax over heads is not a valid interval: those findings carry
    none, with the reason; a mean and a correlation keep theirs."""
    f = {r["statistic"]: r for r in table(boot_run, "findings").to_dicts()}
    for statistic in (
        "null_share_max",
        "max_mean_distance",
        "layer_max_mean_distance",
        "layer_max_dep_align",
    ):
        assert f[statistic]["ci_low"] is None and f[statistic]["ci_high"] is None, statistic
        assert f[statistic]["interval_note"].startswith("no interval: an"), statistic
    for statistic in ("null_share_mean", "r_distance_entropy"):
        assert f[statistic]["ci_low"] <= f[statistic]["value"] <= f[statistic]["ci_high"], statistic
        assert f[statistic]["interval_note"] is None, statistic
