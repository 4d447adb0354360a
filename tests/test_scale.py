"""Corpus scale: parts, the Ray executor against the local one, and bad input at scale (unreadable and
empty parts, a Ray address that does not answer)."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.errors import PipelineError

from conftest import WIKITEXT, make_config
from helpers import ANALYSIS, run, table

RESULT_TABLES = (
    "head_metrics",
    "layer_metrics",
    "pos_share",
    "dep_share",
    "exemplars",
    "findings",
    "corpus_stats",
)


def assert_tables_equal(cfg_a, cfg_b, rtol: float) -> None:
    for name in ("sentences", "tokens", *RESULT_TABLES):
        a, b = table(cfg_a, name), table(cfg_b, name)
        assert a.columns == b.columns and a.height == b.height, name
        for column in a.columns:
            x, y = a[column], b[column]
            if x.dtype == pl.List(pl.Float64):
                x, y = x.explode(), y.explode()
            if x.dtype.is_float():
                assert np.allclose(x.to_numpy(), y.to_numpy(), rtol=rtol, atol=0, equal_nan=True), (
                    name,
                    column,
                )
            else:
                assert x.equals(y), (name, column)


@pytest.fixture(scope="module")
def wikitext_300(tmp_path_factory, tiny_gpt2):
    """300 WikiText sentences in parts of 60, through the tiny model: (factory of configs by data dir)."""
    base = tmp_path_factory.mktemp("scale")

    def config(name: str, *overrides: str):
        return make_config(
            base / name,
            tiny_gpt2,
            WIKITEXT,
            "corpus.source=wikitext_raw",
            "corpus.max_sentences=300",
            "corpus.max_documents=12",
            "corpus.part_documents=4",
            "corpus.part_sentences=60",
            "corpus.min_words=4",
            "corpus.min_pieces=4",
            *overrides,
            run_name="w300",
        )

    return config


@pytest.fixture(scope="module")
def local_run(wikitext_300):
    cfg = wikitext_300("local")
    run(cfg)
    return cfg


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


class FailOn:
    """A stage's worker whose unit `index` is bad input: the worker says so with a PipelineError."""

    def __init__(self, make_worker, index: int):
        self.worker, self.index = make_worker(), index

    def __call__(self, unit, progress=None):
        if unit.index == self.index:
            raise PipelineError(f"part {unit.index} is bad input")
        return self.worker(unit, progress)


class KillOnce:
    """A stage's worker that, on one unit, kills its own Ray actor mid-unit (ray.kill), once."""

    def __init__(self, make_worker, marker: Path, index: int):
        self.worker, self.marker, self.index = make_worker(), marker, index

    def __call__(self, unit, progress=None):
        if unit.index == self.index and not self.marker.exists():
            import ray

            self.marker.touch()
            ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
            time.sleep(60)  # killed here, mid-unit
        return self.worker(unit, progress)


@pytest.mark.slow
def test_parts_are_bounded_and_every_stage_writes_them(local_run):
    from pipeline.run.parts import read_meta

    for name in ("sentences", "tokens", "attend"):
        meta = read_meta(local_run.run_dir / name)
        assert len(meta["parts"]) == 5, name  # 300 sentences in parts of 60
    sizes = [
        pl.read_parquet(p).height
        for p in sorted((local_run.run_dir / "sentences").glob("part-*.parquet"))
    ]
    assert sizes == [60] * 5
    ids = table(local_run, "sentences")["sentence_id"].to_list()
    assert ids == list(range(300))
    vocab = read_meta(local_run.run_dir / "tokens")
    assert {"NOUN", "AUX", "SCONJ", "X"} <= set(vocab["pos_vocab"]) and {
        "nsubj",
        "csubjpass",
        "_",
    } <= set(vocab["dep_vocab"])
    # tables list the labels the corpus has, not the whole label set
    assert set(table(local_run, "pos_share")["tag"]) == set(table(local_run, "tokens")["pos"])


