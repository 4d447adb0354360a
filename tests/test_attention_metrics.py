"""The attend + aggregate stages against an independent slow reference, closed forms, and invariants."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from helpers import run, table
from reference import attention_maps, reference_tables

METRICS = [
    "null_share",
    "dep_align_attending_parent",
    "dep_align_receiving_parent",
    "dep_align_either",
    "variability",
    "mean_distance",
    "mean_entropy",
]


def assert_frames_close(
    a: pl.DataFrame, b: pl.DataFrame, keys: list[str], values: list[str], atol=1e-5
):
    joined = a.join(b, on=keys, how="full", suffix="_b", coalesce=True)
    assert joined.height == a.height == b.height, (a.height, b.height, joined.height)
    for v in values:
        x, y = joined[v].to_numpy(), joined[f"{v}_b"].to_numpy()
        assert np.allclose(x, y, atol=atol, rtol=1e-6, equal_nan=True), (
            v,
            np.nanmax(np.abs(x - y)),
        )


@pytest.fixture()
def tiny_run(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2)
    run(cfg)
    return cfg


def assert_matches_reference(cfg, model_dir, **reference) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A run's head metrics, POS and label shares and exemplars against tests/reference.py on the same tokens (keyword
    arguments go to reference_tables); returns the run's head_metrics and its non-zero POS shares."""
    tokens = table(cfg, "tokens")
    ref_heads, ref_pos, ref_dep, ref_ex = reference_tables(
        model_dir, tokens, **{"window": 10, "k": 3, **reference}
    )
    heads = table(cfg, "head_metrics")
    assert_frames_close(
        heads.select("layer", "head", *METRICS),
        ref_heads.cast({"layer": pl.Int32, "head": pl.Int32}),
        ["layer", "head"],
        METRICS,
    )
    pos = (
        table(cfg, "pos_share")
        .filter(pl.col("share") > 0)
        .select("layer", "head", "direction", "tag", "share")
    )
    assert_frames_close(
        pos,
        ref_pos.cast({"layer": pl.Int32, "head": pl.Int32}).filter(pl.col("share") > 0),
        ["layer", "head", "direction", "tag"],
        ["share"],
    )
    dep = table(cfg, "dep_share").filter(pl.col("share") > 0)
    assert_frames_close(
        dep,
        ref_dep.cast({"layer": pl.Int32, "head": pl.Int32}).filter(pl.col("share") > 0),
        ["layer", "head", "label"],
        ["share"],
    )
    ex = table(cfg, "exemplars").select(ref_ex.columns).sort("layer", "head", "rank")
    ref_ex = ref_ex.sort("layer", "head", "rank")
    assert ex["sentence_id"].to_list() == ref_ex["sentence_id"].to_list()
    assert_frames_close(
        ex.drop("attention_row"),
        ref_ex.drop("attention_row").cast({"layer": pl.Int32, "head": pl.Int32, "rank": pl.Int32}),
        ["layer", "head", "rank"],
        ["weight", "attending_position", "receiving_position"],
    )
    for got, want in zip(ex["attention_row"].to_list(), ref_ex["attention_row"].to_list()):
        assert np.allclose(got, want, atol=1e-5)
    return heads, pos


def test_pipeline_matches_slow_reference(tiny_run, tiny_gpt2):
    assert_matches_reference(tiny_run, tiny_gpt2)


@pytest.mark.slow
def test_patterns_are_each_heads_attention_on_its_top_exemplar(tiny_run, tiny_gpt2):
    """patterns.parquet (Fig. 4) against the model run one sentence at a time: every head's lower triangle, null
    column included, on the sentence that ranks first among its exemplars."""
    tokens, patterns = table(tiny_run, "tokens"), table(tiny_run, "patterns")
    top = table(tiny_run, "exemplars").filter(pl.col("rank") == 0)
    maps = attention_maps(
        tiny_gpt2, tokens.filter(pl.col("sentence_id").is_in(top["sentence_id"].implode()))
    )
    assert patterns.select("layer", "head").unique().height == top.height == 2 * 3
    for layer, head, sid in top.select("layer", "head", "sentence_id").iter_rows():
        p = patterns.filter((pl.col("layer") == layer) & (pl.col("head") == head))
        want = maps[sid][layer, head]
        i, j = np.tril_indices(want.shape[0])
        assert (p["sentence_id"] == sid).all() and p.height == len(i)
        assert np.array_equal(p["attending_position"].to_numpy(), i) and np.array_equal(
            p["receiving_position"].to_numpy(), j
        )
        assert np.allclose(p["weight"].to_numpy(), want[i, j], atol=1e-6)


