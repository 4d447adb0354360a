"""`python -m pipeline compare A B` (pipeline/report/compare.py) on synthetic runs of known structure: B is A with
its heads permuted (each head's best match is its twin), and B is A's even layers (a model of another depth).
The page (reports/compare-A-B/index.html) holds both runs' claims and figures by relative depth, head_matches.parquet
is right, and the page opens in headless Chromium with every image loaded, no broken link and no request."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl
import pytest

from pipeline.config import ReportConfig
from pipeline.report import compare

from helpers import launch_chromium, needs_chromium
from synthetic import tables, write_run


def remap_heads(
    t: dict[str, pl.DataFrame],
    mapping: dict[tuple[int, int], tuple[int, int]],
    layer_map: dict[int, int] | None = None,
) -> dict[str, pl.DataFrame]:
    """Every head-level table with head (l, h) renamed mapping[(l, h)]; heads not in mapping are dropped. With
    layer_map {old layer: new layer}, layer-level tables (layer_metrics, dep_share_by_layer) keep only its layers,
    renamed; other tables are kept as they are."""
    keys = pl.DataFrame(
        {
            "layer": [k[0] for k in mapping],
            "head": [k[1] for k in mapping],
            "new_layer": [v[0] for v in mapping.values()],
            "new_head": [v[1] for v in mapping.values()],
        },
        schema={"layer": pl.Int32, "head": pl.Int32, "new_layer": pl.Int32, "new_head": pl.Int32},
    )
    out = {}
    for name, df in t.items():
        if {"layer", "head"} <= set(df.columns):
            joined = df.with_columns(
                pl.col("layer").cast(pl.Int32), pl.col("head").cast(pl.Int32)
            ).join(keys, on=["layer", "head"], how="inner", maintain_order="left")
            out[name] = (
                joined.with_columns(
                    layer=pl.col("new_layer").cast(df["layer"].dtype),
                    head=pl.col("new_head").cast(df["head"].dtype),
                )
                .select(df.columns)
                .sort("layer", "head")
            )
        elif "layer" in df.columns and layer_map is not None:
            out[name] = pl.concat(
                [
                    df.filter(pl.col("layer") == old).with_columns(
                        layer=pl.lit(new, df["layer"].dtype)
                    )
                    for old, new in sorted(layer_map.items(), key=lambda kv: kv[1])
                ]
            )
        else:
            out[name] = df
    return out


def with_norm_rows(t: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """As norm weighting writes them: a first column `weighting`, and a second copy of the rows ("norm") whose
    values are scrambled — the comparison must read the attention rows only."""
    out = dict(t)
    for name in (
        "head_metrics",
        "layer_metrics",
        "pos_share",
        "positional_profile",
        "head_roles",
        "findings",
    ):
        df = t[name].with_columns(pl.lit("attention").alias("weighting"))
        value = (
            "share"
            if "share" in df.columns
            else "null_share"
            if "null_share" in df.columns
            else None
        )
        norm = df.with_columns(pl.lit("norm").alias("weighting"))
        if value:
            norm = norm.with_columns(pl.col(value).shuffle(seed=1))
        out[name] = pl.concat([df, norm]).select("weighting", *t[name].columns)
    return out


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    """B: A's 4 × 3 heads under a random permutation (with norm-weighted rows beside them)."""
    tmp = tmp_path_factory.mktemp("compare-permuted")
    a = tables(L=4, H=3, seed=3)
    order = np.random.default_rng(7).permutation(12)
    mapping = {
        (int(k // 3), int(k % 3)): (int(order[k] // 3), int(order[k] % 3)) for k in range(12)
    }
    write_run(tmp / "data" / "runs" / "a", a)
    write_run(tmp / "data" / "runs" / "b", with_norm_rows(remap_heads(a, mapping)))
    out = compare.compare_runs(
        "a", "b", data_dir=str(tmp / "data"), reports_dir=str(tmp / "reports")
    )
    return tmp, Path(out), mapping


def test_each_head_is_matched_to_its_permuted_twin(permuted):
    tmp, out, mapping = permuted
    assert out == tmp / "reports" / "compare-a-b" / "index.html" and out.is_file()
    matches = pl.read_parquet(out.parent / "head_matches.parquet")
    assert matches.height == 24 and matches["mutual"].all()
    assert matches["similarity"].to_numpy() == pytest.approx(1.0)
    a_to_b = {
        (r["layer"], r["head"]): (r["match_layer"], r["match_head"])
        for r in matches.filter(pl.col("run") == "a").iter_rows(named=True)
    }
    b_to_a = {
        (r["layer"], r["head"]): (r["match_layer"], r["match_head"])
        for r in matches.filter(pl.col("run") == "b").iter_rows(named=True)
    }
    assert a_to_b == mapping
    assert b_to_a == {v: k for k, v in mapping.items()}


@pytest.fixture(scope="module")
def deeper_and_shallower(tmp_path_factory):
    """A: 12 × 4 heads (its report built, so the page links to it); B: A's even layers, 6 × 4, renumbered 0..5, with
    a part of speech A lacks and a shorter positional profile."""
    from stages.report import build_report

    tmp = tmp_path_factory.mktemp("compare-depth")
    a = tables(L=12, H=4, seed=5)
    b = remap_heads(
        a,
        {(layer, h): (layer // 2, h) for layer in range(0, 12, 2) for h in range(4)},
        {layer: layer // 2 for layer in range(0, 12, 2)},
    )
    b["pos_share"] = pl.concat(
        [
            b["pos_share"],
            b["pos_share"]
            .filter(pl.col("tag") == "NOUN")
            .with_columns(tag=pl.lit("INTJ"), share=pl.lit(0.0)),
        ]
    )
    b["positional_profile"] = b["positional_profile"].filter(pl.col("offset") <= 10)
    a_dir = write_run(tmp / "data" / "runs" / "deep", a)
    build_report(a_dir, tmp / "reports" / "deep", ReportConfig())
    write_run(
        tmp / "data" / "runs" / "shallow",
        b,
        model={"name": "half", "model_type": "gpt2", "num_layers": 6, "num_heads": 4},
    )
    out = compare.compare_runs(
        "deep", "shallow", data_dir=str(tmp / "data"), reports_dir=str(tmp / "reports")
    )
    return tmp, Path(out), a, b


@pytest.mark.slow
def test_runs_of_different_depth_meet_at_relative_depth(deeper_and_shallower):
    tmp, out, a, b = deeper_and_shallower
    matches = pl.read_parquet(out.parent / "head_matches.parquet")
    shallow = matches.filter(pl.col("run") == "shallow")
    assert shallow.height == 24 and matches.filter(pl.col("run") == "deep").height == 48
    assert (shallow["match_layer"] == 2 * shallow["layer"]).all() and (
        shallow["match_head"] == shallow["head"]
    ).all()
    assert shallow["similarity"].to_numpy() == pytest.approx(1.0)
    assert shallow["relative_depth"].to_list() == pytest.approx(np.repeat(np.arange(6) / 5, 4))
    assert shallow["match_relative_depth"].to_list() == pytest.approx(
        np.repeat(np.arange(0, 12, 2) / 11, 4)
    )
    deep = matches.filter(pl.col("run") == "deep")
    even = deep.filter(pl.col("layer") % 2 == 0)
    assert (even["match_layer"] == even["layer"] // 2).all() and even["mutual"].all()
    # the features: the offsets both profiles have, the null share; INTJ (only in B, always 0) carries nothing
    run_a, run_b = (
        compare.Run(tmp / "data" / "runs" / "deep", "deep"),
        compare.Run(tmp / "data" / "runs" / "shallow", "shallow"),
    )
    xa, xb, used = compare.feature_matrices(run_a, run_b)
    assert used["offset"] == [f"offset_{d}" for d in range(1, 11)] and used["null"] == [
        "null_share"
    ]
    assert used["pos_to"] == ["to_NOUN", "to_PROPN", "to_DET", "to_PUNCT", "to_VERB"]
    assert xa.shape == (48, 16) and xb.shape == (24, 16)


def test_features_take_the_union_of_the_tags_standardised_over_both_runs():
    """A tag one run lacks counts as a share of 0 there; each column has mean 0 and SD 1/√(group size) over all heads."""
    from types import SimpleNamespace

    a, b = tables(L=2, H=3, seed=1), tables(L=3, H=3, seed=2)
    intj = (
        b["pos_share"]
        .filter(pl.col("tag") == "NOUN")
        .with_columns(tag=pl.lit("INTJ"), share=pl.col("share") / 2)
    )
    b["pos_share"] = pl.concat([b["pos_share"], intj])
    runs = [
        SimpleNamespace(label=n, tables=t, layers=L, heads=3)
        for n, t, L in (("a", a, 2), ("b", b, 3))
    ]
    xa, xb, used = compare.feature_matrices(*runs)
    assert used["pos_to"] == ["to_NOUN", "to_PROPN", "to_DET", "to_PUNCT", "to_VERB", "to_INTJ"]
    both = np.vstack([xa, xb])
    assert both.mean(axis=0) == pytest.approx(0.0, abs=1e-12)
    assert both.std(axis=0) == pytest.approx([1 / np.sqrt(6)] * 6 + [1 / np.sqrt(20)] * 20 + [1.0])
    k = used["pos_to"].index("to_INTJ")
    assert len(set(xa[:, k].round(12))) == 1  # a's INTJ: all the same share (0)


@pytest.mark.slow
def test_the_page_holds_both_runs_claims_findings_and_figures(deeper_and_shallower):
    tmp, out, a, b = deeper_and_shallower
    page = out.read_text()
    assert "deep vs shallow" in page and "http://" not in page and "https://" not in page
    assert (
        page.count("<img") == 4
    )  # null share, dependency alignment, distance, entropy: by relative depth
    for column in ("holds (deep)", "holds (shallow)", "value (deep)", "value (shallow)"):
        assert f"<th>{column}</th>" in page
    claims = compare.claims_side_by_side(
        [compare.Run(tmp / "data" / "runs" / n, n) for n in ("deep", "shallow")]
    )
    assert claims.height >= 30 and claims["claim"].n_unique() == claims.height
    for claim in claims["claim"]:
        assert f"<td>{claim}</td>" in page
    assert "r_distance_entropy" in page and "<a href='head_matches.parquet'>" in page
    assert "<a href='../deep/index.html'>deep's report</a>" in page


def test_cli_writes_the_page_and_prints_its_path(permuted, monkeypatch, capsys):
    from pipeline.cli import main

    tmp, _, _ = permuted
    monkeypatch.chdir(tmp)
    assert (
        main(
            [
                "compare",
                str(tmp / "data" / "runs" / "a"),
                str(tmp / "data" / "runs" / "b"),
                "--out",
                "elsewhere",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(Path("elsewhere") / "index.html")
    assert (tmp / "elsewhere" / "head_matches.parquet").is_file()
    assert main(["compare", "a", "nothing"]) == 2  # one line naming what is missing, no traceback
    assert "no run at 'nothing'" in capsys.readouterr().err


@pytest.mark.slow
@needs_chromium
def test_compare_page_opens_in_a_browser_with_every_image_and_link(deeper_and_shallower):
    from playwright.sync_api import sync_playwright

    _, out, _, _ = deeper_and_shallower
    index = out.resolve().as_uri()
    requests, errors = [], []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.route(
            "**/*",
            lambda route: (
                requests.append(route.request.url),
                route.continue_() if route.request.url == index else route.abort(),
            ),
        )
        page.goto(index)
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete && e.naturalWidth > 0, e.alt])"
        )
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        anchors = set(page.eval_on_selector_all("[id]", "els => els.map(e => e.id)"))
        browser.close()
    assert len(images) == 4 and all(ok for ok, _ in images), [alt for ok, alt in images if not ok]
    assert requests == [index] and not errors
    for href in links:
        url = urlparse(href)
        assert url.scheme == "file", href
        if href.split("#")[0] == index:
            assert url.fragment in anchors, href  # in-page anchors name an element
        else:
            assert Path(unquote(url.path)).is_file(), href
