"""How a stage's work units run. A stage that splits its work (attend: shards of sentences) describes
each unit and hands the list to an executor, with a function that computes a unit and one that
writes its result. A unit whose result file exists and matches its checksum is finished and skipped, so a killed run resumes
where it stopped and no unit is counted twice. `LocalExecutor` runs the units one after another in
this process; a distributed executor implements the same `run`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline import io


@dataclass(frozen=True)
class WorkUnit:
    index: int
    rows: np.ndarray   # what the unit covers (attend: rows of the token arrays)
    path: Path         # its result; present and matching its recorded checksum = done

    @functools.cached_property
    def done(self) -> bool:  # checked once: hashing a large result twice is waste
        return io.verify(self.path)


@dataclass(frozen=True)
class ExecutionReport:
    units: int
    resumed: int
    computed: int


class LocalExecutor:
    def run(self, units: list[WorkUnit], compute: Callable[[WorkUnit], Any],
            write: Callable[[WorkUnit, Any], None]) -> ExecutionReport:
        todo = [u for u in units if not u.done]
        for unit in todo:
            write(unit, compute(unit))
        return ExecutionReport(units=len(units), resumed=len(units) - len(todo), computed=len(todo))
