"""Dependency accuracy as Clark et al. (2019, section 4.2, Table 1) define it (pipeline/metrics/dependency_accuracy.py):
the pipeline's table against a slow word-level reference written from their definition (tests/reference.py
clark_dependency_accuracy), a closed form on uniform attention, a hand-built batch whose heads' word-level predictions
are known (self-attention the largest weight, a tie, a root, a word without a non-null piece), the figure, and the
switch that turns it off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from pipeline.analysis.dependency_accuracy import ANALYSIS, DIRECTIONS, SCHEMA
from pipeline.metrics.dependency_accuracy import METRIC, OFFSETS
from stages import STAGE_NAMES

from helpers import run, table
from reference import CLARK_OFFSETS, attention_maps, clark_dependency_accuracy

DEP_TO_HEAD, HEAD_TO_DEP = DIRECTIONS


def best_offset(counts: dict) -> int:
    """Clark et al.'s baseline choice: max over (accuracy, offset), so the larger offset on ties."""
    return max(counts, key=lambda o: (counts[o], o))


def assert_matches_clark(got: pl.DataFrame, maps: dict, tokens: pl.DataFrame, null_pieces: str):
    """The table against the slow reference: n and the baseline exactly; each accuracy between the reference's sure
    and possible counts (equal except where float32 sums could break a near-tie either way)."""
    correct, cases, baseline = clark_dependency_accuracy(maps, tokens, null_pieces)
    rows = {
        (layer, h, r, d): (a, n, o, b)
        for layer, h, r, d, a, n, o, b in got.select(
            "layer",
            "head",
            "relation",
            "direction",
            "accuracy",
            "n",
            "baseline_offset",
            "baseline_accuracy",
        ).iter_rows()
    }
    assert rows.keys() == correct.keys() and len(rows) > 20
    exact = 0
    for key, (sure, possible) in correct.items():
        accuracy, n, offset, base = rows[key]
        relation = key[2]
        assert n == cases[relation], key
        o = best_offset(baseline[relation])
        assert offset == o and base == pytest.approx(baseline[relation][o] / n, abs=1e-12), key
        assert sure / n - 1e-12 <= accuracy <= possible / n + 1e-12, (
            key,
            accuracy,
            sure,
            possible,
            n,
        )
        exact += sure == possible
    assert exact > 0.9 * len(correct)  # near-ties are rare: the comparison is mostly exact
    return correct, cases, baseline


