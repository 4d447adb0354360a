"""Positional profiles, head roles and the sink rates (pipeline/metrics/positional.py, pipeline/analysis/roles.py,
pipeline/metrics/sink_rate.py): against a slow reference (loops over i and j, one sentence at a time; Gu et al.'s
per-sentence score), closed forms under uniform attention, roles on synthetic head tables made to hold and to fail,
and the metric switched off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.analysis import positional as positional_analysis
from pipeline.analysis import roles
from pipeline.config import RolesConfig
from pipeline.report import figures
from pipeline.report.figure_specs import FIGURES
from pipeline.run.runner import run_pipeline
from stages import STAGE_NAMES

from conftest import make_config, write_corpus
from helpers import ANALYSIS, run, table
from reference import attention_maps

D = 20  # attend.positional_offsets' default


@pytest.fixture(scope="module")
def tiny_run(tiny_gpt2, tmp_path_factory):
    """Every stage, report included, on the tiny random model with the default config."""
    base = tmp_path_factory.mktemp("positional")
    cfg = make_config(base, tiny_gpt2, write_corpus(base / "corpus.txt"))
    run(cfg, stages=STAGE_NAMES)
    return cfg


@pytest.fixture(scope="module")
def maps(tiny_run, tiny_gpt2):
    return attention_maps(tiny_gpt2, table(tiny_run, "tokens"))


def reference_offsets(maps: dict, D: int) -> tuple[np.ndarray, np.ndarray]:
    """[L, H, D] Σ α_ij over i − j = d (j ≥ 1) and [L, H] Σ α_ij over 1 ≤ j ≤ i, rows i ≥ 1: loops over i and j."""
    L, H = next(iter(maps.values())).shape[:2]
    num, mass = np.zeros((L, H, D)), np.zeros((L, H))
    for A in maps.values():
        n = A.shape[2]
        for layer in range(L):
            for head in range(H):
                a = A[layer, head]
                for i in range(1, n):
                    for j in range(1, i + 1):
                        mass[layer, head] += a[i, j]
                        if 1 <= i - j <= D:
                            num[layer, head, i - j - 1] += a[i, j]
    return num, mass


@pytest.mark.slow
def test_offset_shares_match_slow_reference(tiny_run, maps):
    num, mass = reference_offsets(maps, D)
    L, H = mass.shape
    want = num / mass[..., None]
    profile = table(tiny_run, "positional_profile").sort("layer", "head", "offset")
    assert profile.height == L * H * D and profile["offset"].unique().sort().to_list() == list(
        range(1, D + 1)
    )
    assert np.allclose(profile["share"].to_numpy().reshape(L, H, D), want, atol=1e-5)
    heads = table(tiny_run, "head_metrics").sort("layer", "head")
    assert np.allclose(heads["previous_piece_share"].to_numpy(), want[..., 0].ravel(), atol=1e-5)
    assert np.allclose(heads["max_offset_share"].to_numpy(), want.max(-1).ravel(), atol=1e-5)
    ordered = np.sort(want, -1)
    clear = (
        ordered[..., -1] - ordered[..., -2]
    ).ravel() > 1e-4  # argmax compared where no near-tie can swap it
    assert clear.any()
    assert np.array_equal(
        heads["argmax_offset"].to_numpy()[clear], (want.argmax(-1) + 1).ravel()[clear]
    )
    layers = table(tiny_run, "layer_metrics").sort(
        "layer"
    )  # each layer's summed numerators over its summed mass
    assert np.allclose(
        layers["previous_piece_share"].to_numpy(), num[..., 0].sum(1) / mass.sum(1), atol=1e-5
    )
    assert np.allclose(
        layers["max_offset_share"].to_numpy(),
        (num.sum(1) / mass.sum(1)[:, None]).max(-1),
        atol=1e-5,
    )


def harmonic(n: int) -> float:
    return sum(1 / k for k in range(1, n + 1))


def test_uniform_attention_offset_shares_closed_form(uniform_gpt2, config_factory):
    """α_ij = 1/(i+1) for j ≤ i. Offset d takes 1/(i+1) from each row i ≥ d + 1 (so that j = i − d ≥ 1): in a
    sentence of n pieces Σ_{i=d+1}^{n−1} 1/(i+1) = H_n − H_{d+1} (0 when n ≤ d + 1, H the harmonic numbers), of its
    non-null mass Σ_{i=1}^{n−1} i/(i+1) = n − H_n. Share(d) = Σ_s max(0, H_n − H_{d+1}) / Σ_s (n − H_n), decreasing
    in d: the largest share is the previous piece's. With D ≥ the longest sentence the shares sum to 1 less the
    share of the diagonal (d = 0, α_ii = 1/(i+1): in the mass, not in the profile)."""
    cfg = config_factory(uniform_gpt2, "attend.positional_offsets=128")
    run(cfg)
    lengths = table(cfg, "tokens").group_by("sentence_id").len()["len"].to_list()
    mass = sum(n - harmonic(n) for n in lengths)
    expected = np.array(
        [
            sum(max(0.0, harmonic(n) - harmonic(d + 1)) for n in lengths) / mass
            for d in range(1, 129)
        ]
    )
    profile = table(cfg, "positional_profile").sort("layer", "head", "offset")
    shares = profile["share"].to_numpy().reshape(2 * 3, 128)
    assert np.allclose(shares, expected[None], atol=1e-6)
    assert (shares[:, max(lengths) - 1 :] == 0).all()  # no sentence reaches that far
    diagonal = (
        sum(1 / (i + 1) for n in lengths for i in range(1, n)) / mass
    )  # d = 0: α_ii, in the mass, not the profile
    assert np.allclose(shares.sum(1), 1 - diagonal, atol=1e-6)
    heads = table(cfg, "head_metrics")
    assert np.allclose(heads["previous_piece_share"].to_numpy(), expected[0], atol=1e-6)
    assert np.allclose(heads["max_offset_share"].to_numpy(), expected[0], atol=1e-6)
    assert (heads["argmax_offset"] == 1).all()
    head_roles = table(cfg, "head_roles")
    assert (
        not head_roles["is_positional"].any() and not head_roles["is_sink"].any()
    )  # share(1) ≈ 0.16, null ≈ 0.1


def synthetic(L: int = 2, H: int = 6) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Heads of layer 0, one per case (defaults of RolesConfig: sink 0.9, positional 0.5, syntactic 3 × baseline,
    broad: mean entropy in the upper quarter), layer 1 a copy with another baseline."""
    rows = [  # null_share, max_offset_share, argmax_offset, dep_align_either, mean_entropy
        (0.95, 0.80, 1.0, 0.40, 1.0),  # 0: sink, also positional and syntactic: the role is sink
        (0.50, 0.60, 2.0, 0.40, 2.0),  # 1: positional (and syntactic): positional
        (0.20, 0.40, 1.0, 0.31, 3.0),  # 2: syntactic (0.31 ≥ 3 × 0.1)
        (0.20, 0.30, 3.0, 0.29, 6.0),  # 3: 0.29 < 0.3, not syntactic; broad (entropy at the top)
        (0.90, 0.50, 1.0, 0.10, 2.5),  # 4: null and offset share exactly at their thresholds: sink
        (
            np.nan,
            np.nan,
            np.nan,
            np.nan,
            np.nan,
        ),  # 5: a head without attention meets nothing: mixed
    ]
    rows = rows[:H]
    heads = pl.DataFrame(
        [(layer, h, *r) for layer in range(L) for h, r in enumerate(rows)],
        orient="row",
        schema={
            "layer": pl.Int32,
            "head": pl.Int32,
            "null_share": pl.Float64,
            "max_offset_share": pl.Float64,
            "argmax_offset": pl.Float64,
            "dep_align_either": pl.Float64,
            "mean_entropy": pl.Float64,
        },
    )
    layers = pl.DataFrame(
        {"layer": pl.Series(range(L), dtype=pl.Int32), "baseline_dep_pair_share": [0.1, 0.2][:L]}
    )
    return heads, layers