@pytest.mark.slow
def test_layer_metrics_are_ratios_of_summed_sums(tiny_run):
    heads, layers = table(tiny_run, "head_metrics"), table(tiny_run, "layer_metrics")
    by_layer = (
        heads.group_by("layer")
        .agg(
            null=pl.col("mass_null").sum() / pl.col("mass_all").sum(),
            entropy=(pl.col("mean_entropy") * pl.col("entropy_rows")).sum()
            / pl.col("entropy_rows").sum(),
            distance=(pl.col("mean_distance") * pl.col("mass")).sum() / pl.col("mass").sum(),
        )
        .sort("layer")
    )
    assert np.allclose(by_layer["null"], layers["null_share"])
    assert np.allclose(by_layer["entropy"], layers["mean_entropy"])
    assert np.allclose(by_layer["distance"], layers["mean_distance"])
    baseline = layers["baseline_dep_pair_share"]
    assert baseline.n_unique() == 1 and 0 < baseline[0] < 1
    # Fig. 8's baselines against a slow count over the tokens: pairs i ≥ 2, 1 ≤ j < i (no diagonal)
    pairs, attending, receiving = 0, 0, 0
    for sentence in table(tiny_run, "tokens").partition_by("sentence_id", maintain_order=True):
        word, head = sentence["word_index"].to_list(), sentence["head_word_index"].to_list()
        for i in range(2, len(word)):
            for j in range(1, i):
                pairs += 1
                if word[i] >= 0 and word[j] >= 0 and word[i] != word[j]:
                    attending += head[j] == word[i]
                    receiving += head[i] == word[j]
    assert layers["baseline_attending_parent"][0] == pytest.approx(attending / pairs, rel=1e-12)
    assert layers["baseline_receiving_parent"][0] == pytest.approx(receiving / pairs, rel=1e-12)
    assert baseline[0] == pytest.approx((attending + receiving) / pairs, rel=1e-12)


@pytest.mark.slow
def test_uniform_attention_closed_forms(uniform_gpt2, config_factory):
    """Zero query/key weights: α_ij = 1/(i+1) for j ≤ i, in every layer and head."""
    cfg = config_factory(uniform_gpt2)
    run(cfg)
    lengths = table(cfg, "tokens").group_by("sentence_id").len()["len"].to_list()
    rows = [(i, n) for n in lengths for i in range(1, n)]
    mass = sum(i / (i + 1) for i, _ in rows)
    expected = {
        "null_share": sum(1 / (i + 1) for i, _ in rows) / len(rows),
        "mean_distance": sum(i * (i - 1) / 2 / (i + 1) for i, _ in rows) / mass,
        "mean_entropy": sum(math.log(i) for i, _ in rows)
        / len(rows),  # i equal weights after renormalising
        "variability": 0.0,  # identical attention in every sentence: ᾱ = α
    }
    heads = table(cfg, "head_metrics")
    assert heads.height == 2 * 3
    for metric, value in expected.items():
        assert np.allclose(heads[metric].to_numpy(), value, atol=1e-6), (
            metric,
            heads[metric].to_list(),
            value,
        )
    # Share of attention to a tag: each piece j ≥ 1 receives Σ_{i ≥ j} 1/(i+1) from its sentence.
    tokens = table(cfg, "tokens")
    received = tokens.filter(pl.col("position") >= 1).join(
        pl.DataFrame({"sentence_id": tokens["sentence_id"].unique().to_list()}), on="sentence_id"
    )
    lengths_by_id = dict(tokens.group_by("sentence_id").len().iter_rows())
    weight = [
        sum(1 / (i + 1) for i in range(j, lengths_by_id[s]))
        for s, j in zip(received["sentence_id"], received["position"])
    ]
    noun_share = sum(w for w, p in zip(weight, received["pos"]) if p == "NOUN") / mass
    got = table(cfg, "pos_share").filter((pl.col("direction") == "to") & (pl.col("tag") == "NOUN"))[
        "share"
    ]
    assert np.allclose(got.to_numpy(), noun_share, atol=1e-6)


