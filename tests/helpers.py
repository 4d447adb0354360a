from __future__ import annotations

import polars as pl

from pipeline.results import weighting_rows
from pipeline.runner import run_pipeline
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
