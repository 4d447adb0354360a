"""Parts: how a stage's output is cut into units that are written, resumed and read one at a time.

A parted output is a directory holding `plan.json` (the fingerprint it was made for),
the parts (`part-NNNNN.parquet`, `.npz`, ...: each written atomically with its checksum, so present
and verified = done), and `meta.json`, written last: the stage finished. A part made for another
fingerprint is never resumed: the directory is emptied first. Readers take the parts that meta.json
lists, one at a time (`part_paths`, `read_part`) or as one lazy scan (`scan`), so memory is bounded by a part,
not by the corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.errors import PipelineError


POOL = "pool"  # prefix of the exemplar pool's parts: sentences searched for exemplars only (corpus.exemplar_sentences)


def part_name(k: int, suffix: str = ".parquet", prefix: str = "part") -> str:
    return f"{prefix}-{k:05d}{suffix}"


def is_pool(path: Path) -> bool:
    """A part of the exemplar pool, outside the quantitative analysis (section 5.4: exemplars from 100,000
    sentences, statistics from 10,000 of them)."""
    return Path(path).name.startswith(POOL + "-")


class PartedOutput:
    """A parted output directory as a stage opens it for writing: emptied unless it was planned for
    this fingerprint (then its verified parts are reused), and never marked finished until `finish`."""

    def __init__(self, directory: Path, fingerprint: str, force: bool = False):
        self.directory, self.fingerprint = Path(directory), fingerprint
        plan_path = self.directory / "plan.json"
        previous = io.read_json(plan_path) if io.verify(plan_path) else None
        if force or previous is None or previous.get("fingerprint") != fingerprint:
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.finished = self._finished_meta()  # all of it was written before, for this fingerprint, and is intact
        if self.finished is None:
            (self.directory / "meta.json").unlink(missing_ok=True)
        io.write_json({"fingerprint": fingerprint}, plan_path)

    def _finished_meta(self) -> dict | None:
        path = self.directory / "meta.json"
        if not io.verify(path):
            return None
        meta = io.read_json(path)
        ok = meta.get("fingerprint") == self.fingerprint and all(io.verify(self.directory / p) for p in meta.get("parts", ()))
        return meta if ok else None

    def path(self, k: int, suffix: str = ".parquet", prefix: str = "part") -> Path:
        return self.directory / part_name(k, suffix, prefix)

    def finish(self, meta: dict) -> None:
        io.write_json({"fingerprint": self.fingerprint, **meta}, self.directory / "meta.json")


def read_meta(directory: Path) -> dict:
    path = Path(directory) / "meta.json"
    if not io.verify(path):
        raise PipelineError(f"{path} is missing or damaged: the stage that writes {Path(directory).name}/ has not "
                            "finished; run it again")
    return io.read_json(path)


def part_paths(directory: Path) -> list[Path]:
    """The finished parts of a parted output, in order; each checked against its checksum."""
    directory = Path(directory)
    paths = [directory / name for name in read_meta(directory)["parts"]]
    bad = [p.name for p in paths if not io.verify(p)]
    if bad:
        raise PipelineError(f"{directory}: part(s) {', '.join(bad[:3])} missing or damaged since written; "
                            "run the stage that writes them again")
    return paths


def read_part(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise PipelineError(f"{path} is unreadable ({str(e).splitlines()[0][:120]}): "
                            "run the stage that writes it again") from None


def scan(directory: Path, pool: bool = False) -> pl.LazyFrame:
    """The analysis sample's parts (and, with pool=True, the exemplar pool's too) as one lazy frame:
    filters and aggregations stream over the parts."""
    return scan_parts([p for p in part_paths(directory) if pool or not is_pool(p)], directory)


def scan_parts(paths: list[Path], where: Path | None = None) -> pl.LazyFrame:
    """Parts already checked (`part_paths`) as one lazy frame."""
    if not paths:
        raise PipelineError(f"{where or 'the parted output'} has no parts")
    return pl.scan_parquet([str(p) for p in paths])