@pytest.mark.slow
def test_shares_sum_to_one_and_variability_in_unit_interval(tiny_run):
    pos = (
        table(tiny_run, "pos_share")
        .group_by("layer", "head", "direction")
        .agg(pl.col("share").sum())
    )
    assert np.allclose(pos["share"], 1.0)
    dep = table(tiny_run, "dep_share").group_by("layer", "head").agg(pl.col("share").sum())
    assert np.allclose(dep["share"], 1.0)
    assert np.allclose(
        table(tiny_run, "dep_share_by_layer").group_by("layer").agg(pl.col("share").sum())["share"],
        1.0,
    )
    variability = table(tiny_run, "head_metrics")["variability"]
    assert ((variability >= 0) & (variability <= 1)).all() and variability.max() > 0
    freq = table(tiny_run, "pos_share").filter(
        (pl.col("layer") == 0) & (pl.col("head") == 0) & (pl.col("direction") == "to")
    )
    assert np.isclose(freq["tag_frequency"].sum(), 1.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("attend.token_budget=16", "corpus.part_sentences=1000"),  # batch size 1, one part
        ("attend.token_budget=4096", "corpus.part_sentences=3"),
    ],
)  # ≤64 per batch, 7 parts
def test_batch_size_and_parts_do_not_change_results(tiny_gpt2, config_factory, tiny_run, overrides):
    cfg = config_factory(tiny_gpt2, *overrides, run_name="variant")
    run(cfg)
    n_sentences = table(cfg, "sentences").height
    parts = run(cfg, stages=["attend"], force=True).state["stages"]["attend"]["counts"]["parts"]
    assert parts == (1 if "corpus.part_sentences=1000" in overrides else math.ceil(n_sentences / 3))
    run(cfg, stages=["aggregate"])
    for name, keys in (
        ("head_metrics", ["layer", "head"]),
        ("pos_share", ["layer", "head", "direction", "tag"]),
    ):
        a, b = table(tiny_run, name), table(cfg, name)
        values = [c for c in a.columns if c not in keys and a[c].dtype.is_float()]
        assert_frames_close(a, b, keys, values, atol=1e-6)
    assert (
        table(tiny_run, "exemplars")["sentence_id"].to_list()
        == table(cfg, "exemplars")["sentence_id"].to_list()
    )


@pytest.mark.slow
def test_sentence_order_does_not_change_results(tiny_gpt2, tiny_run):
    """Renumbering sentences (a different corpus order) gives the same per-head sums."""
    import torch

    from pipeline.engine import Reduction, TokenArrays, reduce_sentences
    from pipeline.models import load_adapter

    tokens = table(tiny_run, "tokens")
    ids = tokens["sentence_id"].unique().sort().to_numpy()
    perm = dict(zip(ids.tolist(), np.random.default_rng(3).permutation(ids).tolist()))
    shuffled = tokens.with_columns(pl.col("sentence_id").replace_strict(perm)).sample(
        fraction=1.0, shuffle=True, seed=1
    )
    adapter = load_adapter(tiny_run.model, torch.device("cpu"))
    attend = tiny_run.attend.model_copy(
        update={"variability_positions": 0}
    )  # no first pass needed here
    results = []
    for frame in (tokens, shuffled):
        arrays = TokenArrays.from_frame(frame)
        reduction = Reduction(attend, len(arrays.pos_vocab), len(arrays.dep_vocab))
        results.append(
            reduce_sentences(adapter, arrays, arrays.length_order(), reduction, attend.token_budget)
        )
    for key in (
        "attention_mass.mass",
        "null_attention.mass_null",
        "distance.distance",
        "entropy.entropy_sum",
        "dependency_alignment.dep_attending_parent",
        "pos_share.pos_to",
        "dependency_labels.dep_to",
    ):
        assert np.allclose(results[0][key], results[1][key], rtol=1e-6, atol=1e-9), key


@pytest.mark.slow
def test_resume_after_interrupted_attend_matches_uninterrupted(
    tiny_gpt2, config_factory, tiny_run, monkeypatch
):
    import stages.attend as attend

    cfg = config_factory(tiny_gpt2, run_name="interrupted")
    real_call, calls = attend.AttendWorker.__call__, []

    def killed_on_the_third_part(self, unit, progress=None):
        if self.first_pass is not None and len(calls) == 2:  # main pass: killed on the third part
            raise KeyboardInterrupt("simulated kill")
        calls.append(unit.index) if self.first_pass is not None else None
        return real_call(self, unit, progress)

    monkeypatch.setattr(attend.AttendWorker, "__call__", killed_on_the_third_part)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    assert sorted(p.name for p in (cfg.run_dir / "attend").glob("part-*.npz")) == [
        "part-00000.npz",
        "part-00001.npz",
    ]
    assert not list((cfg.run_dir / "attend").glob(".*tmp"))
    monkeypatch.setattr(attend.AttendWorker, "__call__", real_call)
    state = run(cfg).state
    assert state["stages"]["attend"]["counts"]["parts_resumed"] == 2
    assert state["stages"]["corpus"]["status"] == "done"
    a, b = table(tiny_run, "head_metrics"), table(cfg, "head_metrics")
    assert_frames_close(a, b, ["layer", "head"], METRICS, atol=1e-9)