@pytest.mark.slow
def test_pipeline_matches_clark_reference_and_draws_its_figure(
    tiny_gpt2, config_factory, monkeypatch
):
    import pipeline.analysis.dependency_accuracy as module

    monkeypatch.setattr(module, "MIN_CASES", 5)  # the test corpus is small
    cfg = config_factory(tiny_gpt2, "report.formats=[png]")
    run(cfg, stages=STAGE_NAMES)
    tokens, got = table(cfg, "tokens"), table(cfg, "dep_accuracy")
    assert got.schema == pl.Schema(SCHEMA)
    maps = attention_maps(tiny_gpt2, tokens)
    correct, cases, baseline = assert_matches_clark(got, maps, tokens, "first")
    assert sum(cases.values()) > 50 and "ROOT" in cases
    assert set(got["direction"]) == set(DIRECTIONS) and set(got["baseline_offset"]) <= set(
        CLARK_OFFSETS
    )
    assert got["accuracy"].max() > 0 and (got["accuracy"] < 1).any()  # not degenerate
    assert (
        got.filter(pl.col("relation") == "ROOT")["accuracy"] == 0
    ).all()  # no head can predict ROOT
    # n is the corpus' count: the same for every head and both directions
    assert got.group_by("relation").agg(pl.col("n").n_unique())["n"].max() == 1
    # the findings: Clark et al.'s "all", the best single (head, direction) and the best single offset, per direction
    findings = dict(zip(table(cfg, "findings")["statistic"], table(cfg, "findings")["value"]))
    total = sum(cases.values())
    directed = got.group_by("layer", "head", "direction").agg(
        acc=(pl.col("accuracy") * pl.col("n")).sum() / total
    )
    assert findings["dep_accuracy_all_best_head"] == pytest.approx(directed["acc"].max(), abs=1e-9)
    sure = (
        max(
            sum(c[0] for k, c in correct.items() if k[:2] == (layer, h) and k[3] == d)
            for layer, h, _, d in correct
        )
        / total
    )
    possible = (
        max(
            sum(c[1] for k, c in correct.items() if k[:2] == (layer, h) and k[3] == d)
            for layer, h, _, d in correct
        )
        / total
    )
    assert sure - 1e-12 <= findings["dep_accuracy_all_best_head"] <= possible + 1e-12
    all_base = max(sum(baseline[r][o] for r in cases) for o in CLARK_OFFSETS) / total
    assert findings["dep_accuracy_all_baseline"] == pytest.approx(all_base, abs=1e-12)
    best = (
        got.filter((pl.col("n") >= 5) & (pl.col("relation") != "ROOT"))
        .group_by("relation")
        .agg(gain=pl.col("accuracy").max() - pl.col("baseline_accuracy").first())
    )
    assert best.height > 0 and findings["dep_accuracy_mean_gain"] == pytest.approx(
        best["gain"].mean(), abs=1e-12
    )
    figure = Path(cfg.reports_dir) / cfg.run_name / "figures" / "beyond_dependency_accuracy.png"
    assert figure.stat().st_size > 10_000


@pytest.mark.slow
def test_uniform_attention_closed_form(uniform_gpt2, config_factory):
    """Zero query/key weights: α_ij = 1/(i+1) for j ≤ i. Word-level, a word d attends to an earlier word b with
    |b| · mean_{i ∈ d} 1/(i+1) (|b|: b's non-null pieces), so d's prediction is the earlier word with the most
    pieces (the leftmost on a tie), and none when no earlier word has a non-null piece; the word attending most to d
    is the next word (its pieces come first, so the mean of its 1/(i+1) is the largest), and none for the last."""
    cfg = config_factory(uniform_gpt2)
    run(cfg)
    tokens, got = table(cfg, "tokens"), table(cfg, "dep_accuracy")
    hits, n = {}, {}
    for (sid,), s in tokens.sort("position").group_by("sentence_id", maintain_order=True):
        word, head, dep = (
            s["word_index"].to_list(),
            s["head_word_index"].to_list(),
            s["dep"].to_list(),
        )
        size = {}
        for p, w in enumerate(word):
            if p > 0 and w >= 0:  # position 0 is null
                size[w] = size.get(w, 0) + 1
        present = sorted(size)
        for d in present:
            g = head[word.index(d)]
            if g != d and g not in size:
                continue
            relation = dep[word.index(d)]
            n[relation] = n.get(relation, 0) + 1
            earlier = [b for b in present if b < d]
            later = [b for b in present if b > d]
            to_head = max(earlier, key=lambda b: (size[b], -b)) if earlier else None
            from_head = later[0] if later else None
            for direction, guess in ((DEP_TO_HEAD, to_head), (HEAD_TO_DEP, from_head)):
                hits[relation, direction] = hits.get((relation, direction), 0) + (
                    g != d and guess == g
                )
    assert got.height == 2 * 3 * 2 * len(n) and any(hits.values())
    for (relation, direction), count in hits.items():
        rows = got.filter((pl.col("relation") == relation) & (pl.col("direction") == direction))
        assert (rows["n"] == n[relation]).all()
        assert np.allclose(rows["accuracy"].to_numpy(), count / n[relation], atol=1e-12), (
            relation,
            direction,
        )


