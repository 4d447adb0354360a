"""The notebook runs top to bottom on a real (tiny) run; the HTML report opens in headless Chromium
with every image loaded and no broken link."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import ROOT
from helpers import launch_chromium, needs_chromium

pytestmark = pytest.mark.slow  # a Jupyter kernel and a browser


def test_notebook_executes_and_answers_its_questions(full_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("ATTNSTATS_RUN", str(full_run.run_dir.resolve()))
    nb = nbformat.read(ROOT / "reports" / "explore.ipynb", as_version=4)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert "head_metrics" in text and "PROPN" in text and "layer" in text


@needs_chromium
def test_report_opens_in_a_browser_with_every_image_and_link(full_run):
    from playwright.sync_api import sync_playwright

    index = (Path(full_run.reports_dir) / full_run.run_name / "index.html").resolve()
    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page()
        failed = []
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete && e.naturalWidth > 0, e.alt])"
        )
        links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        heading = page.inner_text("h1")
        browser.close()
    assert len(images) >= 9 and all(ok for ok, _ in images), [alt for ok, alt in images if not ok]
    assert not failed
    assert heading.startswith("Attention statistics")
    for href in links:
        url = urlparse(href)
        if url.scheme == "file":
            assert Path(unquote(url.path)).is_file(), href
        else:
            assert url.fragment and href.split("#")[0] == index.as_uri(), (
                href
            )  # in-page anchors only
