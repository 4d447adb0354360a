"""Atomic, checksummed writes: a file is either absent or complete, written with the ordinary mode
(the umask's, not the 0600 of a temporary file), and its SHA-256 recorded beside it (`.NAME.sha256`).
A killed run never leaves a half-written output that a rerun would take as done, and a file changed
or truncated after it was written is detected (`verify`) rather than read as data. A write that
fails (disk full, permission denied) raises one PipelineError naming the path and removes its
temporary file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.errors import PipelineError


def file_mode() -> int:
    """The mode an ordinary open() would give a new file under the current umask: read from /proc where
    it can be, so the process's umask is not changed even for a moment; elsewhere set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0)
        os.umask(mask)
    return 0o666 & ~mask


def sha256(path: Path) -> str:
    """The file's SHA-256, streamed (hashlib.file_digest: about 1 GB/s here)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksum_path(path: Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.sha256"


def _fail(path: Path, e: OSError) -> PipelineError:
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    return PipelineError(f"cannot write {path}: {e.strerror or e}{f' ({name})' if name else ''}")


def _atomic(path: Path, write, checksum: bool = True) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, file_mode())
        digest = sha256(Path(tmp)) if checksum else None
        os.replace(tmp, path)
        if digest:
            _write_small(checksum_path(path), digest + "\n")
    except OSError as e:
        raise _fail(path, e) from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_small(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def recorded_digest(path: Path) -> str | None:
    """The SHA-256 recorded beside `path` when it was written (its sidecar), without hashing the file; None if none."""
    try:
        return checksum_path(path).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def verify(path: Path) -> bool:
    """True when `path` exists and matches the checksum recorded when it was written."""
    recorded = recorded_digest(path)
    if recorded is None or not Path(path).is_file():
        return False
    try:
        return recorded == sha256(path)
    except OSError:
        return False


def files_under(path: Path) -> list[Path]:
    """The data files of an output (the file itself, or every file in the directory), not the sidecars."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() else []


def remove_stale_temporaries(directory: Path, older_than_s: float = 0.0) -> int:
    """Temporary files a killed process left behind (never complete, never read): removed."""
    removed = 0
    if Path(directory).is_dir():
        now = time.time()
        for p in Path(directory).rglob(".*.tmp"):
            try:
                if now - p.stat().st_mtime >= older_than_s:
                    p.unlink()
                    removed += 1
            except OSError:
                pass
    return removed


def write_parquet(df: pl.DataFrame, path: Path) -> Path:
    def write(tmp):
        try:
            df.write_parquet(tmp, compression="zstd", statistics=True)
        except (
            pl.exceptions.PolarsError
        ) as e:  # polars reports I/O failures (disk full, ...) as its own errors
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            raise OSError(int(code[1]), os.strerror(int(code[1]))) from None

    return _atomic(path, write)


def write_json(obj: Any, path: Path, checksum: bool = True) -> Path:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")

    return _atomic(path, write, checksum)


def write_text(text: str, path: Path, checksum: bool = True) -> Path:
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")

    return _atomic(path, write, checksum)


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return _atomic(path, write)


def write_with(path: Path, write) -> Path:
    """Atomic write through a function that writes to a temporary path (matplotlib's savefig, ...)."""
    return _atomic(path, write)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


_DIGESTS: dict[
    tuple, str
] = {}  # (device, inode, size, mtime, ctime) → SHA-256: each file hashed once per process


def file_identity(path: Path) -> list | None:
    """Size and SHA-256 of the content: an edit is seen even when it keeps the size and the modification time
    (an in-place rewrite followed by `touch -r`), and touching a file without changing it redoes nothing. Streamed
    (sha256), once per process and file state. None for a missing file: the stage that reads it reports that in
    one line. Part of the fingerprints of the stages that read files outside the run (corpus, model, tokenizer)."""
    try:
        st = Path(path).stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256(path)
    except OSError:
        return None
    return [st.st_size, _DIGESTS[key]]
