"""Two runs side by side on one page: findings, claims, and every figure."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.errors import PipelineError
from pipeline.report import figure_specs
from pipeline.report.html import embedded_png, escape, page, table
from pipeline.results import load, resolve_run_dir


def compare_runs(run_a: str, run_b: str, out: str | None = None, data_dir: str = "data", reports_dir: str = "reports") -> str:
    dirs = [resolve_run_dir(r, data_dir) for r in (run_a, run_b)]
    names = [d.name for d in dirs]
    figs = [Path(reports_dir) / n / "figures" for n in names]
    for n, f in zip(names, figs):
        if not f.is_dir():
            raise PipelineError(f"no figures for run {n!r} in {f}: run its report stage first")
    tables = [load(d) for d in dirs]
    parts = [f"<h1>{escape(names[0])} vs {escape(names[1])}</h1>"]
    columns = [names[0], names[1] if names[1] != names[0] else names[1] + " (B)"]

    def side_by_side(name: str, key: str, value: str) -> pl.DataFrame:
        a, b = (t[name].select(key, pl.col(value).alias(c)) for t, c in zip(tables, columns))
        return a.join(b, on=key, how="full", coalesce=True, maintain_order="left")

    parts.append("<h2>Findings</h2>" + table(side_by_side("findings", "statistic", "value")))
    if all("claims" in t for t in tables):
        parts.append("<h2>Claims (holds)</h2>" + table(side_by_side("claims", "claim", "holds")))
    for spec in figure_specs():
        cells = []
        for run_name, f in zip(names, figs):
            png = f / f"{spec.stem}.png"
            img = f"<img src='{embedded_png(png)}' alt='{escape(spec.title)}'>" if png.is_file() else "missing"
            cells.append(f"<div><h4>{escape(run_name)}</h4>{img}</div>")
        parts.append(f"<figure><h3>{escape(spec.title)}</h3><div class='grid'>{''.join(cells)}</div>"
                     f"<figcaption>{escape(spec.caption)}</figcaption></figure>")
    target = Path(out) if out else Path(reports_dir) / f"compare-{names[0]}-vs-{names[1]}.html"
    io.write_text(page(f"{names[0]} vs {names[1]}", "".join(parts)), target)
    return str(target)
