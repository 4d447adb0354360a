"""A uniform, seeded sample of rows from a set of Parquet files that reads only what it needs.

A streaming shuffle only mixes a buffer of the first rows of a few shards, so it is not a sample of
the whole dump. The Parquet footers give the row count of every row group of every file: the sample
is drawn over all rows before any data is read, and then only the row groups that hold chosen rows
are read, with only the needed columns. Rows come out in dump order (file, then row)."""

from __future__ import annotations

import itertools
from typing import IO, Callable, ContextManager, Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq

from pipeline.errors import PipelineError

Opener = Callable[
    [str], ContextManager[IO[bytes]]
]  # path or URL -> binary file (builtin open, fsspec.open)


def first_line(e: Exception) -> str:
    """An exception as one line, for PipelineError messages."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def read_footers(paths: Sequence[str], opener: Opener) -> list[pq.FileMetaData]:
    """Each file's Parquet metadata: its row groups and their row counts, without reading any data."""
    footers = []
    for path in paths:
        try:
            with opener(path) as f:
                footers.append(pq.ParquetFile(f).metadata)
        except Exception as e:  # local, fsspec and hub errors all mean "could not read this file"
            raise PipelineError(
                f"could not read the Parquet footer of {path}: {first_line(e)}"
            ) from None
    return footers


def file_columns(
    path: str, footer: pq.FileMetaData, columns: Sequence[str], optional: Sequence[str]
) -> list[str]:
    """The columns to read from one file: all of `columns` (else a clear error) and those of `optional` it has."""
    names = footer.schema.to_arrow_schema().names
    missing = [c for c in columns if c not in names]
    if missing:
        raise PipelineError(f"{path} has no field {missing[0]!r} (fields: {sorted(names)})")
    return list(columns) + [c for c in optional if c in names and c not in columns]


def row_group_table(
    footers: Sequence[pq.FileMetaData],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row group in dump order: its file, its index in the file, and the global index of its first row."""
    sizes = np.array(
        [m.row_group(i).num_rows for m in footers for i in range(m.num_row_groups)], dtype=np.int64
    )
    files = np.array(
        [k for k, m in enumerate(footers) for _ in range(m.num_row_groups)], dtype=np.int64
    )
    index = np.array([i for m in footers for i in range(m.num_row_groups)], dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    return files, index, starts


def choose_rows(total: int, n: int | None, seed: int) -> np.ndarray:
    """`n` global row indices drawn uniformly without replacement, sorted; all rows when n is None or >= total."""
    if n is None or n >= total:
        return np.arange(total, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)).astype(
        np.int64
    )


def sample_parquet(
    paths: Sequence[str],
    opener: Opener,
    n: int | None,
    seed: int,
    columns: Sequence[str],
    optional: Sequence[str] = (),
    counts: dict | None = None,
) -> tuple[Iterator[dict], dict]:
    """`n` rows (all when None) drawn uniformly over all rows of all `paths`, as dicts of the `columns`
    (required) and the `optional` columns a file has, in dump order. The footers are read here; the
    returned iterator reads the chosen row groups, and `counts` (updated in place) says how many."""
    counts = {} if counts is None else counts
    footers = read_footers(paths, opener)
    cols = [file_columns(p, m, columns, optional) for p, m in zip(paths, footers)]
    files, index, starts = row_group_table(footers)
    total = int(sum(m.num_rows for m in footers))
    rows = choose_rows(total, n, seed)
    groups = np.searchsorted(starts, rows, side="right") - 1  # the row group of each chosen row
    chosen, first = np.unique(groups, return_index=True)
    local_rows = np.split(rows - starts[groups], first[1:])
    counts.update(
        sampling="parquet_metadata",
        files=len(paths),
        total_rows=total,
        row_groups=len(starts),
        sampled_rows=len(rows),
        row_groups_to_read=len(chosen),
        row_groups_read=0,
    )
    plan = [(int(files[g]), int(index[g]), local) for g, local in zip(chosen, local_rows)]
    return _read_rows(paths, opener, footers, cols, plan, counts), counts


def _read_rows(paths, opener, footers, cols, plan, counts) -> Iterator[dict]:
    """The chosen rows, one row group at a time (each file opened once, its footer not read again)."""
    for f, items in itertools.groupby(plan, key=lambda item: item[0]):
        try:
            with opener(paths[f]) as fh:
                parquet = pq.ParquetFile(fh, metadata=footers[f])
                for _, group, local in items:
                    table = parquet.read_row_group(group, columns=cols[f])
                    counts["row_groups_read"] += 1
                    yield from table.take(local).to_pylist()
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(f"could not read {paths[f]}: {first_line(e)}") from None