class OneLayer:
    """A model adapter stand-in that hands over a fixed attention tensor as its only layer (causal, no norms)."""

    device = torch.device("cpu")
    value_norms_reason = "a stand-in without value vectors"

    def __init__(self, att):
        self.att = att

    def map_attention(self, input_ids, attention_mask, fn, value_norms=False):
        return [fn(0, self.att)]


def hand_built_batch():
    """Sentence 0: BOS (position 0, null), w0 "The" (1) det → w1, w1 "dog" (2, 3) nsubj → w2, w2 "barked" (4) ROOT,
    w3 "." (5) punct → w2. Sentence 1 (padded): w0 "Dogs" (0: null, so not a word here) nsubj → w1, w1 "bark" (1)
    ROOT, w2 "." (2) punct → w1. Cases: det 1, nsubj 1 (sentence 0), ROOT 2, punct 2; w0 of sentence 1 is none."""
    from pipeline.engine import Batch

    vocab = ["ROOT", "det", "nsubj", "punct"]
    ids = {d: k for k, d in enumerate(vocab)}
    word = torch.tensor([[-1, 0, 1, 1, 2, 3], [0, 1, 2, -1, -1, -1]])
    head = torch.tensor([[-1, 1, 2, 2, 2, 2], [1, 1, 1, -1, -1, -1]])
    dep = torch.tensor(
        [
            [0] + [ids[d] for d in ("det", "nsubj", "nsubj", "ROOT", "punct")],
            [ids["nsubj"], ids["ROOT"], ids["punct"], 0, 0, 0],
        ]
    )
    lengths = torch.tensor([6, 3])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()
    batch = Batch(
        input_ids=torch.zeros(2, 6, dtype=torch.long),
        attention_mask=mask,
        lengths=lengths,
        sentence_ids=torch.tensor([0, 1]),
        pos=torch.zeros(2, 6, dtype=torch.long),
        dep=dep,
        word=word,
        head=head,
    )
    return batch, vocab


def hand_built_attention() -> torch.Tensor:
    """Causal rows (weights powers of two, so word sums are exact). Head 0, sentence 0: w1's pieces attend most to
    themselves (ignored), then w0; w3 gives 5/16 to itself (its largest weight, ignored), 1/4 to w2, 1/8 to w1: it
    predicts w2. Head 1 like head 0 but w3 attends 3/4 to w1: w2 and w3 then both give w1 3/4, a tie that goes to
    the first, w2."""
    att = torch.zeros(2, 2, 6, 6)
    rows0 = {
        0: {0: 1.0},
        1: {0: 0.5, 1: 0.5},
        2: {0: 0.25, 1: 0.25, 2: 0.5},
        3: {0: 0.25, 1: 0.125, 2: 0.25, 3: 0.375},
        4: {0: 0.25, 1: 0.125, 2: 0.125, 3: 0.125, 4: 0.375},
        5: {0: 0.25, 1: 0.0625, 2: 0.0625, 3: 0.0625, 4: 0.25, 5: 0.3125},
    }
    rows1 = {
        **rows0,
        2: {0: 0.25, 1: 0.75},
        3: {0: 0.25, 2: 0.75},
        4: {0: 0.25, 3: 0.75},
        5: {0: 0.25, 3: 0.75},
    }
    rows_s1 = {0: {0: 1.0}, 1: {0: 0.5, 1: 0.5}, 2: {0: 0.25, 1: 0.5, 2: 0.25}}
    for h, rows in enumerate((rows0, rows1)):
        for i, row in rows.items():
            for j, w in row.items():
                att[0, h, i, j] = w
        for i, row in rows_s1.items():
            for j, w in row.items():
                att[1, h, i, j] = w
    att[1, :, 3:] = float("nan")  # padding rows: never read
    return att


