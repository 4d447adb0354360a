"""Parts: how a stage's output is cut into units that are written, resumed and read one at a time.

A parted output is a directory holding `plan.json` (the fingerprint it was made for and a plan id drawn
when the directory was planned: the identity of this run's output), the parts (`part-NNNNN.parquet`,
`.npz`, ...: each written atomically with its checksum), and `meta.json`, written last: the stage
finished. A part made for another fingerprint is never resumed: the directory is emptied first.
Each part is bound to its place: a work unit's stamp (pipeline/run/executor.py) records the plan, the
part's name, its inputs' and its own checksums; meta.json records each part's checksum and sentence-id
range. So a part is read only if it is this run's, this stage's and this part's, intact: a valid part
copied over another with its sidecar is recomputed (resume) or refused (read), never read as data.
Readers take the parts that meta.json lists, one at a time (`part_paths`, `read_part`) or as one lazy
scan (`scan`), so memory is bounded by a part, not by the corpus."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import polars as pl

from pipeline.errors import PipelineError
from pipeline.run import io

POOL = "pool"  # prefix of the exemplar pool's parts: sentences searched for exemplars only (corpus.exemplar_sentences)


def part_name(k: int, suffix: str = ".parquet", prefix: str = "part") -> str:
    return f"{prefix}-{k:05d}{suffix}"


def is_pool(path: Path) -> bool:
    """A part of the exemplar pool, outside the quantitative analysis (section 5.4: exemplars from 100,000
    sentences, statistics from 10,000 of them)."""
    return Path(path).name.startswith(POOL + "-")


def read_plan(directory: Path) -> dict:
    """plan.json of a parted output ({} when missing or damaged): its fingerprint and plan id."""
    path = Path(directory) / "plan.json"
    plan = io.read_json(path) if io.verify(path) else None
    return plan if isinstance(plan, dict) else {}


def sentence_range(path: Path) -> list[int] | None:
    """[first, last] sentence id of a Parquet part, from its footer's statistics (nothing else is read);
    None for other files, parts without a sentence_id column, or empty parts."""
    if Path(path).suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        column = meta.schema.names.index("sentence_id")
        stats = [meta.row_group(g).column(column).statistics for g in range(meta.num_row_groups)]
    except (OSError, ValueError):
        return None
    stats = [st for st in stats if st is not None and st.has_min_max]
    return [min(st.min for st in stats), max(st.max for st in stats)] if stats else None


class PartedOutput:
    """A parted output directory as a stage opens it for writing: emptied unless it was planned for
    this fingerprint (then its verified parts are reused), and never marked finished until `finish`."""

    def __init__(self, directory: Path, fingerprint: str, force: bool = False):
        self.directory, self.fingerprint = Path(directory), fingerprint
        previous = read_plan(self.directory)
        if force or previous.get("fingerprint") != fingerprint or not previous.get("plan"):
            shutil.rmtree(self.directory, ignore_errors=True)
            previous = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.plan = (
            previous.get("plan") or uuid.uuid4().hex
        )  # drawn once per planned directory: this run's output
        self.finished = (
            self._finished_meta()
        )  # all of it was written before, for this plan, and is intact
        if self.finished is None:
            (self.directory / "meta.json").unlink(missing_ok=True)
        io.write_json({"fingerprint": fingerprint, "plan": self.plan}, self.directory / "plan.json")

    def _finished_meta(self) -> dict | None:
        path = self.directory / "meta.json"
        if not io.verify(path):
            return None
        meta = io.read_json(path)
        if meta.get("fingerprint") != self.fingerprint or meta.get("plan") != self.plan:
            return None
        return meta if not misplaced_parts(self.directory, meta) else None

    def path(self, k: int, suffix: str = ".parquet", prefix: str = "part") -> Path:
        return self.directory / part_name(k, suffix, prefix)

    def finish(self, meta: dict) -> None:
        """meta.json, written last: the parts it lists (meta["parts"]), each bound to its checksum and sentence ids."""
        identity = {
            name: {
                "sha256": io.recorded_digest(self.directory / name),
                "sentences": sentence_range(self.directory / name),
            }
            for name in meta.get("parts", ())
        }
        check_ranges(self.directory, meta.get("parts", ()), identity)
        io.write_json(
            {"fingerprint": self.fingerprint, "plan": self.plan, **meta, "identity": identity},
            self.directory / "meta.json",
        )


def check_ranges(directory: Path, names, identity: dict) -> None:
    """The sentence ids of the parts of one kind (analysis parts, exemplar pool parts) ascend without overlap."""
    for pool in (False, True):
        ranges = [
            identity[n]["sentences"]
            for n in names
            if is_pool(Path(n)) == pool and identity[n]["sentences"]
        ]
        if any(a[1] >= b[0] for a, b in zip(ranges, ranges[1:])):
            raise PipelineError(
                f"{directory}: the parts' sentence ids overlap or are out of order ({ranges[:4]}...): "
                "run the stage that writes them again"
            )


def misplaced_parts(directory: Path, meta: dict) -> list[str]:
    """The parts meta.json lists that are missing, damaged, or not the part it recorded under that name
    (another part's or another run's file, copied with its checksum)."""
    identity = meta.get("identity", {})
    bad = []
    for name in meta.get("parts", ()):
        path = Path(directory) / name
        recorded = identity.get(name, {}).get("sha256")
        if recorded is None or io.recorded_digest(path) != recorded or not io.verify(path):
            bad.append(name)
    return bad


def read_meta(directory: Path) -> dict:
    path = Path(directory) / "meta.json"
    if not io.verify(path):
        raise PipelineError(
            f"{path} is missing or damaged: the stage that writes {Path(directory).name}/ has not "
            "finished; run it again"
        )
    return io.read_json(path)


def part_paths(directory: Path) -> list[Path]:
    """The finished parts of a parted output, in order; each checked to be intact and the part meta.json
    recorded under its name, in this directory's plan."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta.get("plan") is None or meta.get("plan") != read_plan(directory).get("plan"):
        raise PipelineError(
            f"{directory}/meta.json does not belong to this output's plan (copied from another run "
            "or written by an older version): run the stage that writes it again"
        )
    bad = misplaced_parts(directory, meta)
    if bad:
        raise PipelineError(
            f"{directory}: part(s) {', '.join(bad[:3])} missing, damaged or not the part written there "
            "(checksum or identity differs); run the stage that writes them again"
        )
    return [directory / name for name in meta["parts"]]


def read_part(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise PipelineError(
            f"{path} is unreadable ({str(e).splitlines()[0][:120]}): "
            "run the stage that writes it again"
        ) from None


def scan(directory: Path, pool: bool = False) -> pl.LazyFrame:
    """The analysis sample's parts (and, with pool=True, the exemplar pool's too) as one lazy frame:
    filters and aggregations stream over the parts."""
    return scan_parts([p for p in part_paths(directory) if pool or not is_pool(p)], directory)


def scan_parts(paths: list[Path], where: Path | None = None) -> pl.LazyFrame:
    """Parts already checked (`part_paths`) as one lazy frame."""
    if not paths:
        raise PipelineError(f"{where or 'the parted output'} has no parts")
    return pl.scan_parquet([str(p) for p in paths])
