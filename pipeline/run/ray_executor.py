"""The Ray executor (`executor.kind: ray`, the optional extra `.[ray]`): a stage's pending units flow
through a Ray Data pipeline, one unit per batch, into a pool of actors that each build the stage's
worker once (spaCy on CPU actors; one copy of the model per GPU actor) and write the unit's files
themselves (a shared filesystem, as for a local run directory). Rows stream back to the driver as
units finish. Ray restarts an actor that dies and retries its unit; a retried unit writes the same
files again, atomically, so nothing is lost or counted twice. `executor.address` None starts Ray
on this machine; an address names a running cluster (`ray start --head`), and one that does not
answer is a one-line error within `executor.connect_timeout_s`, never a hang."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from typing import Callable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.run.executor import (
    ExecutionReport,
    Resources,
    WorkUnit,
    execution_report,
    open_bar,
    pending,
    register_executor,
)

QUIET = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}


def _check_reachable(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise PipelineError(
            f"executor.address {address!r}: expected host:port (or 'auto', or null for a local Ray)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise PipelineError(
            f"the Ray cluster at {address} does not answer ({e.strerror or e}): start it with "
            f"`ray start --head --port {port}` there, or set executor.address"
        ) from None


@contextlib.contextmanager
def _quiet_native_stderr():
    """Ray's C++ core writes its connection retries straight to file descriptor 2 ("Failed to connect to GCS ...");
    while joining a cluster they go to a discarded temporary file, so that a failure is our one line alone."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def connect(cfg):
    """The ray module, connected to the configured cluster (a Ray already initialised in this process is reused)."""
    for key, value in QUIET.items():  # read when Ray is imported
        os.environ.setdefault(key, value)
    if cfg.address not in (None, "local", "auto"):
        _check_reachable(cfg.address, cfg.connect_timeout_s)  # before anything else: never a hang
        # bound Ray's own retries: a port that answers but is not Ray fails in about connect_timeout_s
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")
        os.environ.setdefault(
            "RAY_py_gcs_connect_timeout_s", str(max(1, int(cfg.connect_timeout_s)))
        )
        os.environ.setdefault(
            "RAY_gcs_rpc_server_connect_timeout_s", str(max(1, int(cfg.connect_timeout_s) // 3))
        )
    try:
        import ray
        import ray.data
    except ImportError:
        raise PipelineError(
            "executor.kind is 'ray' but Ray is not installed: pip install -e '.[ray]'"
        ) from None
    if not ray.is_initialized():
        kwargs = {"log_to_driver": False, "logging_level": "WARNING"}
        try:
            if cfg.address is None or cfg.address == "local":
                ray.init(address="local", include_dashboard=False, **kwargs)
            else:
                with _quiet_native_stderr():
                    ray.init(address=cfg.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise PipelineError(
                f"cannot join the Ray cluster at {cfg.address} within executor.connect_timeout_s "
                f"({cfg.connect_timeout_s:g}s): {str(e).splitlines()[0]}"
            ) from None
        atexit.register(ray.shutdown)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ray


class UnitActor:
    """One actor of the pool: builds the stage's worker once and runs the units it is given. A worker's
    PipelineError (bad input, a model that does not fit) comes back as data, so the driver can say it in
    one line; other errors are Ray's to retry."""

    def __init__(self, make_worker: Callable, units: dict[int, WorkUnit]):
        self.units, self.worker, self.error = units, None, ""
        try:
            self.worker = make_worker()
        except PipelineError as e:
            self.error = str(e)

    def __call__(self, batch: dict) -> dict:
        counts, errors = [], []
        for k in batch["index"]:
            try:
                if self.error:
                    raise PipelineError(self.error)
                counts.append(json.dumps(self.worker(self.units[int(k)])))
                errors.append("")
            except PipelineError as e:
                counts.append("{}")
                errors.append(str(e))
        return {
            "index": batch["index"],
            "counts": np.array(counts, dtype=object),
            "error": np.array(errors, dtype=object),
        }


class RayExecutor:
    def __init__(self, cfg, progress_bar: Callable | None = None):
        self.cfg, self.progress_bar = cfg, progress_bar

    def pool(self, ray, resources: Resources) -> tuple[int, dict]:
        """(actors, what each asks for): CPU workers get one actor and one CPU each (executor.cpu_workers);
        model workers one actor per `gpus_per_worker` GPUs (executor.model_workers), or, on a cluster
        without GPUs (or gpus_per_worker 0), the CPUs shared among them (torch uses them as threads)."""
        cluster = ray.cluster_resources()
        cpus, gpus = max(1, int(cluster.get("CPU", 1))), float(cluster.get("GPU", 0))
        if not resources.model:
            size = cpus if self.cfg.cpu_workers == "auto" else self.cfg.cpu_workers
            return self.feasible(max(1, size), 1, 0, cpus, gpus)
        per_worker = resources.gpus if gpus else 0.0
        auto = int(gpus // per_worker) if per_worker else 1
        size = max(1, auto if self.cfg.model_workers == "auto" else self.cfg.model_workers)
        return self.feasible(
            size, 1 if per_worker else max(1, cpus // size), per_worker, cpus, gpus
        )

    @staticmethod
    def feasible(
        size: int, cpus_each: int, gpus_each: float, cpus: int, gpus: float
    ) -> tuple[int, dict]:
        """A pool the cluster can never place would wait forever: one line instead."""
        if gpus_each > gpus or cpus_each > cpus:
            raise PipelineError(
                f"a Ray actor needs {cpus_each} CPU(s) and {gpus_each:g} GPU(s), but the cluster has "
                f"{cpus} CPU(s) and {gpus:g} GPU(s): lower executor.gpus_per_worker or the worker counts"
            )
        return size, {"num_cpus": cpus_each, **({"num_gpus": gpus_each} if gpus_each else {})}

    def run(self, units, make_worker, resources=Resources(), desc="") -> ExecutionReport:
        todo = pending(units)
        counts: dict[int, dict] = {}
        n_damaged = sum(u.damaged for u in todo)
        if not todo:
            return execution_report(units, todo, counts, n_damaged)
        ray = connect(self.cfg)  # imports ray.data too: ray.data.from_items below

        size, actor_resources = self.pool(ray, resources)
        by_index = {u.index: u for u in todo}
        ds = ray.data.from_items(
            [{"index": u.index} for u in todo], override_num_blocks=len(todo)
        ).map_batches(
            UnitActor,
            batch_size=1,
            batch_format="numpy",
            fn_constructor_args=(make_worker, by_index),
            compute=ray.data.ActorPoolStrategy(size=min(size, len(todo))),
            max_restarts=3,
            max_task_retries=3,
            **actor_resources,
        )  # a unit that kills every actor it meets fails
        bar = open_bar(self.progress_bar, units, todo, f"{desc} (ray, {size} actors)")
        started = time.perf_counter()
        try:
            for row in ds.iter_rows():
                if row["error"]:
                    raise PipelineError(row["error"])
                unit = by_index[int(row["index"])]
                if (
                    unit.index in counts
                ):  # a retried unit reported twice: its files were rewritten, counted once
                    continue
                counts[unit.index] = json.loads(row["counts"])
                unit.stamp()
                if bar:
                    bar.update(unit.size)
        except PipelineError:
            raise
        except Exception as e:  # Ray wraps other errors in its own types: one line, the worker's own if it is there
            text = str(e)
            lines = [
                ln.strip()
                for ln in text.splitlines()
                if ln.strip() and "ray.data" not in ln and "DataContext" not in ln
            ]
            raise PipelineError(
                f"{desc}: a Ray worker failed: {(lines[-1] if lines else type(e).__name__)[:300]}"
            ) from None
        finally:
            if bar:
                bar.close()
        missing = sorted(set(by_index) - set(counts))
        if missing:
            raise PipelineError(
                f"{desc}: Ray returned no result for unit(s) {missing[:5]} after "
                f"{time.perf_counter() - started:.0f}s; rerun to resume"
            )
        return execution_report(units, todo, counts, n_damaged)


register_executor(
    "ray", RayExecutor
)  # `executor.kind: ray` (pipeline/run/executor.py imports no executor)