def test_hand_built_heads_through_the_engine():
    """Word-level predictions, worked out by hand (w: sentence 0's words, v: sentence 1's):
    head 0, dependent → head: w0 attends to no other word (none), w1 → w0 (its self-attention, 9/16 on average, is
    ignored), w2 → w1, w3 → w2 (5/16 to itself ignored), v1 → none, v2 → v1. Correct: punct 2 of 2.
    head 0, head → dependent: the word attending most to w0 is w1 (3/16 against 1/8 and 1/16), to w1 is w2 (1/4 against
    1/8), to w3 none; to v2 none. Correct: det, nsubj.
    head 1: dependent → head as head 0 but w3 → w1 (wrong): punct 1 of 2; head → dependent: to w1, w2 and w3 give 3/4
    each, a tie to the first, w2: correct; det, nsubj correct. ROOT is never correct.
    Baseline (word d + o, clamped, before the first word ROOT): det +1, nsubj +1, punct −1 right in both sentences,
    ROOT at −3 (both roots: 2 − 3 and 1 − 3 fall before the first word) and −2 for v1 only."""
    from pipeline.config import AttendConfig
    from pipeline.engine import Reduction

    batch, vocab = hand_built_batch()
    reduction = Reduction(
        AttendConfig(bootstrap_replicates=0, variability_positions=0),
        1,
        len(vocab),
        metrics=(METRIC,),
    )
    sums = reduction.batch(OneLayer(hand_built_attention()), batch).to_numpy()
    got = ANALYSIS.tables(sums, {"dep_vocab": vocab})["dep_accuracy"].sort(
        "relation", "direction", "head"
    )
    want = {  # (relation, direction): n, accuracy of heads 0 and 1, baseline offset and accuracy
        ("det", DEP_TO_HEAD): (1, [0.0, 0.0], 1, 1.0),
        ("det", HEAD_TO_DEP): (1, [1.0, 1.0], 1, 1.0),
        ("nsubj", DEP_TO_HEAD): (1, [0.0, 0.0], 1, 1.0),
        ("nsubj", HEAD_TO_DEP): (1, [1.0, 1.0], 1, 1.0),
        ("punct", DEP_TO_HEAD): (2, [1.0, 0.5], -1, 1.0),
        ("punct", HEAD_TO_DEP): (2, [0.0, 0.0], -1, 1.0),
        ("ROOT", DEP_TO_HEAD): (2, [0.0, 0.0], -3, 1.0),
        ("ROOT", HEAD_TO_DEP): (2, [0.0, 0.0], -3, 1.0),
    }
    assert got.schema == pl.Schema(SCHEMA)
    assert sorted(set(zip(got["relation"], got["direction"]))) == sorted(want)
    for (relation, direction), (n, accuracy, offset, base) in want.items():
        rows = got.filter((pl.col("relation") == relation) & (pl.col("direction") == direction))
        assert rows["n"].to_list() == [n] * 2 and rows["accuracy"].to_list() == accuracy, (
            relation,
            direction,
        )
        assert (
            rows["baseline_offset"].to_list() == [offset] * 2
            and rows["baseline_accuracy"].to_list() == [base] * 2
        )
    assert np.array_equal(
        sums["dependency_accuracy.depacc_offset_correct"][vocab.index("ROOT")], [2, 1, 0, 0, 0, 0]
    )  # o = −3..+2
    findings = {f.statistic: f.value for f in ANALYSIS.findings(None, None, sums)}
    assert findings["dep_accuracy_all_best_head"] == pytest.approx(
        2 / 6
    )  # head 0 either way, head 1 head → dependent
    assert findings["dep_accuracy_all_baseline"] == pytest.approx(2 / 6)
    assert OFFSETS == CLARK_OFFSETS