def test_roles_hold_and_fail_with_their_thresholds():
    heads, layers = synthetic()
    got = roles.head_roles(heads, layers, RolesConfig())
    assert got.schema == pl.Schema(roles.SCHEMA)
    first = got.filter(pl.col("layer") == 0).sort("head")
    assert first["role"].to_list() == ["sink", "positional", "syntactic", "broad", "sink", "mixed"]
    assert first["is_sink"].to_list() == [True, False, False, False, True, False]
    assert first["is_positional"].to_list() == [True, True, False, False, True, False]
    assert first["is_syntactic"].to_list() == [True, True, True, False, False, False]
    # entropies of both layers' defined heads: 1, 2, 3, 6, 2.5 twice; the 0.75 quantile is 3, met by 3 and 6
    assert first["broad_entropy_threshold"][0] == pytest.approx(
        np.quantile([1, 2, 3, 6, 2.5] * 2, 0.75)
    )
    assert first["is_broad"].to_list() == [False, False, True, True, False, False]
    assert np.allclose(first["syntactic_threshold"].to_numpy(), 0.3)
    # layer 1: the same heads, a baseline of 0.2: 0.4 ≥ 0.6 fails, so nothing there is syntactic
    second = got.filter(pl.col("layer") == 1).sort("head")
    assert not second["is_syntactic"].any() and second["role"].to_list()[2] == "broad"
    # each threshold moved past its heads makes the criterion fail, and the next role in order shows
    stricter = roles.head_roles(
        heads,
        layers,
        RolesConfig(
            sink_null_share=0.99,
            positional_share=0.7,
            syntactic_ratio=4.5,
            broad_entropy_quantile=0.95,
        ),
    )
    first = stricter.filter(pl.col("layer") == 0).sort("head")
    assert first["role"].to_list() == ["positional", "mixed", "mixed", "broad", "mixed", "mixed"]
    assert not first["is_sink"].any() and not first["is_syntactic"].any()
    looser = roles.head_roles(heads, layers, RolesConfig(sink_null_share=0.5))
    assert looser.filter(pl.col("layer") == 0).sort("head")["role"].to_list()[:2] == [
        "sink",
        "sink",
    ]