@pytest.mark.slow
def test_ray_executor_gives_the_local_tables_and_survives_a_killed_actor(
    wikitext_300, local_run, ray_cluster, monkeypatch, tmp_path
):
    cfg = wikitext_300("ray", "executor.kind=ray")
    state = run(cfg).state
    assert state["stages"]["attend"]["counts"]["executor"] == "ray"
    assert_tables_equal(local_run, cfg, rtol=1e-9)

    import pipeline.run.ray_executor as ray_executor

    ray_cluster.cloudpickle.register_pickle_by_value(
        sys.modules[__name__]
    )  # KillOnce travels to the actors
    real_run = ray_executor.RayExecutor.run

    def run_with_a_kill(self, units, make_worker, resources, desc=""):
        marker = tmp_path / f"killed-{desc.replace(' ', '_').replace(':', '')}"
        return real_run(
            self, units, functools.partial(KillOnce, make_worker, marker, 2), resources, desc
        )

    monkeypatch.setattr(ray_executor.RayExecutor, "run", run_with_a_kill)
    killed = wikitext_300("ray-killed", "executor.kind=ray")
    run(killed)
    assert sorted(p.name for p in tmp_path.glob("killed-*")) == [
        "killed-annotate_parsing",
        "killed-attend_first_pass",
        "killed-attend_forward_+_reduce",
        "killed-corpus_splitting",
    ]
    assert_tables_equal(local_run, killed, rtol=1e-9)

    def run_with_bad_input(self, units, make_worker, resources, desc=""):
        return real_run(self, units, functools.partial(FailOn, make_worker, 1), resources, desc)

    monkeypatch.setattr(ray_executor.RayExecutor, "run", run_with_bad_input)
    with pytest.raises(
        PipelineError, match=r"^part 1 is bad input$"
    ):  # the worker's own line, not Ray's
        run(killed, ["annotate"], force=True)


@pytest.mark.slow
def test_a_ray_pool_the_cluster_cannot_place_is_one_line():
    from pipeline.run.ray_executor import RayExecutor

    assert RayExecutor.feasible(2, 1, 0.5, 8, 1.0) == (2, {"num_cpus": 1, "num_gpus": 0.5})
    with pytest.raises(PipelineError, match="needs 1 CPU.*and 2 GPU.*has 8 CPU.*and 1 GPU"):
        RayExecutor.feasible(1, 1, 2.0, 8, 1.0)


@pytest.mark.slow
def test_a_ray_address_that_does_not_answer_is_one_line_quickly(config_factory, tiny_gpt2):
    pytest.importorskip("ray")
    cfg = config_factory(
        tiny_gpt2,
        "executor.kind=ray",
        "executor.address=127.0.0.1:9",
        "executor.connect_timeout_s=3",
    )
    started = time.perf_counter()
    with pytest.raises(
        PipelineError, match=r"the Ray cluster at 127.0.0.1:9 does not answer .*ray start --head"
    ):
        run(cfg, ["corpus"])
    assert time.perf_counter() - started < 30


