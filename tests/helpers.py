from __future__ import annotations

import os
import shutil

import polars as pl
import pytest

from pipeline.results import weighting_rows
from pipeline.run.runner import run_pipeline
from stages import STAGE_NAMES

ANALYSIS = [s for s in STAGE_NAMES if s != "report"]  # every stage that computes; report draws


def run(cfg, stages=ANALYSIS, **kwargs):
    return run_pipeline(cfg, stages, echo=lambda *a: None, **kwargs)


def table(cfg, name: str, weighting: str | None = "attention") -> pl.DataFrame:
    """A result table, or a parted one (sentences, tokens) read whole. A table made under each weighting gives the
    rows of `weighting` without the column (the paper's analysis by default); weighting=None gives every row."""
    parts = sorted((cfg.run_dir / name).glob("part-*.parquet"))
    df = pl.read_parquet(parts) if parts else pl.read_parquet(cfg.run_dir / f"{name}.parquet")
    return df if weighting is None else weighting_rows(df, weighting)


def chromium() -> str | None:
    return (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="Chromium not installed (make browser installs Debian's package)"
)


def launch_chromium(playwright):
    """Headless Chromium with nothing of its own reaching the network (updates, sync, background requests)."""
    return playwright.chromium.launch(
        executable_path=chromium(),
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
