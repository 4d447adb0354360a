"""The report's figures, drawn from synthetic tables with known values: each figure shows the table's
values. The page itself: tests/test_report_page.py; the claims check: tests/test_claims.py."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.report import figures

from synthetic import tables


def test_heatmap_cells_are_the_table_values():
    t = tables(L=5, H=7)
    fig = figures.head_heatmap(t["head_metrics"], "null_share", "x")
    shown = fig.axes[0].images[0].get_array()
    expected = t["head_metrics"].sort("layer", "head")["null_share"].to_numpy().reshape(5, 7)
    assert np.allclose(shown, expected)
    assert [int(x) for x in fig.axes[0].get_xticks()] == list(range(7))
    big = tables(L=48, H=25)
    fig = figures.head_heatmap(big["head_metrics"], "mean_distance", "x")
    assert (
        fig.axes[0].images[0].get_array().shape == (48, 25) and len(fig.axes[0].get_yticks()) <= 24
    )


def test_small_multiples_one_panel_per_tag_with_own_scale():
    t = tables(L=3, H=4)
    fig = figures.tag_small_multiples(t["pos_share"], "to")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5
    for ax in panels:
        tag = ax.get_title().split()[0]
        want = (
            t["pos_share"]
            .filter((pl.col("direction") == "to") & (pl.col("tag") == tag))
            .sort("layer", "head")["share"]
        )
        assert np.allclose(ax.images[0].get_array(), want.to_numpy().reshape(3, 4))
        assert ax.images[0].norm.vmax == pytest.approx(want.max())


def test_dependency_alignment_lines_and_baseline():
    t = tables(L=6, H=2)
    fig = figures.dependency_alignment(t["layer_metrics"])
    lines = fig.axes[0].get_lines()
    assert np.allclose(lines[0].get_ydata(), t["layer_metrics"]["dep_align_either"])
    baselines = [line.get_ydata()[0] for line in lines if line.get_linestyle() == "--"]
    assert baselines == pytest.approx([0.1, 0.04, 0.06])  # one per formulation, in its colour


def test_dependency_labels_are_absolute_and_keep_the_discussed_labels():
    df = pl.DataFrame(
        {
            "layer": [0, 1, 0, 1, 0, 1],
            "label": ["punct", "punct", "expl", "expl", "_", "_"],
            "share": [0.3, 0.1, 0.001, 0.002, 0.5, 0.5],
        }
    )
    ax = figures.dependency_labels(df, top=5).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [
        *figures.DISCUSSED_LABELS,
        "punct",
    ]  # the discussed ones first, even absent; "_" never
    data = ax.images[0].get_array()
    assert (
        data[labels.index("punct"), 0] == 0.3 and data[labels.index("expl"), 1] == 0.002
    )  # absolute shares
    assert (data[labels.index("csubjpass")] == 0).all()


def test_head_cards_draw_each_heads_whole_pattern_and_its_alignment_on_the_sentence():
    """Fig. 4: the image is the head's matrix from patterns.parquet; on "The cat sat on the mat." a previous-piece
    head puts 3 of its 4 non-null units on related pairs (cat←sat, on←sat, the←mat; not the←on)."""
    t = tables(L=3, H=2)
    fig = figures.head_cards(t["head_metrics"], t["exemplars"], t["tokens"], t["patterns"])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 3
    want = np.zeros((6, 6))
    want[np.arange(6), np.maximum(np.arange(6) - 1, 0)] = 1.0
    for ax in panels:
        assert np.allclose(ax.images[0].get_array(), want)
        assert "0.750 (this sentence)" in ax.get_title(loc="left")
        marked = {
            tuple(map(int, xy)) for xy in ax.collections[0].get_offsets()
        }  # (j, i) of related pairs
        assert {(1, 2), (2, 3), (4, 5)} <= marked and (3, 4) not in marked


def test_layer_figures_draw_the_bootstrap_interval_when_there_is_one():
    layers = tables(L=4, H=2)["layer_metrics"]
    assert not figures.dependency_alignment(layers).axes[0].collections  # no interval: no band
    banded = layers.with_columns(
        dep_align_either_ci_low=pl.col("dep_align_either") - 0.01,
        dep_align_either_ci_high=pl.col("dep_align_either") + 0.02,
    )
    band = figures.dependency_alignment(banded).axes[0].collections[0].get_paths()[0].vertices
    assert np.isclose(band[:, 1].min(), (banded["dep_align_either"] - 0.01).min())
    assert np.isclose(band[:, 1].max(), (banded["dep_align_either"] + 0.02).max())
