"""How a stage's work units run. A stage that works part by part describes each part as a `WorkUnit`
(the files it reads and writes) and hands the list to an executor with a worker factory: a picklable
callable that builds, once per process, the worker that holds the expensive state (spaCy, the
model). A worker computes a unit, writes its outputs atomically with their checksums, and returns
small counts. A unit is finished when its outputs are all present and verified and its stamp (beside
the first output, written when the unit is done) names this output directory's plan (pipeline/run/parts.py:
this run, this stage's fingerprint), this part, its inputs as they are now and these very outputs (their
checksums): such a unit is skipped, so a killed run resumes where it stopped, a part whose input changed
is made again, and a valid part copied over another with its sidecar (right bytes, wrong place) is made
again and counted as damaged, never read as data. A unit computed twice (a retried worker) writes the same files again, and
the merge reads each unit's files once, so nothing is lost or counted twice.

`LocalExecutor` runs the units one after another in this process. `RayExecutor`
(pipeline/run/ray_executor.py) runs them on a Ray cluster as a Ray Data pipeline of actors; it registers
itself here (`register_executor`) when imported, and the runner imports it: this module imports no executor."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from pipeline.errors import PipelineError
from pipeline.run import io


@dataclass(frozen=True)
class WorkUnit:
    index: int
    inputs: tuple[Path, ...]  # the files it reads (a part of the previous stage)
    outputs: tuple[Path, ...]  # the files it writes
    size: int = 0  # sentences it covers (progress)

    @property
    def stamp_path(self) -> Path:
        return self.outputs[0].parent / f".{self.outputs[0].name}.inputs"

    def input_checksums(self) -> list:
        """The recorded checksums of its inputs (their sidecars: nothing is hashed again)."""
        return [io.recorded_digest(p) for p in self.inputs]

    def identity(self) -> dict:
        """What this unit's outputs must be: made in this plan (run and fingerprint), as this part, from these inputs."""
        from pipeline.run.parts import read_plan

        plan = read_plan(self.outputs[0].parent)
        return {
            "plan": plan.get("plan"),
            "fingerprint": plan.get("fingerprint"),
            "part": self.outputs[0].name,
            "inputs": self.input_checksums(),
        }

    def record(self) -> dict:
        return {**self.identity(), "outputs": {p.name: io.recorded_digest(p) for p in self.outputs}}

    def _stamped(self) -> dict | None:
        try:
            stamp = io.read_json(self.stamp_path)
        except (OSError, ValueError):
            return None
        return stamp if isinstance(stamp, dict) else None

    @functools.cached_property
    def done(self) -> bool:  # checked once: hashing a large result twice is waste
        stamp = self._stamped()
        return (
            stamp is not None
            and stamp.get("plan") is not None
            and stamp == self.record()
            and all(io.verify(p) for p in self.outputs)
        )

    def stamp(self) -> None:
        """Called once the unit's outputs are written: they are this part, made from these inputs, in this plan."""
        io.write_json(self.record(), self.stamp_path, checksum=False)

    @property
    def damaged(self) -> bool:
        """An output is there but fails its checksum, or is intact but not the file this unit stamped (another
        part's or another run's, copied with its sidecar): not merely missing, as after a kill between two writes."""
        if any(p.exists() and not io.verify(p) for p in self.outputs):
            return True
        stamp = self._stamped()
        if stamp is None or not all(p.exists() for p in self.outputs):
            return False
        mine = self.record()
        return (
            stamp.get("part") != mine["part"]
            or stamp.get("plan") != mine["plan"]
            or (stamp.get("inputs") == mine["inputs"] and stamp.get("outputs") != mine["outputs"])
        )


class Worker(Protocol):
    def __call__(self, unit: WorkUnit, progress: Callable[[int], None] | None = None) -> dict: ...


@dataclass(frozen=True)
class Resources:
    """What one worker needs: the Ray executor sizes its actor pool by it; the local one ignores it.
    A model worker holds a copy of the model (one per GPU); the others are CPU workers (one per CPU)."""

    model: bool = False
    gpus: float = 0.0


@dataclass(frozen=True)
class ExecutionReport:
    units: int
    resumed: int
    computed: int
    counts: dict  # {unit index: the counts its worker returned}, this run's units only
    damaged: int = (
        0  # units whose files were there but failed their checksum: recomputed, never read
    )


class Executor(Protocol):
    def run(
        self,
        units: list[WorkUnit],
        make_worker: Callable[[], Worker],
        resources: Resources,
        desc: str = "",
    ) -> ExecutionReport: ...


def pending(units: list[WorkUnit]) -> list[WorkUnit]:
    return [u for u in units if not u.done]


def open_bar(progress_bar: Callable | None, units: list[WorkUnit], todo: list[WorkUnit], desc: str):
    """A bar over the sentences of all units, starting at those of the finished ones; None without a bar."""
    if progress_bar is None:
        return None
    total = sum(u.size for u in units)
    return progress_bar(total, total - sum(u.size for u in todo), desc)


def execution_report(
    units: list[WorkUnit], todo: list[WorkUnit], counts: dict, damaged: int
) -> ExecutionReport:
    return ExecutionReport(
        units=len(units),
        resumed=len(units) - len(todo),
        computed=len(todo),
        counts=counts,
        damaged=damaged,
    )


class LocalExecutor:
    """One worker in this process; units in order; progress reported per batch through the worker."""

    def __init__(self, progress_bar: Callable | None = None):
        self.progress_bar = progress_bar  # (total, initial, desc) → a tqdm-like bar; None: no bar

    def run(self, units, make_worker, resources=Resources(), desc="") -> ExecutionReport:
        todo = pending(units)
        counts, damaged = {}, sum(u.damaged for u in todo)
        if todo:
            worker = make_worker()
            bar = open_bar(self.progress_bar, units, todo, desc)
            try:
                for unit in todo:
                    counts[unit.index] = worker(unit, bar.update if bar else None)
                    unit.stamp()
            finally:
                if bar:
                    bar.close()
        return execution_report(units, todo, counts, damaged)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": lambda cfg, progress_bar: LocalExecutor(progress_bar)
}


def register_executor(kind: str, factory: Callable[..., Executor]) -> None:
    """Make `executor.kind: KIND` build `factory(cfg, progress_bar)`. An executor module registers itself when
    imported (the Ray one: pipeline/run/ray_executor.py, which the runner imports), so that this module, which
    every executor imports, imports none of them."""
    EXECUTORS[kind] = factory


def make_executor(cfg, progress_bar: Callable | None = None) -> Executor:
    """The executor the config names (`executor.kind`): local (the default) or a registered one (ray)."""
    if cfg.kind not in EXECUTORS:
        raise PipelineError(
            f"executor.kind {cfg.kind!r} has no executor registered (known: {', '.join(EXECUTORS)}): "
            f"import its module first (pipeline.run.ray_executor for 'ray'; the runner does)"
        )
    return EXECUTORS[cfg.kind](cfg, progress_bar)


def tqdm_bar(unit: str):
    from tqdm.auto import tqdm

    return lambda total, initial, desc: tqdm(total=total, initial=initial, desc=desc, unit=unit)
