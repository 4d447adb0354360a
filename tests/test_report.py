"""Figures from synthetic tables with known values; the claims check made true and then false;
the HTML report; `compare`; the notebook."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.report import claims, figures
from pipeline.config import ReportConfig
from synthetic import tables, write_run


def test_heatmap_cells_are_the_table_values():
    t = tables(L=5, H=7)
    fig = figures.head_heatmap(t["head_metrics"], "null_share", "x")
    shown = fig.axes[0].images[0].get_array()
    expected = t["head_metrics"].sort("layer", "head")["null_share"].to_numpy().reshape(5, 7)
    assert np.allclose(shown, expected)
    assert [int(x) for x in fig.axes[0].get_xticks()] == list(range(7))
    big = tables(L=48, H=25)
    fig = figures.head_heatmap(big["head_metrics"], "mean_distance", "x")
    assert fig.axes[0].images[0].get_array().shape == (48, 25) and len(fig.axes[0].get_yticks()) <= 24


def test_small_multiples_one_panel_per_tag_with_own_scale():
    t = tables(L=3, H=4)
    fig = figures.tag_small_multiples(t["pos_share"], "to")
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5
    for ax in panels:
        tag = ax.get_title().split()[0]
        want = t["pos_share"].filter((pl.col("direction") == "to") & (pl.col("tag") == tag)).sort("layer", "head")["share"]
        assert np.allclose(ax.images[0].get_array(), want.to_numpy().reshape(3, 4))
        assert ax.images[0].norm.vmax == pytest.approx(want.max())


def test_dependency_alignment_lines_and_baseline():
    t = tables(L=6, H=2)
    fig = figures.dependency_alignment(t["layer_metrics"])
    lines = fig.axes[0].get_lines()
    assert np.allclose(lines[0].get_ydata(), t["layer_metrics"]["dep_align_either"])
    baselines = [line.get_ydata()[0] for line in lines if line.get_linestyle() == "--"]
    assert baselines == pytest.approx([0.1, 0.04, 0.06])  # one per formulation, in its colour


def _claim(t, model=None):
    table = claims.evaluate(t, model or {"model_type": "gpt2", "num_layers": 12, "num_heads": 12})
    return {r["claim"]: r for r in table.iter_rows(named=True)}


def _set_finding(t, statistic, value, p=None):
    f = t["findings"].with_columns(
        value=pl.when(pl.col("statistic") == statistic).then(pl.lit(value)).otherwise(pl.col("value")),
        p_value=pl.when(pl.col("statistic") == statistic).then(pl.lit(p)).otherwise(pl.col("p_value")))
    return {**t, "findings": f}


@pytest.mark.parametrize("claim, statistic, true_value, false_value, p", [
    ("null_attention_max", "null_share_max", 0.99, 0.9, None),
    ("null_attention_mean", "null_share_mean", 0.57, 0.1, None),
    ("distance_sd", "sd_mean_distance", 3.6, 1.0, None),
    ("distance_entropy_r", "r_distance_entropy", 0.6, -0.2, 1e-6),
    ("distance_dep_alignment_r", "r_distance_dep_align", -0.7, 0.3, 1e-6),
    ("dep_alignment_middle", "layer_max_dep_align", 4.0, 11.0, None),
    ("distance_deepest", "layer_max_mean_distance", 11.0, 3.0, None),
])
def test_findings_claims_true_then_false(claim, statistic, true_value, false_value, p):
    t = tables()
    assert _claim(_set_finding(t, statistic, true_value, p))[claim]["holds"] is True
    assert _claim(_set_finding(t, statistic, false_value, p))[claim]["holds"] is False


def _boost(t, direction, tag, cells, value=0.95):
    keys = [l * 1000 + h for l, h in cells]
    pos = t["pos_share"].with_columns(share=pl.when((pl.col("direction") == direction) & (pl.col("tag") == tag)
                                                    & (pl.col("layer") * 1000 + pl.col("head")).is_in(keys))
                                      .then(pl.lit(value)).otherwise(pl.col("share")))
    return {**t, "pos_share": pos}


def test_layer_specific_tag_claims_true_then_false():
    t = tables()
    late, early = [(11, h) for h in range(5)], [(0, h) for h in range(5)]
    assert _claim(_boost(t, "to", "PROPN", late))["propn_top5_late"]["holds"] is True
    assert _claim(_boost(t, "to", "PROPN", early))["propn_top5_late"]["holds"] is False
    assert _claim(_boost(t, "to", "DET", early))["det_top5_early"]["holds"] is True
    assert _claim(_boost(t, "to", "DET", late))["det_top5_early"]["holds"] is False
    ten_late = [(l, h) for l in (10, 11) for h in range(5)]
    assert _claim(_boost(t, "from", "PUNCT", ten_late))["punct_from_top10_late"]["holds"] is True
    assert _claim(_boost(t, "from", "PUNCT", [(0, h) for h in range(10)]))["punct_from_top10_late"]["holds"] is False


def test_tag_specialisation_counts_true_then_false():
    flat = tables()
    uniform = flat["pos_share"].with_columns(share=pl.lit(0.2))
    t = {**flat, "pos_share": uniform}
    assert _claim(t)["pos_to_specialised"]["holds"] is False and _claim(t)["pos_to_specialised"]["run_value"] == "0/5"
    for tag in ("NOUN", "PROPN", "DET"):
        t = _boost(t, "to", tag, [(3, 3)], 0.9)
    assert _claim(t)["pos_to_specialised"]["holds"] is True and _claim(t)["pos_to_specialised"]["run_value"] == "3/5"
    assert _claim(t)["pos_from_specialised"]["holds"] is False  # no 'from' tag is specialised
    t = _boost(t, "from", "VERB", [(1, 1)], 0.9)
    assert _claim(t)["pos_from_specialised"]["holds"] is True


def test_gpt2_head_claims_apply_only_to_gpt2_small():
    t = tables()
    heads = t["head_metrics"].with_columns(dep_align_either=pl.when((pl.col("layer") == 4) & (pl.col("head") == 11))
                                           .then(pl.lit(0.9)).otherwise(pl.col("dep_align_either")))
    c = _claim({**t, "head_metrics": heads})
    assert c["l4h11_top_alignment"]["applicable"] and c["l4h11_top_alignment"]["holds"] is True
    assert _claim(t)["l4h11_top_alignment"]["holds"] is False
    other = _claim({**t, "head_metrics": heads}, {"model_type": "llama", "num_layers": 12, "num_heads": 12})
    assert other["l4h11_top_alignment"]["applicable"] is False and other["l4h11_top_alignment"]["holds"] is None
    assert other["distance_sd"]["applicable"] is True


def test_adjacent_dependency_probability_claim():
    t = tables()
    assert _claim(t)["adjacent_dependency_probability"]["holds"] is True
    flat = t["corpus_stats"].with_columns(value=pl.lit(0.1))
    assert _claim({**t, "corpus_stats": flat})["adjacent_dependency_probability"]["holds"] is False


def test_exemplar_rendering_marks_attending_and_receiving():
    from pipeline.report.html import render_exemplar

    row = {"text": "The cat <sat> on the mat.", "attending_char_start": 16, "attending_char_end": 20,
           "receiving_char_start": 3, "receiving_char_end": 7}
    assert render_exemplar(row) == "The<i><u> cat</u></i> &lt;sat&gt; on<b> the</b> mat."
    same = {**row, "receiving_char_start": 16, "receiving_char_end": 20}
    assert render_exemplar(same) == "The cat &lt;sat&gt; on<b><i><u> the</u></i></b> mat."


def test_build_report_and_compare(tmp_path):
    from pipeline.report import figure_specs
    from pipeline.report.compare import compare_runs
    from stages.report import build_report

    FIGURES = [(f.stem, f.title, f.caption) for f in figure_specs()]

    for name, seed in (("a", 0), ("b", 1)):
        write_run(tmp_path / "data" / "runs" / name, tables(seed=seed))
        counts = build_report(tmp_path / "data" / "runs" / name, tmp_path / "reports" / name, ReportConfig(exemplar_heads=[(2, 3), (99, 0)]))
    html = (tmp_path / "reports" / "a" / "index.html").read_text()
    assert counts["figures"] == len(FIGURES)
    for stem, title, _ in FIGURES:
        assert (tmp_path / "reports" / "a" / "figures" / f"{stem}.svg").is_file() and title in html
    assert "Layer 2, head 3" in html and "no such head" in html and "<b> mat.</b>" in html
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN
    assert "<td>yes</td><td>✔ holds</td>" in html and "<td>no</td><td>not applicable</td>" not in html
    assert pl.read_parquet(tmp_path / "data" / "runs" / "a" / "claims.parquet").height >= 14
    out = compare_runs("a", "b", data_dir=str(tmp_path / "data"), reports_dir=str(tmp_path / "reports"))
    page = open(out).read()
    assert page.count("<img") == 2 * len(FIGURES) and "a vs b" in page


def test_report_without_variability(tmp_path):
    """attend.variability_positions = 0 leaves variability undefined: the report still builds."""
    from stages.report import build_report

    t = tables()
    t["head_metrics"] = t["head_metrics"].with_columns(variability=pl.lit(float("nan")))
    run_dir = write_run(tmp_path / "data" / "runs" / "novar", t,
                        metrics={"variability": "disabled: attend.variability_positions is 0"})
    counts = build_report(run_dir, tmp_path / "reports" / "novar", ReportConfig())
    html = (tmp_path / "reports" / "novar" / "index.html").read_text()
    assert counts["figures"] == 8 and "largest mean distance" in html
    assert "variability was not computed (disabled: attend.variability_positions is 0)" in html
    assert not (tmp_path / "reports" / "novar" / "figures" / "fig10_variability.png").exists()


def test_a_head_without_attention_never_tops_a_ranking():
    """Polars sorts NaN above every number: a head with no non-null attention (NaN shares) must not win."""
    t = tables()
    nan_head = (pl.col("layer") == 0) & (pl.col("head") == 0)
    heads = t["head_metrics"].with_columns(
        [pl.when(nan_head).then(float("nan")).otherwise(pl.col(c)).alias(c) for c in ("dep_align_either", "mean_distance")])
    pos = t["pos_share"].with_columns(share=pl.when((pl.col("layer") == 0) & (pl.col("head") == 0))
                                      .then(float("nan")).otherwise(pl.col("share")))
    layers = t["layer_metrics"].with_columns(mean_distance=pl.when(pl.col("layer") == 0).then(float("nan"))
                                             .otherwise(pl.col("mean_distance")))
    c = _claim({**t, "head_metrics": heads, "pos_share": pos, "layer_metrics": layers})
    assert not c["l4h11_top_alignment"]["run_value"].startswith("(0, 0)")
    assert not c["l5h1_top_distance"]["run_value"].startswith("(0, 0)")
    from pipeline.metrics import registry

    distance = next(m for m in registry() if m.name == "distance")
    far = {f.statistic: f.value for f in distance.findings(heads, layers, None)}["layer_max_mean_distance"]
    assert far == float(layers.drop_nans("mean_distance").sort("mean_distance")["layer"][-1]) != 0
    lowest = figures.extreme_head(heads, "mean_distance", highest=False)
    assert (lowest["layer"], lowest["head"]) != (0, 0)
    late = _boost({**t, "pos_share": pos}, "to", "PROPN", [(11, h) for h in range(5)])
    assert _claim(late)["propn_top5_late"]["holds"] is True  # the NaN head is not among the top five
    undefined = heads.with_columns(dep_align_either=pl.lit(float("nan")), mean_distance=pl.lit(float("nan")))
    nan_layers = layers.with_columns(dep_align_either=pl.lit(float("nan")), mean_distance=pl.lit(float("nan")))
    f = t["findings"].with_columns(value=pl.when(pl.col("statistic").str.starts_with("layer_max")).then(float("nan"))
                                   .otherwise(pl.col("value")))
    c = _claim({**t, "head_metrics": undefined, "layer_metrics": nan_layers, "findings": f})  # no crash
    assert c["l4h11_top_alignment"]["applicable"] is False and c["distance_deepest"]["applicable"] is False


def test_dependency_labels_are_absolute_and_keep_the_discussed_labels():
    df = pl.DataFrame({"layer": [0, 1, 0, 1, 0, 1], "label": ["punct", "punct", "expl", "expl", "_", "_"],
                       "share": [0.3, 0.1, 0.001, 0.002, 0.5, 0.5]})
    ax = figures.dependency_labels(df, top=5).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [*figures.DISCUSSED_LABELS, "punct"]  # the discussed ones first, even absent; "_" never
    data = ax.images[0].get_array()
    assert data[labels.index("punct"), 0] == 0.3 and data[labels.index("expl"), 1] == 0.002  # absolute shares
    assert (data[labels.index("csubjpass")] == 0).all()
