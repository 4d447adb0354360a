"""Notebook access to a run: every table as a polars DataFrame.

    from pipeline import results
    run = results.load("data/runs/offline")
    run["head_metrics"].sort("dep_align_either", descending=True).head()
    tokens = results.scan("data/runs/offline", "tokens")   # parted tables, lazily: filter before collect()
    paper = results.of_weighting(run)                       # the paper's analysis: attention weights only
    norm = results.of_weighting(run, "norm")                # the same tables under norm weighting

Tables computed under each weighting (head_metrics, pos_share, findings, ...) have a first column
`weighting`: "attention" (the paper's α_ij) or "norm" (α_ij ‖f_h(x_j)‖, Kobayashi et al. 2020)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline.errors import PipelineError
from pipeline.run import io


def resolve_run_dir(run: str | Path, data_dir: str | Path = "data") -> Path:
    path = Path(run)
    if (path / "run.json").is_file():
        return path
    named = Path(data_dir) / "runs" / str(run)
    if (named / "run.json").is_file():
        return named
    raise PipelineError(f"no run at {run!r} (looked for {path}/run.json and {named}/run.json)")


PARTED = ("sentences", "tokens")  # corpus-sized tables, written in parts


def load(
    run: str | Path, data_dir: str | Path = "data", tables: tuple[str, ...] | None = None
) -> dict[str, pl.DataFrame]:
    """{table name: DataFrame} for every result table of the run (head_metrics, pos_share, ...), or for
    the named ones that exist. The corpus-sized tables (sentences, tokens) only when named: `scan` them.
    Every table is checked first: a damaged table, or one that is not the file its stage wrote in this run,
    is one PipelineError naming the file and the stage that rebuilds it, never returned as data."""
    run_dir = resolve_run_dir(run, data_dir)
    paths = (
        sorted(run_dir.glob("*.parquet"))
        if tables is None
        else [run_dir / f"{t}.parquet" for t in tables if (run_dir / f"{t}.parquet").is_file()]
    )
    state = _state(run_dir)
    out = {p.stem: checked_table(p, run_dir, state) for p in paths}
    out.update(
        {
            t: scan(run_dir, t).collect()
            for t in (tables or ())
            if t in PARTED and (run_dir / t).is_dir()
        }
    )
    return out


WEIGHTING = "weighting"  # the column of tables made under each weighting: "attention" or "norm"


def weighting_rows(df: pl.DataFrame, weighting: str = "attention") -> pl.DataFrame:
    """One weighting's rows, without the column; a table without it (exemplars, tokens) as it is."""
    if WEIGHTING not in df.columns:
        return df
    return df.filter(pl.col(WEIGHTING) == weighting).drop(WEIGHTING)


def of_weighting(
    tables: dict[str, pl.DataFrame], weighting: str = "attention"
) -> dict[str, pl.DataFrame]:
    """Every table of a run under one weighting (see weighting_rows): "attention" is the paper's analysis."""
    return {name: weighting_rows(df, weighting) for name, df in tables.items()}


def scan(
    run: str | Path, table: str, data_dir: str | Path = "data", pool: bool = False
) -> pl.LazyFrame:
    """A parted table (sentences, tokens) as one lazy frame over its parts: the sentences of the
    quantitative analysis, and with pool=True also those searched only for exemplars
    (corpus.exemplar_sentences; their sentence ids follow the analysis sample's)."""
    from pipeline.run import parts

    return parts.scan(resolve_run_dir(run, data_dir) / table, pool)


def _state(run_dir: Path) -> dict:
    try:
        state = io.read_json(run_dir / "run.json")
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def writer(state: dict, name: str) -> str | None:
    """The stage whose record in run.json lists the file `name` (relative to the run directory)."""
    return next(
        (
            stage
            for stage, entry in state.get("stages", {}).items()
            if name in entry.get("files", {})
        ),
        None,
    )


def checked_table(path: Path, run_dir: Path, state: dict) -> pl.DataFrame:
    """A table of the run, read only if it is intact (its checksum sidecar) and the very file its stage recorded
    in run.json; otherwise one line naming the file and the stage that rebuilds it."""
    name = str(path.relative_to(run_dir))
    stage = writer(state, name)
    rebuild = (
        f"rerun stage {stage!r} (python -m pipeline run --config CONFIG --stages {stage})"
        if stage
        else "rerun the stage that writes it"
    )
    if not io.verify(path):
        raise PipelineError(
            f"{path} is damaged (missing checksum, or changed since written): {rebuild}"
        )
    recorded = state.get("stages", {}).get(stage, {}).get("files", {}).get(name) if stage else None
    if recorded is not None and recorded != io.recorded_digest(path):
        raise PipelineError(
            f"{path} is not the table stage {stage!r} wrote in this run (another run's, or an older "
            f"one): {rebuild}"
        )
    return read_table(path)


def read_table(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise PipelineError(
            f"{path} is damaged ({str(e).splitlines()[0][:120]}): run the stage that writes it again"
        ) from None


def info(run: str | Path, data_dir: str | Path = "data") -> dict:
    """run.json: config, package versions, model identity, stage timings and counts."""
    return io.read_json(resolve_run_dir(run, data_dir) / "run.json")