def gu_scores(maps: dict) -> np.ndarray:
    """Gu et al. (2024), slowly: per sentence and head, the first token's attention averaged over all query rows,
    the first token's own row (A[0, 0] = 1 in a causal model) included. [S, L, H]."""
    scores = []
    for A in maps.values():
        n = A.shape[2]
        scores.append(sum(A[:, :, t, 0] for t in range(n)) / n)
    return np.stack(scores)


@pytest.mark.slow
def test_sink_rate_is_gu_et_al_per_sequence(tiny_run, maps):
    """The indicator score > ε per sentence and head, averaged over (layer, head), then over sentences, against the
    sink_rate finding; per head, the share of sentences, against sink_frequency (near-threshold scores, which float32
    sums could put on either side, are allowed either way)."""
    epsilon = tiny_run.attend.sink_epsilon
    scores = gu_scores(maps)
    S, L, H = scores.shape
    sure, possible = scores > epsilon + 1e-5, scores > epsilon - 1e-5
    heads = table(tiny_run, "head_metrics").sort("layer", "head")
    got = heads["sink_frequency"].to_numpy().reshape(L, H)
    assert (sure.mean(0) - 1e-12 <= got).all() and (got <= possible.mean(0) + 1e-12).all()
    assert (sure == possible).mean() > 0.95 and 0 < got.mean() < 1  # not degenerate on this model
    rate = table(tiny_run, "findings").filter(pl.col("statistic") == "sink_rate")
    assert rate.height == 1 and rate["n"][0] == S

    def per_sequence(indicator):  # over (layer, head), then sentences
        return indicator.reshape(S, -1).mean(1).mean()

    assert per_sequence(sure) - 1e-12 <= rate["value"][0] <= per_sequence(possible) + 1e-12
    assert rate["value"][0] == pytest.approx(got.mean(), abs=1e-12)
    assert np.array_equal(
        table(tiny_run, "head_roles").sort("layer", "head")["sink_frequency"].to_numpy(),
        got.ravel(),
    )
    assert (
        rate["ci_low"][0] <= rate["value"][0] <= rate["ci_high"][0]
    )  # a mean over sentences: the bootstrap applies


