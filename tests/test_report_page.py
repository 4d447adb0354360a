"""The HTML report built from synthetic tables (every figure, exemplars, head cards, self-contained) and
`compare` of two such runs. The figures one by one: tests/test_report_figures.py; the claims check:
tests/test_claims.py."""

from __future__ import annotations

from html import escape as html_escape

import polars as pl
import pytest

from pipeline.config import ReportConfig

from synthetic import tables, with_norm_weighting, write_run


def test_exemplar_rendering_marks_attending_and_receiving():
    from pipeline.report.html import render_exemplar

    row = {
        "text": "The cat <sat> on the mat.",
        "attending_char_start": 16,
        "attending_char_end": 20,
        "receiving_char_start": 3,
        "receiving_char_end": 7,
    }
    assert render_exemplar(row) == "The<i><u> cat</u></i> &lt;sat&gt; on<b> the</b> mat."
    same = {**row, "receiving_char_start": 16, "receiving_char_end": 20}
    assert render_exemplar(same) == "The cat &lt;sat&gt; on<b><i><u> the</u></i></b> mat."


@pytest.mark.slow
def test_build_report_and_compare(tmp_path):
    from pipeline.report.compare import compare_runs
    from pipeline.report.figure_specs import FIGURES as SPECS
    from stages.report import build_report

    FIGURES = [(f.stem, f.title, f.caption) for f in SPECS]

    for name, seed in (("a", 0), ("b", 1)):  # runs with norm weighting: every figure is drawn
        write_run(
            tmp_path / "data" / "runs" / name,
            with_norm_weighting(tables(seed=seed)),
            metrics={"norm_weighting": "enabled"},
        )
        counts = build_report(
            tmp_path / "data" / "runs" / name,
            tmp_path / "reports" / name,
            ReportConfig(exemplar_heads=[(2, 3), (99, 0)]),
        )
    html = (tmp_path / "reports" / "a" / "index.html").read_text()
    assert counts["figures"] == len(FIGURES)
    for stem, title, _ in FIGURES:
        assert (tmp_path / "reports" / "a" / "figures" / f"{stem}.svg").is_file() and html_escape(
            title
        ) in html
    assert "Layer 2, head 3" in html and "no such head" in html and "<b> mat.</b>" in html
    assert "http://" not in html and "https://" not in html  # self-contained: no CDN
    assert "<table class='claims'>" in html and "<td class='verdict'>✔ holds" in html
    assert "<td class='verdict'>not applicable" not in html  # GPT-2 small, every metric computed
    assert pl.read_parquet(tmp_path / "data" / "runs" / "a" / "claims.parquet").height >= 14
    out = compare_runs(
        "a", "b", data_dir=str(tmp_path / "data"), reports_dir=str(tmp_path / "reports")
    )
    page = open(out).read()
    assert (
        page.count("<img") == 4 and "a vs b" in page
    )  # the 4 layer-level figures of synthetic tables, by relative depth


@pytest.mark.slow
def test_report_without_variability(tmp_path):
    """attend.variability_positions = 0 leaves variability undefined: the report still builds."""
    from pipeline.report.figure_specs import FIGURES
    from stages.report import build_report

    t = tables()
    t["head_metrics"] = t["head_metrics"].with_columns(variability=pl.lit(float("nan")))
    run_dir = write_run(
        tmp_path / "data" / "runs" / "novar",
        t,
        metrics={"variability": "disabled: attend.variability_positions is 0"},
    )
    counts = build_report(run_dir, tmp_path / "reports" / "novar", ReportConfig())
    html = (tmp_path / "reports" / "novar" / "index.html").read_text()
    assert (
        counts["figures"] == len(FIGURES) - 2 and "largest mean distance" in html
    )  # and no norm weighting
    assert (
        "norm weighting was not computed (disabled: the attend stage of this run did not record it)"
        in html
    )
    assert "variability was not computed (disabled: attend.variability_positions is 0)" in html
    assert not (tmp_path / "reports" / "novar" / "figures" / "fig10_variability.png").exists()
