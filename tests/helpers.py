from __future__ import annotations

import polars as pl

from pipeline.runner import run_pipeline
from stages import STAGE_NAMES

ANALYSIS = [s for s in STAGE_NAMES if s != "report"]  # every stage that computes; report draws


def run(cfg, stages=ANALYSIS, **kwargs):
    return run_pipeline(cfg, stages, echo=lambda *a: None, **kwargs)


def table(cfg, name: str) -> pl.DataFrame:
    """A result table, or a parted one (sentences, tokens) read whole."""
    parts = sorted((cfg.run_dir / name).glob("part-*.parquet"))
    return pl.read_parquet(parts) if parts else pl.read_parquet(cfg.run_dir / f"{name}.parquet")
