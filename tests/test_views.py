"""The report's interactive views (pipeline/report/views.py): the embedded data against the tables, and the page
in headless Chromium — clicking a head in the model view redraws the head view with that head's pattern, pointing
at a piece leaves only its lines, every id the script uses exists, nothing is blank, no console error, no request
but the file itself. On synthetic tables (every head its own pattern) and on the tiny full run."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.config import ReportConfig
from pipeline.report import views, views_static

from helpers import launch_chromium, needs_chromium
from synthetic import tables, write_run

N_PIECES = 6  # the synthetic sentence: "The cat sat on the mat."


def distinct_patterns(L: int, H: int, n: int = N_PIECES, seed: int = 0) -> pl.DataFrame:
    """Every head its own pattern on sentence 0: peaked random rows with exact zeros and weights too small to draw
    (under 0.0005), so that heads differ in their number of lines as well as in their opacities."""
    rng = np.random.default_rng(seed)
    i, j = np.tril_indices(n)
    frames = []
    for layer in range(L):
        for head in range(H):
            m = np.zeros((n, n))
            for row in range(n):
                w = rng.random(row + 1) ** 6
                w[rng.random(row + 1) < 0.3] = 0.0
                w[rng.integers(row + 1)] += 0.5
                m[row, : row + 1] = w / w.sum()
            frames.append(
                pl.DataFrame(
                    {
                        "layer": np.full(len(i), layer, np.int32),
                        "head": np.full(len(i), head, np.int32),
                        "sentence_id": np.zeros(len(i), np.int64),
                        "attending_position": i.astype(np.int64),
                        "receiving_position": j.astype(np.int64),
                        "weight": m[i, j],
                    }
                )
            )
    return pl.concat(frames)


def synthetic_tables() -> dict[str, pl.DataFrame]:
    t = tables()
    t["patterns"] = distinct_patterns(12, 12)
    t["head_metrics"] = t["head_metrics"].with_columns(
        null_share_ci_low=pl.col("null_share") - 0.01,
        null_share_ci_high=pl.col("null_share") + 0.02,
    )
    return t


def expected_lines(patterns: pl.DataFrame, layer: int, head: int) -> list[tuple[int, int, float]]:
    """The lines the head view must draw: every pair whose weight rounds to at least 0.001, opacity the rounded weight."""
    p = patterns.filter((pl.col("layer") == layer) & (pl.col("head") == head))
    permille = np.rint(p["weight"].to_numpy() * 1000)
    keep = permille >= 1
    return sorted(
        zip(
            p["attending_position"].to_numpy()[keep].tolist(),
            p["receiving_position"].to_numpy()[keep].tolist(),
            (permille[keep] / 1000).tolist(),
        )
    )


# ---- the embedded data ----


def test_views_data_holds_each_heads_pattern_rounded_and_each_sentence_once():
    t = synthetic_tables()
    t["head_metrics"] = t["head_metrics"].with_columns(
        null_share=pl.when((pl.col("layer") == 0) & (pl.col("head") == 1))
        .then(float("nan"))
        .otherwise(pl.col("null_share"))
    )
    data = json.loads(
        views.embedded_json(views.views_data(t)),
        parse_constant=lambda c: pytest.fail(f"{c} in the embedded JSON"),
    )
    assert (data["layers"], data["heads"]) == (12, 12)
    for layer, head in ((0, 0), (3, 5), (11, 11)):
        p = data["patterns"][layer * 12 + head]
        want = (
            t["patterns"]
            .filter((pl.col("layer") == layer) & (pl.col("head") == head))
            .sort("attending_position", "receiving_position")
        )
        assert p["n"] == N_PIECES and p["sentence"] == 0
        assert (
            p["w"] == np.rint(want["weight"].to_numpy() * 1000).astype(int).tolist()
        )  # row-major lower triangle
    assert list(data["sentences"]) == ["0"]  # 144 heads, one sentence: its pieces once
    assert data["sentences"]["0"]["pieces"] == ["The", "cat", "sat", "on", "the", "mat."]
    metrics = data["metrics"]
    k = metrics["columns"].index("null_share")
    assert metrics["values"][1][k] is None  # NaN → null
    assert metrics["ci"][2][k] == pytest.approx([2 / 144 - 0.01, 2 / 144 + 0.02], abs=1e-4)
    assert (
        metrics["ci"][2][metrics["columns"].index("mean_distance")] is None
    )  # no interval in the table
    roles = t["head_roles"].sort("layer", "head")
    assert data["roles"]["role"] == roles["role"].to_list()
    assert data["exemplars"][5] == [[0, 0.9, 18, 23, 3, 7]]


def test_views_read_the_attention_rows_of_weighted_tables():
    """With norm weighting, tables have a first column `weighting`: the views show the attention rows."""
    t = synthetic_tables()
    weighted = dict(t)
    for name in ("head_metrics", "head_roles", "pos_share", "positional_profile", "findings"):
        plain = t[name].with_columns(pl.lit("attention").alias("weighting"))
        norm = plain.with_columns(pl.lit("norm").alias("weighting"))
        if "null_share" in norm.columns:
            norm = norm.with_columns(null_share=pl.lit(0.123))
        weighted[name] = pl.concat([plain, norm]).select("weighting", *t[name].columns)
    assert views.views_data(weighted) == views.views_data(t)
    assert views.attention_rows(weighted["head_metrics"]).equals(t["head_metrics"])


def test_embedded_json_cannot_end_its_script_element():
    t = synthetic_tables()
    t["exemplars"] = t["exemplars"].with_columns(
        text=pl.lit("A </script><script>alert(1)</script> mat.")
    )
    text = views.embedded_json(views.views_data(t))
    assert "</" not in text and json.loads(text)["sentences"]["0"]["text"].startswith("A </script>")


# ---- in the browser ----


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    from stages.report import build_report

    tmp = tmp_path_factory.mktemp("views")
    t = synthetic_tables()
    build_report(
        write_run(tmp / "data" / "runs" / "views", t), tmp / "reports" / "views", ReportConfig()
    )
    return tmp / "reports" / "views" / "index.html", t


class Browser:
    """One page in headless Chromium that records console errors and every request (all refused but the page's own
    file, so that a request elsewhere fails the test instead of reaching the network)."""

    def __init__(self, playwright, index: Path):
        self.browser = launch_chromium(playwright)
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.uri = index.resolve().as_uri()
        self.page.goto(self.uri)
        self.page.wait_for_load_state("load")

    def _route(self, route):
        self.requests.append(route.request.url)
        route.continue_() if route.request.url == self.uri else route.abort()

    def lines(self, visible_only: bool = False) -> list[tuple[int, int, float]]:
        js = (
            "els => els.filter(e => !%s || getComputedStyle(e).display !== 'none')"
            ".map(e => [Number(e.dataset.i), Number(e.dataset.j), Number(e.getAttribute('stroke-opacity'))])"
        )
        return sorted(
            tuple(x)
            for x in self.page.eval_on_selector_all(".av-line", js % str(visible_only).lower())
        )  # exact: w / 1000 both sides

    def click_head(self, layer: int, head: int, heads: int) -> None:
        self.page.click(f".av-cell[data-index='{layer * heads + head}']")


def script_ids() -> set[str]:
    return set(re.findall(r'getElementById\("([\w-]+)"\)', views_static.JS))


def _variance(png: bytes) -> float:
    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return float(pixels.mean(axis=2).var())


@pytest.mark.slow
@needs_chromium
def test_clicking_a_head_redraws_the_head_view_with_its_pattern(synthetic_report):
    from playwright.sync_api import sync_playwright

    index, t = synthetic_report
    with sync_playwright() as p:
        b = Browser(p, index)
        page = b.page
        assert script_ids() >= {
            "views-data",
            "av-grid",
            "av-drawing",
            "av-title",
            "av-layer",
            "av-head",
        }
        for element_id in script_ids():
            assert page.locator(f"#{element_id}").count() == 1, element_id
        assert page.locator(".av-cell").count() == 144
        for layer, head in ((3, 5), (7, 2), (11, 0)):
            b.click_head(layer, head, 12)
            assert f"layer {layer}, head {head}" in page.inner_text("#av-title")
            assert page.input_value("#av-layer") == str(layer) and page.input_value(
                "#av-head"
            ) == str(head)
            assert b.lines() == expected_lines(t["patterns"], layer, head)
            assert (
                page.locator(f".av-cell.av-selected[data-index='{layer * 12 + head}']").count() == 1
            )
            null_share = t["head_metrics"].filter(
                (pl.col("layer") == layer) & (pl.col("head") == head)
            )["null_share"][0]
            metrics = page.inner_text("#av-metrics")
            assert (
                f"{null_share:.3f}" in metrics
                and f"[{null_share - 0.01:.3f}, {null_share + 0.02:.3f}]" in metrics
            )
            role = t["head_roles"].filter((pl.col("layer") == layer) & (pl.col("head") == head))[
                "role"
            ][0]
            assert f"Role: {role}" in page.inner_text("#av-role")
        assert expected_lines(t["patterns"], 3, 5) != expected_lines(
            t["patterns"], 7, 2
        )  # the heads do differ
        assert page.inner_html("#av-exemplars").count(
            "<b> mat.</b>"
        ) == 1 and "<u> cat</u>" in page.inner_html("#av-exemplars")
        page.select_option("#av-layer", "5")  # the selects open a head too
        page.select_option("#av-head", "9")
        assert "layer 5, head 9" in page.inner_text("#av-title")
        assert b.lines() == expected_lines(t["patterns"], 5, 9)
        page.locator("#av-drawing").scroll_into_view_if_needed()
        page.hover(".av-att[data-i='4']")  # pointing at a piece leaves its lines alone
        assert b.lines(visible_only=True) == [
            x for x in expected_lines(t["patterns"], 5, 9) if x[0] == 4
        ]
        page.click(".av-att[data-i='3']")  # clicking fixes a piece until clicked again
        page.mouse.move(0, 0)
        assert {i for i, _, _ in b.lines(visible_only=True)} == {3}
        page.click(".av-att[data-i='3']")
        page.mouse.move(0, 0)
        assert len(b.lines(visible_only=True)) == len(expected_lines(t["patterns"], 5, 9))
        grid, drawing = (
            _variance(page.locator("#av-grid").screenshot()),
            _variance(page.locator("#av-drawing").screenshot()),
        )
        errors, requests = b.errors, b.requests
        b.browser.close()
    # measured: grid 0.061 (0.0013 with every cell white: the axis labels alone), drawing 0.012 (1e-4 without the SVG)
    assert grid > 0.01 and drawing > 0.002, (grid, drawing)
    assert not errors
    assert requests == [b.uri]


@pytest.mark.slow
@needs_chromium
def test_views_on_the_tiny_full_run(full_run):
    from playwright.sync_api import sync_playwright

    from pipeline.results import load

    patterns = views.attention_rows(load(full_run.run_dir, tables=("patterns",))["patterns"])
    index = Path(full_run.reports_dir) / full_run.run_name / "index.html"
    with sync_playwright() as p:
        b = Browser(p, index)
        for layer in range(2):
            for head in range(3):
                b.click_head(layer, head, 3)
                assert f"layer {layer}, head {head}" in b.page.inner_text("#av-title")
                assert b.lines() == expected_lines(patterns, layer, head)
                assert b.page.locator("#av-exemplars li").count() >= 1
        errors, requests = b.errors, b.requests
        b.browser.close()
    assert not errors and requests == [b.uri]