def test_the_reference_agrees_on_the_hand_built_batch():
    """The slow reference, on the same hand-built sentences, gives the hand-worked accuracies: it and the engine are
    checked against the same independent numbers."""
    batch, vocab = hand_built_batch()
    att = hand_built_attention().double().numpy()
    rows = []
    for b, n in enumerate(batch.lengths.tolist()):
        for p in range(n):
            w = int(batch.word[b, p])
            rows.append(
                (b, p, w, int(batch.head[b, p]), vocab[int(batch.dep[b, p])] if w >= 0 else "_")
            )
    tokens = pl.DataFrame(
        rows,
        schema=["sentence_id", "position", "word_index", "head_word_index", "dep"],
        orient="row",
    )
    tokens = tokens.with_columns(pos=pl.lit("X"))
    maps = {
        b: att[b : b + 1, :, :n, :n] for b, n in enumerate(batch.lengths.tolist())
    }  # [L = 1, H, n, n]
    correct, cases, baseline = clark_dependency_accuracy(maps, tokens, "first")
    assert cases == {"det": 1, "nsubj": 1, "ROOT": 2, "punct": 2}
    assert correct[0, 0, "punct", DEP_TO_HEAD] == [2, 2] and correct[
        0, 1, "punct", DEP_TO_HEAD
    ] == [1, 1]
    assert correct[0, 1, "nsubj", HEAD_TO_DEP] == [
        0,
        1,
    ]  # the tie: possible, not sure, at the reference's tolerance
    assert correct[0, 0, "det", HEAD_TO_DEP] == [1, 1] and correct[0, 0, "det", DEP_TO_HEAD] == [
        0,
        0,
    ]
    assert all(correct[0, h, "ROOT", d] == [0, 0] for h in range(2) for d in DIRECTIONS)
    assert best_offset(baseline["ROOT"]) == -3 and baseline["ROOT"][-2] == 1


def test_figure_shows_the_best_head_against_its_baseline():
    import matplotlib

    from pipeline.report import figures

    rows = []
    for relation, n in (("det", 500), ("nsubj", 300), ("amod", 40), ("ROOT", 1000)):
        for direction in DIRECTIONS:
            for h in range(4):
                rows.append(
                    (
                        0,
                        h,
                        relation,
                        direction,
                        0.1 * h + (0.5 if direction == DEP_TO_HEAD else 0.0),
                        n,
                        1,
                        0.3,
                    )
                )
    rows.append((0, 0, "rare", DEP_TO_HEAD, 1.0, 1, -1, 1.0))
    df = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    ax = figures.dependency_accuracy(df, top=3).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        "det, n=500",
        "nsubj, n=300",
        "amod, n=40",
    ]  # one row per relation, as Clark et al.'s Table 1
    accuracy, baseline = ax.containers[0], ax.containers[1]
    assert np.allclose(
        [p.get_width() for p in accuracy], 0.8
    )  # the best head over both directions: 0.3 + 0.5
    assert [p.get_facecolor() for p in accuracy] == [
        matplotlib.colors.to_rgba("tab:blue")
    ] * 3  # dependent → head
    assert np.allclose([p.get_width() for p in baseline], 0.3)
    assert [t.get_text() for t in ax.texts][0] == "L0 H3 dependent → head; baseline word d+1"
    labels = [t.get_text() for t in figures.dependency_accuracy(df).axes[0].get_yticklabels()]
    assert "rare, n=1" in labels and not any(
        "ROOT" in lab for lab in labels
    )  # no head can predict ROOT: left out
    assert figures.dependency_accuracy(df.clear()).axes  # an empty table draws, without error


@pytest.mark.slow
def test_disabled_gives_an_empty_table_and_the_report_says_why(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, "attend.dependency_accuracy=false", "report.formats=[png]")
    state = run(cfg, stages=STAGE_NAMES).state
    assert (
        state["metrics"]["dependency_accuracy"] == "disabled: attend.dependency_accuracy is false"
    )
    got = table(cfg, "dep_accuracy")
    assert got.is_empty() and got.schema == pl.Schema(SCHEMA)
    assert not any(s.startswith("dep_accuracy") for s in table(cfg, "findings")["statistic"])
    html = (Path(cfg.reports_dir) / cfg.run_name / "index.html").read_text()
    assert (
        "dependency_accuracy was not computed (disabled: attend.dependency_accuracy is false)"
        in html
    )