@pytest.mark.slow
def test_uniform_attention_sink_rate_closed_form(uniform_gpt2, config_factory):
    """α_t0 = 1/(t+1): on a sentence of n pieces every head scores H_n / n (H the harmonic numbers), so every head's
    sink_frequency is the share of sentences with H_n / n > ε; the pooled null share is Σ_s (H_n − 1) / Σ_s (n − 1),
    rows t ≥ 1 only, well below it (the first token's own row and short sentences lift Gu et al.'s score)."""
    base = config_factory(uniform_gpt2, "attend.variability_positions=0")
    run(base)
    lengths = np.array(table(base, "tokens").group_by("sentence_id").len()["len"].to_list())
    gu = np.array([harmonic(n) / n for n in lengths])
    values = np.unique(gu)
    assert values.size >= 2  # sentences of different lengths
    epsilon = float(
        (values[values.size // 2 - 1] + values[values.size // 2]) / 2
    )  # some sentences sinks, some not
    cfg = config_factory(
        uniform_gpt2,
        "attend.variability_positions=0",
        f"attend.sink_epsilon={epsilon}",
        run_name="u2",
    )
    run(cfg)
    expected = (gu > epsilon).mean()
    assert 0 < expected < 1
    heads = table(cfg, "head_metrics")
    assert np.allclose(heads["sink_frequency"].to_numpy(), expected, atol=1e-12)
    findings = dict(zip(table(cfg, "findings")["statistic"], table(cfg, "findings")["value"]))
    assert findings["sink_rate"] == pytest.approx(expected, abs=1e-12)
    pooled = sum(harmonic(n) - 1 for n in lengths) / sum(n - 1 for n in lengths)
    assert np.allclose(heads["null_share"].to_numpy(), pooled, atol=1e-6)
    assert findings["sink_rate_pooled"] == float(pooled > RolesConfig().sink_rate_epsilon)


@pytest.mark.slow
def test_pooled_sink_rate_is_the_share_of_heads_whose_null_share_exceeds_epsilon(tiny_run, maps):
    """The pooled variant: a head's mean attention to the first position, α_i0 averaged over the attending rows i ≥ 1
    of the whole corpus, counted directly from the attention maps, against sink_rate_pooled and null_share."""
    L, H = next(iter(maps.values())).shape[:2]
    first = np.zeros((L, H))
    rows = 0
    for A in maps.values():
        for i in range(1, A.shape[2]):
            first += A[:, :, i, 0]
            rows += 1
    mean_first = first / rows
    heads = table(tiny_run, "head_metrics").sort("layer", "head")
    assert np.allclose(heads["null_share"].to_numpy(), mean_first.ravel(), atol=1e-5)
    findings = table(tiny_run, "findings")
    rate = findings.filter(pl.col("statistic") == "sink_rate_pooled")
    assert rate.height == 1 and rate["n"][0] == L * H
    assert rate["value"][0] == pytest.approx((mean_first > RolesConfig().sink_rate_epsilon).mean())
    assert (
        table(tiny_run, "head_roles").sort("layer", "head")["above_sink_epsilon"].to_list()
        == (mean_first > RolesConfig().sink_rate_epsilon).ravel().tolist()
    )
    ordered = np.sort(mean_first.ravel())
    for epsilon in (ordered[1:] + ordered[:-1]) / 2:  # every epsilon between two heads' values
        assert roles.sink_rate_pooled(heads, float(epsilon)).value == pytest.approx(
            (mean_first > epsilon).mean()
        )
    # the pipeline's head_roles is roles.head_roles on its own head and layer tables
    again = roles.head_roles(heads, table(tiny_run, "layer_metrics"), RolesConfig())
    assert again.equals(table(tiny_run, "head_roles").sort("layer", "head"))


@pytest.mark.slow
def test_sink_epsilons_come_from_the_config(tiny_gpt2, config_factory):
    """The pooled ε (aggregate.roles.sink_rate_epsilon) reruns aggregate only; Gu et al.'s (attend.sink_epsilon) is
    applied per sentence on the device, so it reruns attend: at ε = 0 every head of a causal model is a sink on every
    sentence (A[0, 0] = 1)."""
    cfg = config_factory(
        tiny_gpt2,
        "aggregate.roles.sink_rate_epsilon=0.01",
        "attend.variability_positions=0",
        "attend.sink_epsilon=0",
    )
    run(cfg)
    heads = table(cfg, "head_metrics")
    want = float((heads["null_share"] > 0.01).mean())
    findings = dict(zip(table(cfg, "findings")["statistic"], table(cfg, "findings")["value"]))
    assert findings["sink_rate_pooled"] == pytest.approx(want) and findings["sink_rate"] == 1.0
    changed = config_factory(
        tiny_gpt2,
        "aggregate.roles.sink_rate_epsilon=1.0",
        "attend.variability_positions=0",
        "attend.sink_epsilon=0",
    )
    lines = []
    run_pipeline(changed, ANALYSIS, echo=lines.append)
    # the roles' thresholds are aggregate's; the exemplars it writes are the same, so patterns is not rerun
    assert [line.split("]")[0][1:] for line in lines if "] running" in line] == ["aggregate"]
    findings = dict(
        zip(table(changed, "findings")["statistic"], table(changed, "findings")["value"])
    )
    assert findings["sink_rate_pooled"] == 0.0 and findings["sink_rate"] == 1.0
    strict = config_factory(
        tiny_gpt2, "attend.variability_positions=0", "attend.sink_epsilon=0.999"
    )
    lines = []
    run_pipeline(strict, ANALYSIS, echo=lines.append)
    assert "attend" in [line.split("]")[0][1:] for line in lines if "] running" in line]
    assert (
        dict(zip(table(strict, "findings")["statistic"], table(strict, "findings")["value"]))[
            "sink_rate"
        ]
        == 0.0
    )


@pytest.mark.slow
def test_figures_from_the_tables(tiny_run):
    report = Path(tiny_run.reports_dir) / tiny_run.run_name
    for spec in (s for s in FIGURES if s.metric == "positional"):
        assert (report / "figures" / f"{spec.stem}.png").is_file()
        assert spec.title in (report / "index.html").read_text()
    profile = table(tiny_run, "positional_profile")
    fig = figures.positional_profile(profile)
    left, right = fig.axes[0], next(ax for ax in fig.axes if ax.images)  # the others: colour bars
    per_layer = profile.group_by("layer", "offset").agg(
        mean=pl.col("share").mean(), peak=pl.col("share").max()
    )
    L = profile["layer"].max() + 1
    for layer, line in zip(range(L), left.get_lines()):
        want = per_layer.filter(pl.col("layer") == layer).sort("offset")
        assert np.allclose(line.get_ydata(), want["mean"].to_numpy()) and list(
            line.get_xdata()
        ) == list(range(1, D + 1))
    peak = per_layer.sort("layer", "offset")["peak"].to_numpy().reshape(L, D)
    assert np.allclose(right.images[0].get_array(), peak)
    head_roles = table(tiny_run, "head_roles")
    fig = figures.head_roles_map(head_roles)
    ax = fig.axes[0]
    codes = (
        head_roles.sort("layer", "head")["role"]
        .replace_strict(list(roles.ROLES), range(5))
        .to_numpy()
    )
    assert np.array_equal(
        np.asarray(ax.images[0].get_array()), codes.reshape(ax.images[0].get_array().shape)
    )
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    counts = dict(head_roles.group_by("role").len().iter_rows())
    assert labels[:5] == [f"{role} ({counts.get(role, 0)})" for role in roles.ROLES]
    assert f"{head_roles['above_sink_epsilon'].mean():.0%}" in ax.get_title()
    # a synthetic table with every role: one colour each
    heads, layers = synthetic()
    fig = figures.head_roles_map(roles.head_roles(heads, layers, RolesConfig()))
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert shown.shape == (2, 6) and set(np.unique(shown)) == {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_zero_offsets_disables_the_metric(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, "attend.positional_offsets=0", "attend.variability_positions=0")
    state = run(cfg, stages=STAGE_NAMES).state
    assert state["metrics"]["positional"] == "disabled: attend.positional_offsets is 0"
    heads = table(cfg, "head_metrics")
    for column in positional_analysis.ANALYSIS.columns:
        assert heads[column].is_nan().all(), column
    for name, schema in positional_analysis.ANALYSIS.table_schemas.items():
        t = table(cfg, name)
        assert t.is_empty() and t.schema == pl.Schema(schema), name
    findings = dict(zip(table(cfg, "findings")["statistic"], table(cfg, "findings")["value"]))
    assert (
        0.0 <= findings["sink_rate_pooled"] <= 1.0
    )  # from null_share: not part of the positional metric
    assert 0.0 <= findings["sink_rate"] <= 1.0  # Gu et al.'s: the sink_rate metric
    html = (Path(cfg.reports_dir) / cfg.run_name / "index.html").read_text()
    assert "positional was not computed (disabled: attend.positional_offsets is 0)" in html


def test_sink_rate_on_a_hand_built_batch():
    """Two sentences padded to one batch, one layer, two heads. Head 0: the first token's column is 1, 1/2, 1/5, 1/10
    in sentence A (score 0.45) and 1, 0 in sentence B (0.5): a sink on both. Head 1: 1, 0, 0, 0 (0.25: not a sink, the
    first token's own row alone is not enough at n = 4) and 1, 0 (0.5). sink_frequency 1 and 1/2; the rate 3/4."""
    import torch

    from pipeline.analysis import sink_rate as sink_analysis
    from pipeline.config import AttendConfig
    from pipeline.engine import Batch, Reduction
    from pipeline.metrics import sink_rate

    class OneLayer:
        device = torch.device("cpu")
        value_norms_reason = "a stand-in without value vectors"

        def map_attention(self, input_ids, attention_mask, fn, value_norms=False):
            return [fn(0, att)]

    att = torch.zeros(2, 2, 4, 4)
    for h, column in enumerate(([1.0, 0.5, 0.2, 0.1], [1.0, 0.0, 0.0, 0.0])):
        for i, first in enumerate(column):
            att[0, h, i, 0] = first
            att[0, h, i, i] += 1.0 - first if i else 0.0
    att[1, :, 0, 0], att[1, :, 1, 1] = 1.0, 1.0
    att[1, :, 2:] = float("nan")  # padding rows: never read
    lengths = torch.tensor([4, 2])
    zeros = torch.zeros(2, 4, dtype=torch.long)
    batch = Batch(
        input_ids=zeros,
        attention_mask=(torch.arange(4)[None] < lengths[:, None]).long(),
        lengths=lengths,
        sentence_ids=torch.tensor([0, 1]),
        pos=zeros,
        dep=zeros,
        word=zeros,
        head=zeros,
    )
    reduction = Reduction(AttendConfig(bootstrap_replicates=0), 1, 1, metrics=(sink_rate.METRIC,))
    sums = reduction.batch(OneLayer(), batch).to_numpy()
    assert sums["sink_rate.sink_sequences"].tolist() == [[2.0, 1.0]]
    assert sums["sink_rate.sink_sequence_count"].tolist() == [[2.0, 2.0]]
    assert sink_analysis.ANALYSIS.ratios(lambda k: sums[k])["sink_frequency"].tolist() == [
        [1.0, 0.5]
    ]
    (finding,) = sink_analysis.ANALYSIS.findings(None, None, sums)
    assert finding.statistic == "sink_rate" and finding.value == 0.75 and finding.n == 2
