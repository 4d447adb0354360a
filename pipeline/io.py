"""Atomic writes: a file is either absent or complete, so a killed run never leaves a half-written
output that a rerun would take as done."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    return _atomic(path, lambda tmp: df.write_parquet(tmp, compression="zstd", statistics=True))


def write_json(obj: Any, path: Path) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

    return _atomic(path, write)


def write_text(text: str, path: Path) -> Path:
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    return _atomic(path, write)


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return _atomic(path, write)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