@pytest.mark.slow
def test_an_unreadable_part_is_made_again_alone(local_run):
    from pipeline.run.runner import run_pipeline

    part = local_run.run_dir / "sentences" / "part-00002.parquet"
    good = part.read_bytes()
    part.write_bytes(good[: len(good) // 2])  # truncated: unreadable
    messages = []
    run_pipeline(local_run, ANALYSIS, echo=messages.append)
    ran = [m.split("]")[0][1:] for m in messages if "running" in m]
    assert (
        ran == ["corpus"] and "damaged" in messages[0]
    )  # made again identically: later stages stay current
    assert part.read_bytes() == good


@pytest.mark.slow
def test_empty_parts_are_counted_not_errors(local_run, tmp_path):
    import stages.annotate as annotate
    import stages.attend as attend
    from pipeline.run.executor import WorkUnit
    from pipeline.run.parts import read_meta

    empty = tmp_path / "sentences-empty.parquet"
    pl.DataFrame(
        schema=pl.read_parquet(
            next((local_run.run_dir / "sentences").glob("part-*.parquet"))
        ).schema
    ).write_parquet(empty)
    unit = WorkUnit(0, (empty,), (tmp_path / "tokens.parquet", tmp_path / "tokens.json"))
    counts = annotate.AnnotateWorker(local_run, tmp_path / "cache", 1)(unit)
    assert (
        counts["sentences"] == 0
        and counts["pieces"] == 0
        and pl.read_parquet(unit.outputs[0]).height == 0
    )
    vocab = read_meta(local_run.run_dir / "tokens")
    for kind, first_pass in (
        ("first", None),
        ("main", local_run.run_dir / "attend" / "first_pass.npz"),
        ("exemplars", None),
    ):
        out = tmp_path / f"attend-{kind}.npz"
        worker = attend.AttendWorker(local_run, vocab, 32, kind, first_pass)
        assert worker(WorkUnit(0, (unit.outputs[0],), (out,)))["sentences"] == 0 and out.is_file()


def test_a_corpus_part_with_no_prose_is_counted(tmp_path, tiny_gpt2, corpus_file):
    corpus = tmp_path / "with-headings.txt"
    corpus.write_text(corpus_file.read_text() + "\n\n| table | cell |\n\n", encoding="utf-8")
    cfg = make_config(tmp_path, tiny_gpt2, corpus, "corpus.part_documents=1", run_name="empty-part")
    counts = run(cfg, ["corpus"]).state["stages"]["corpus"]["counts"]
    split = sorted((cfg.run_dir / "corpus" / "split").glob("part-*.parquet"))
    assert (
        len(split) == 7
        and pl.read_parquet(split[-1]).height == 0
        and counts["dropped_non_prose"] >= 1
    )
    assert counts["sentences"] == table(cfg, "sentences").height > 0


@pytest.mark.slow
def test_corpus_statistics_merged_over_parts_match_a_slow_count(local_run):
    """corpus_stats is the sum of five parts' counts: the same numbers as one loop over every pair of the corpus."""
    from collections import Counter

    tokens = table(local_run, "tokens")
    pairs, related = Counter(), Counter()
    for sentence in tokens.partition_by("sentence_id", maintain_order=True):
        word, head = sentence["word_index"].to_list(), sentence["head_word_index"].to_list()
        for i in range(len(word)):
            for j in range(i):
                pairs[i - j] += 1
                if (
                    word[i] >= 0
                    and word[j] >= 0
                    and word[i] != word[j]
                    and (head[i] == word[j] or head[j] == word[i])
                ):
                    related[i - j] += 1
    stats = {
        (r["statistic"], r["key"]): r["value"]
        for r in table(local_run, "corpus_stats").iter_rows(named=True)
    }
    for d in range(1, 31):
        if pairs[d]:
            assert stats[("dependency_probability_at_distance", str(d))] == pytest.approx(
                related[d] / pairs[d], rel=1e-12
            )
    total = sum(related.values())
    assert stats[("mean_dependency_distance", "")] == pytest.approx(
        sum(d * n for d, n in related.items()) / total, rel=1e-12
    )
    assert stats[("share_dependencies_within_18", "")] == pytest.approx(
        sum(n for d, n in related.items() if d <= 18) / total, rel=1e-12
    )
    assert stats[("mean_sentence_pieces", "")] == pytest.approx(
        tokens.height / tokens["sentence_id"].n_unique(), rel=1e-12
    )
    for tag, n in Counter(tokens["pos"].to_list()).items():
        assert stats[("pos_frequency", tag)] == pytest.approx(n / tokens.height, rel=1e-12)


@pytest.mark.slow
def test_the_exemplar_pool_adds_exemplars_and_changes_no_statistic(wikitext_300):
    """corpus.exemplar_sentences (the paper: exemplars from 100,000 sentences, statistics from 10,000 of them).
    The analysis sample and every statistic are those of the run without the pool; the exemplars are those of a
    run whose analysis sample is the whole pool (here every sentence), found without attending to anything else."""
    few = ("corpus.max_documents=4", "corpus.part_sentences=40")
    plain = wikitext_300("plain", *few, "corpus.max_sentences=60")
    pooled = wikitext_300(
        "pooled", *few, "corpus.max_sentences=60", "corpus.exemplar_sentences=100000"
    )
    everything = wikitext_300("everything", *few, "corpus.max_sentences=100000")
    for cfg in (plain, pooled, everything):
        run(cfg)
    counts = run(pooled, ["corpus"]).state["stages"]["corpus"]["counts"]
    total = counts["sentences_after_filters"]
    assert counts["sentences"] == 60 and counts["exemplar_pool_sentences"] == total > 100
    pool_parts = sorted((pooled.run_dir / "sentences").glob("pool-*.parquet"))
    assert pool_parts and pl.read_parquet(pool_parts)["sentence_id"].to_list() == list(
        range(60, total)
    )
    assert sorted(p.name for p in (pooled.run_dir / "attend").glob("pool-*.npz")) == [
        p.with_suffix(".npz").name for p in pool_parts
    ]

    for name in (
        "sentences",
        "tokens",
        "head_metrics",
        "layer_metrics",
        "pos_share",
        "dep_share",
        "findings",
        "corpus_stats",
    ):
        a, b = table(plain, name), table(pooled, name)
        assert a.equals(b), name
    ex, want = table(pooled, "exemplars"), table(everything, "exemplars")
    keys = ["layer", "head", "rank"]
    assert ex.height == want.height
    assert np.allclose(
        ex.sort(keys)["weight"].to_numpy(), want.sort(keys)["weight"].to_numpy(), rtol=1e-9, atol=0
    )
    assert ex.sort(keys)["text"].equals(
        want.sort(keys)["text"]
    )  # the same sentences, numbered differently
    assert (ex["sentence_id"] >= 60).any()  # some exemplars come from the pool
    plain_ex = table(plain, "exemplars").sort(keys)
    assert (ex.sort(keys)["weight"].to_numpy() >= plain_ex["weight"].to_numpy() - 1e-12).all()