@pytest.mark.slow
def test_findings_correlations_match_scipy_on_head_table(tiny_run):
    from scipy.stats import pearsonr

    heads = table(tiny_run, "head_metrics")
    findings = dict(
        zip(table(tiny_run, "findings")["statistic"], table(tiny_run, "findings")["value"])
    )
    r, _ = pearsonr(heads["mean_distance"], heads["mean_entropy"])
    assert np.isclose(findings["r_distance_entropy"], r)
    assert np.isclose(findings["sd_mean_distance"], heads["mean_distance"].std())
    assert np.isclose(findings["null_share_max"], heads["null_share"].max())


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_sentence_once_within_the_token_budget(seed):
    from pipeline.engine import plan_batches

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 120, size=300)
    for order in (np.sort(lengths), lengths):
        batches = plan_batches(order, 256)
        assert np.array_equal(np.concatenate(batches), np.arange(len(order)))
        for b in batches:
            assert len(b) == 1 or len(b) * order[b].max() <= 256
    assert plan_batches(np.array([], dtype=int), 64) == []


@pytest.mark.slow
def test_a_batch_out_of_device_memory_is_halved_and_counted(tiny_gpt2, tiny_run, monkeypatch):
    import torch

    from pipeline.engine import Reduction, TokenArrays, first_passes, reduce_sentences
    from pipeline.errors import PipelineError
    from pipeline.models import ModelAdapter, load_adapter

    adapter = load_adapter(tiny_run.model, torch.device("cpu"))
    arrays = TokenArrays.from_frame(table(tiny_run, "tokens"))
    attend = tiny_run.attend
    order = arrays.length_order()

    def both_passes(events=None):
        first = {
            k: torch.from_numpy(v).float()
            for k, v in first_passes(adapter, arrays, attend, events=events).items()
        }
        reduction = Reduction(
            attend, len(arrays.pos_vocab), len(arrays.dep_vocab), first_pass=first
        )
        return first, reduce_sentences(adapter, arrays, order, reduction, 4096, events=events)

    first, whole = both_passes()
    real = ModelAdapter.map_attention

    def small_memory(self, input_ids, attention_mask, fn, value_norms=False, **kwargs):
        if input_ids.shape[0] > 2:  # a device that holds two sentences at a time
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, input_ids, attention_mask, fn, value_norms, **kwargs)

    monkeypatch.setattr(ModelAdapter, "map_attention", small_memory)
    events = {}
    first_halved, halved = both_passes(events)
    assert events["batches_halved_oom"] >= len(order) // 2  # both passes halve
    assert torch.allclose(first["window_mean"], first_halved["window_mean"], rtol=1e-5)
    assert torch.allclose(first["norm.window_mean"], first_halved["norm.window_mean"], rtol=1e-5)
    for key in (
        "attention_mass.mass",
        "null_attention.mass_null",
        "distance.distance",
        "entropy.entropy_sum",
        "pos_share.pos_to",
        "dependency_labels.dep_to",
        "variability.var_abs_dev",
        "norm.attention_mass.mass",
        "norm.entropy.entropy_sum",
        "norm.variability.var_abs_dev",
        "logit_lens.lens_stats",
        "logit_lens.lens_rank_hist",
    ):
        assert np.allclose(whole[key], halved[key], rtol=1e-5), (
            key
        )  # float32 matmuls over other batch shapes
    assert np.array_equal(whole.exemplars["sentence_id"], halved.exemplars["sentence_id"])
    monkeypatch.setattr(
        ModelAdapter,
        "map_attention",
        lambda self, i, m, fn, value_norms=False, **kw: (_ for _ in ()).throw(
            torch.OutOfMemoryError("oom")
        ),
    )
    reduction = Reduction(
        attend.model_copy(update={"variability_positions": 0}),
        len(arrays.pos_vocab),
        len(arrays.dep_vocab),
    )
    with pytest.raises(
        PipelineError, match="one sentence of .* pieces does not fit in device memory"
    ):
        reduce_sentences(adapter, arrays, order[:1], reduction, 4096)
