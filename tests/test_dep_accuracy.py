"""Per-head dependency accuracy with offset baselines (Clark et al. 2019): the pipeline's table against a slow
reference (one sentence at a time, loops over pieces, an argmax per attention row), the offset baselines against a
slow count, a closed form on uniform attention (ties go to the first maximum, position 1), a hand-built batch whose
heads attend to known pieces, the figure, and the switch that turns it off."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from helpers import run, table
from pipeline.metrics.dependency_accuracy import DIRECTIONS, METRIC, OFFSETS, SCHEMA
from reference import attention_maps
from stages import STAGE_NAMES

DEP_TO_HEAD, HEAD_TO_DEP = DIRECTIONS


def cases_of(tokens: pl.DataFrame):
    """Every case, slowly: (sentence_id, attending position i, related word, relation, direction). A piece i ≥ 1 of
    a dependent attends to its head word, a piece of a head word to each dependent, when the related word has a
    piece at 1..i."""
    for (sid,), s in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        word, head, dep = s["word_index"].to_list(), s["head_word_index"].to_list(), s["dep"].to_list()
        label = {w: d for w, d in zip(word, dep) if w >= 0}
        for i in range(1, len(word)):
            if word[i] < 0:
                continue
            if head[i] >= 0 and head[i] != word[i] and head[i] in word[1:i + 1]:
                yield sid, i, head[i], dep[i], DEP_TO_HEAD
            dependents = {word[j] for j in range(1, i + 1) if word[j] >= 0 and word[j] != word[i] and head[j] == word[i]}
            for d in sorted(dependents):
                yield sid, i, d, label[d], HEAD_TO_DEP


def slow_tables(maps: dict, tokens: pl.DataFrame):
    """{(layer, head, relation, direction): (correct, n)} and {(relation, direction): [correct at k = 1..K]}."""
    words = {sid: s.sort("position")["word_index"].to_list() for (sid,), s in tokens.group_by("sentence_id")}
    L, H = next(iter(maps.values())).shape[:2]
    correct, cases, offsets = defaultdict(int), defaultdict(int), defaultdict(lambda: [0] * OFFSETS)
    for sid, i, target, relation, direction in cases_of(tokens):
        word = words[sid]
        cases[relation, direction] += 1
        for k in range(1, OFFSETS + 1):
            offsets[relation, direction][k - 1] += i - k >= 1 and word[i - k] == target
        for layer in range(L):
            for h in range(H):
                row = maps[sid][layer, h, i]
                best = 1
                for j in range(2, i + 1):  # the first maximum over 1 ≤ j ≤ i
                    if row[j] > row[best]:
                        best = j
                correct[layer, h, relation, direction] += word[best] == target
    return correct, cases, offsets, (L, H)


def expected_frame(correct, cases, offsets, shape) -> pl.DataFrame:
    rows = []
    for (relation, direction), n in cases.items():
        counts = offsets[relation, direction]
        k = max(range(OFFSETS), key=lambda m: (counts[m], -m))  # the smallest offset among the best
        for layer in range(shape[0]):
            for h in range(shape[1]):
                rows.append((layer, h, relation, direction, correct[layer, h, relation, direction] / n, n, k + 1,
                             counts[k] / n))
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


def assert_matches(got: pl.DataFrame, want: pl.DataFrame):
    keys = ["layer", "head", "relation", "direction"]
    joined = got.join(want, on=keys, how="full", coalesce=True, suffix="_want")
    assert joined.height == got.height == want.height, (got.height, want.height, joined.height)
    assert (joined["n"] == joined["n_want"]).all()
    assert (joined["baseline_offset"] == joined["baseline_offset_want"]).all()
    for column in ("accuracy", "baseline_accuracy"):
        assert np.allclose(joined[column].to_numpy(), joined[f"{column}_want"].to_numpy(), atol=1e-5, rtol=0), column


def test_pipeline_matches_slow_reference_and_draws_its_figure(tiny_gpt2, config_factory, monkeypatch):
    import pipeline.metrics.dependency_accuracy as module

    monkeypatch.setattr(module, "MIN_CASES", 10)  # the test corpus is small: a few relations have 10 cases
    cfg = config_factory(tiny_gpt2, "report.formats=[png]")
    run(cfg, stages=STAGE_NAMES)
    tokens, got = table(cfg, "tokens"), table(cfg, "dep_accuracy")
    assert got.schema == pl.Schema(SCHEMA)
    correct, cases, offsets, shape = slow_tables(attention_maps(tiny_gpt2, tokens), tokens)
    assert shape == (2, 3) and sum(cases.values()) > 100
    assert {d for _, d in cases} == set(DIRECTIONS)  # both directions occur on a causal model
    want = expected_frame(correct, cases, offsets, shape)
    assert_matches(got, want)
    assert got["accuracy"].max() > 0 and (got["accuracy"] < 1).any()  # not degenerate
    # n is the corpus' count: the same for every head
    assert got.group_by("relation", "direction").agg(pl.col("n").n_unique())["n"].max() == 1
    # the findings, from the table
    findings = dict(zip(table(cfg, "findings")["statistic"], table(cfg, "findings")["value"]))
    best = (got.filter(pl.col("n") >= 10).group_by("relation", "direction")
            .agg(gain=pl.col("accuracy").max() - pl.col("baseline_accuracy").first()))
    assert best.height > 0 and findings["dep_accuracy_mean_gain"] == pytest.approx(best["gain"].mean(), abs=1e-12)
    pooled = got.group_by("layer", "head").agg(acc=(pl.col("accuracy") * pl.col("n")).sum() / pl.col("n").sum())
    assert findings["dep_accuracy_all_best_head"] == pytest.approx(pooled["acc"].max(), abs=1e-9)
    total = sum(cases.values())
    pooled_base = max(sum(offsets[key][k] for key in cases) / total for k in range(OFFSETS))
    assert findings["dep_accuracy_all_baseline"] == pytest.approx(pooled_base, abs=1e-12)
    figure = Path(cfg.reports_dir) / cfg.run_name / "figures" / "beyond_dependency_accuracy.png"
    assert figure.stat().st_size > 10_000


def test_uniform_attention_predicts_position_one(uniform_gpt2, config_factory):
    """Zero query/key weights: α_ij = 1/(i+1) for every j ≤ i, a tie that torch.argmax breaks to the first maximum,
    so every head's most-attended non-null piece is position 1: a case is correct exactly when its related word
    holds position 1, in every layer and head."""
    cfg = config_factory(uniform_gpt2)
    run(cfg)
    tokens, got = table(cfg, "tokens"), table(cfg, "dep_accuracy")
    first_word = {sid: s.sort("position")["word_index"][1] for (sid,), s in tokens.group_by("sentence_id")}
    hits, n = defaultdict(int), defaultdict(int)
    for sid, _, target, relation, direction in cases_of(tokens):
        n[relation, direction] += 1
        hits[relation, direction] += first_word[sid] == target
    assert got.height == 2 * 3 * len(n) and any(hits.values())
    for (relation, direction), count in n.items():
        rows = got.filter((pl.col("relation") == relation) & (pl.col("direction") == direction))
        assert (rows["n"] == count).all()
        assert np.allclose(rows["accuracy"].to_numpy(), hits[relation, direction] / count, atol=1e-12), (relation, direction)


class OneLayer:
    """A model adapter stand-in that hands over a fixed attention tensor as its only layer."""

    device = torch.device("cpu")

    def __init__(self, att):
        self.att = att

    value_norms_reason = "a stand-in without value vectors"

    def map_attention(self, input_ids, attention_mask, fn, value_norms=False):
        return [fn(0, self.att)]


def test_hand_built_heads_through_the_engine():
    """Two sentences, padded to one batch; three heads with known most-attended pieces.

    Sentence 0, one piece per word but the last (w4 = positions 4, 5): heads w0→w1 (det), w1→w2 (nsubj), w2 root,
    w3→w2 (prep), w4→w3 (pobj). Cases: dependent→head prep (i = 3) and pobj (i = 4, 5); head→dependent nsubj (i = 2
    attends to w1 at 1). det has none (its only piece is position 0, the null token) and w3's dependent w4 lies right
    of i = 3. Sentence 1, three words: w0→w1 (det), w1 root, w2→w1 (punct): dependent→head punct (i = 2)."""
    from pipeline.config import AttendConfig
    from pipeline.engine import Batch, Reduction

    vocab = ["ROOT", "det", "nsubj", "pobj", "prep", "punct"]
    ids = {d: k for k, d in enumerate(vocab)}
    word = torch.tensor([[0, 1, 2, 3, 4, 4], [0, 1, 2, -1, -1, -1]])
    head = torch.tensor([[1, 2, 2, 2, 3, 3], [1, 1, 1, -1, -1, -1]])
    dep = torch.tensor([[ids[d] for d in ("det", "nsubj", "ROOT", "prep", "pobj", "pobj")],
                        [ids["det"], ids["ROOT"], ids["punct"], 0, 0, 0]])
    lengths = torch.tensor([6, 3])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    batch = Batch(input_ids=torch.zeros(2, 6, dtype=torch.long), attention_mask=mask, lengths=lengths,
                  sentence_ids=torch.tensor([0, 1]), pos=torch.zeros(2, 6, dtype=torch.long), dep=dep, word=word, head=head)
    targets = {0: ({1: 1, 2: 1, 3: 2, 4: 3, 5: 3}, {1: 1, 2: 1, 3: 2, 4: 3, 5: 4}),  # head 0: to the head word; head 1:
               1: ({1: 1, 2: 1}, {1: 1, 2: 1})}                                      # the previous piece (i = 1: itself)
    att = torch.zeros(2, 3, 6, 6)
    for b in range(2):
        n = int(lengths[b])
        att[b, :, 0, 0] = 1.0
        for i in range(1, n):
            for h, top in enumerate(targets[b]):
                att[b, h, i, : i + 1] = 0.3 / (i + 1)  # some null attention too
                att[b, h, i, top[i]] = 0.7
            att[b, 2, i, : i + 1] = 1.0 / (i + 1)      # head 2: uniform, a tie broken to position 1
    att[1, :, 3:] = float("nan")                        # padding rows: never read
    reduction = Reduction(AttendConfig(bootstrap_replicates=0, variability_positions=0), 1, len(vocab), metrics=(METRIC,))
    sums = reduction.batch(OneLayer(att), batch).to_numpy()
    got = METRIC.tables(sums, {"dep_vocab": vocab})["dep_accuracy"].sort("relation", "direction", "head")
    want = {  # (relation, direction): n, accuracy per head, baseline offset, baseline accuracy
        ("nsubj", HEAD_TO_DEP): (1, [1.0, 1.0, 1.0], 1, 1.0),
        ("pobj", DEP_TO_HEAD): (2, [1.0, 0.5, 0.0], 1, 0.5),   # offsets 1 and 2 tie at 1 of 2: the smaller wins
        ("prep", DEP_TO_HEAD): (1, [1.0, 1.0, 0.0], 1, 1.0),
        ("punct", DEP_TO_HEAD): (1, [1.0, 1.0, 1.0], 1, 1.0),
    }
    assert got.schema == pl.Schema(SCHEMA)
    assert sorted(set(zip(got["relation"], got["direction"]))) == sorted(want)
    for (relation, direction), (n, accuracy, offset, base) in want.items():
        rows = got.filter((pl.col("relation") == relation) & (pl.col("direction") == direction))
        assert rows["n"].to_list() == [n] * 3 and rows["accuracy"].to_list() == accuracy, (relation, direction)
        assert rows["baseline_offset"].to_list() == [offset] * 3 and rows["baseline_accuracy"].to_list() == [base] * 3


def test_figure_shows_the_best_head_against_its_baseline():
    from pipeline.report import figures

    rows = []
    for relation, n in (("det", 500), ("nsubj", 300), ("amod", 40)):
        for direction in DIRECTIONS:
            for h in range(4):
                rows.append((0, h, relation, direction, 0.1 * h + (0.5 if direction == DEP_TO_HEAD else 0.0), n, 2, 0.3))
    rows.append((0, 0, "rare", DEP_TO_HEAD, 1.0, 1, 1, 1.0))
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    ax = figures.dependency_accuracy(df, top=3).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 6 and labels[0].startswith("det (dependent → head)") and not any("rare" in lab for lab in labels)
    accuracy, baseline = ax.containers[0], ax.containers[1]
    assert np.allclose([p.get_width() for p in accuracy], [0.8, 0.3] * 3)  # the best head of each row
    assert np.allclose([p.get_width() for p in baseline], 0.3)
    assert figures.dependency_accuracy(df.clear()).axes  # an empty table draws, without error


def test_disabled_gives_an_empty_table_and_the_report_says_why(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, "attend.dependency_accuracy=false", "report.formats=[png]")
    state = run(cfg, stages=STAGE_NAMES).state
    assert state["metrics"]["dependency_accuracy"] == "disabled: attend.dependency_accuracy is false"
    got = table(cfg, "dep_accuracy")
    assert got.is_empty() and got.schema == pl.Schema(SCHEMA)
    assert not any(s.startswith("dep_accuracy") for s in table(cfg, "findings")["statistic"])
    html = (Path(cfg.reports_dir) / cfg.run_name / "index.html").read_text()
    assert "dependency_accuracy was not computed (disabled: attend.dependency_accuracy is false)" in html
