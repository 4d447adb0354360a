"""Are two runs' tables equal? Every Parquet table of run A against run B: same tables, same columns
(in any order), same rows (matched on the table's key columns, in any order), floats equal to a
relative tolerance. A table is a file (`NAME.parquet`) or a directory of parts (`NAME/part-*.parquet`),
so runs written before and after the streaming stages compare. Used to show that a restructure leaves every output unchanged.

    python bench/tables_equal.py data/runs/A data/runs/B [--rtol 1e-12]

Prints one line per table (rows, the largest relative difference) and exits 1 on any difference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl


def compare(a: pl.DataFrame, b: pl.DataFrame, rtol: float) -> tuple[bool, str]:
    if set(a.columns) != set(b.columns):
        return (
            False,
            f"columns differ: only in A {sorted(set(a.columns) - set(b.columns))}, only in B {sorted(set(b.columns) - set(a.columns))}",
        )
    if a.height != b.height:
        return False, f"{a.height} vs {b.height} rows"
    keys = [c for c in a.columns if not a[c].dtype.is_float() and a[c].dtype != pl.List(pl.Float64)]
    a, b = a.sort(keys, nulls_last=True), b.sort(keys, nulls_last=True).select(a.columns)
    worst = 0.0
    for c in a.columns:
        x, y = a[c], b[c]
        if x.dtype == pl.List(pl.Float64):
            x, y = x.explode(), y.explode()
        if x.dtype.is_float():
            xv, yv = x.to_numpy().astype(float), y.to_numpy().astype(float)
            if not np.array_equal(np.isnan(xv), np.isnan(yv)):
                return False, f"{c}: NaN in different places"
            ok = ~np.isnan(xv)
            diff = (
                np.abs(xv[ok] - yv[ok]) / np.maximum(np.abs(xv[ok]), 1e-300)
                if ok.any()
                else np.zeros(1)
            )
            worst = max(worst, float(np.max(diff, initial=0.0)))
        elif not x.equals(y):
            return False, f"{c}: values differ"
    return worst <= rtol, f"{a.height} rows, largest relative difference {worst:.2e}"


def table_files(run: Path) -> dict[str, list[Path]]:
    files = {f.stem: [f] for f in run.glob("*.parquet")}
    for name in ("sentences", "tokens"):
        parts = sorted((run / name).glob("part-*.parquet"))
        if parts:
            files[name] = parts
    return files


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--rtol", type=float, default=1e-12)
    args = p.parse_args()
    files_a, files_b = table_files(args.run_a), table_files(args.run_b)
    names = sorted(set(files_a) | set(files_b))
    failed = 0
    for name in names:
        if name not in files_a or name not in files_b:
            print(f"{name:<20} missing in {'A' if name not in files_a else 'B'}")
            failed += 1
            continue
        ok, text = compare(
            pl.read_parquet(files_a[name]), pl.read_parquet(files_b[name]), args.rtol
        )
        failed += not ok
        print(f"{name:<20} {'equal' if ok else 'DIFFERENT'}: {text}")
    print(f"{len(names) - failed} of {len(names)} tables equal (rtol {args.rtol:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
