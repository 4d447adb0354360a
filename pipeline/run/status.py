"""`python -m pipeline status`: for each stage, up to date or stale, and why (which config key, input file,
module of its code, version or upstream stage changed; never run; outputs missing or changed; running or
interrupted), before a long run. It compares the fingerprint parts the runner kept in run.json
(`stages.<name>.fingerprint_parts`, pipeline/run/stage.py) with the current ones, and checks the outputs as the
runner does (Run.check). It only reads: it takes no lock and writes nothing, so a run in progress is left alone."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config import Config
from pipeline.config import fingerprint as content_hash
from pipeline.run import io
from pipeline.run.lock import holder as lock_holder
from pipeline.run.runner import Run, dependency_graph, stage_fingerprint_parts, stage_fingerprints
from stages import STAGE_NAMES, load_stages

OLDER = "made by an older version of the pipeline: fingerprint differs"


@dataclass(frozen=True)
class StageStatus:
    name: str
    up_to_date: bool
    reasons: tuple[str, ...] = ()  # why it is stale

    def line(self, width: int = 10) -> str:
        verdict = "up to date" if self.up_to_date else "stale"
        return (
            f"{self.name:<{width}} {verdict}{': ' if self.reasons else ''}{'; '.join(self.reasons)}"
        )


def short(value, width: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def flatten(value, prefix: str = "") -> dict:
    """{dotted key: leaf value} of nested dicts (lists are leaves)."""
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


MISSING = object()


def _changed(old: dict, new: dict) -> list[tuple[str, object, object]]:
    return [
        (k, old.get(k, MISSING), new.get(k, MISSING))
        for k in sorted(set(old) | set(new))
        if old.get(k, MISSING) != new.get(k, MISSING)
    ]


def _shown(value) -> str:
    return "(unset)" if value is MISSING else short(value)


def _listed(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def part_changes(recorded: dict, current: dict) -> list[str]:
    """What differs between two fingerprint parts of a stage, one phrase each."""
    reasons = []
    if set(recorded) != set(current):
        reasons.append("made with another fingerprint rule (another version of the pipeline)")
    if recorded.get("version") != current.get("version"):
        reasons.append(f"version bumped {recorded.get('version')} → {current.get('version')}")
    for key, old, new in _changed(
        flatten(recorded.get("config", {})), flatten(current.get("config", {}))
    ):
        reasons.append(f"config {key}: {_shown(old)} → {_shown(new)}")
    for key, old, new in _changed(
        flatten(recorded.get("inputs", {})), flatten(current.get("inputs", {}))
    ):
        name, _, file = key.partition(".")  # {input: {file: [size, SHA-256]}} or {input: identity}
        what = (
            "added"
            if old is MISSING
            else "removed"
            if new is MISSING
            else "missing"
            if new is None
            else "changed"
        )
        if what == "changed" and all(isinstance(v, (str, int)) for v in (old, new)):  # a version
            what = f"version: {short(old)} → {short(new)}"
        reasons.append(f"input {name}{f' ({file})' if file else ''} {what}")
    code = _changed(recorded.get("code", {}), current.get("code", {}))
    for what, test in (
        ("changed", lambda o, n: o is not MISSING and n is not MISSING),
        ("added", lambda o, n: o is MISSING),
        ("removed", lambda o, n: n is MISSING),
    ):
        files = [f for f, o, n in code if test(o, n)]
        if files:
            reasons.append(f"code {what}: {_listed(files)}")
    return reasons


def fingerprint_changes(entry: dict, current: dict) -> list[str]:
    """Why a stage's fingerprint in run.json differs from its current one, from the parts recorded beside it."""
    recorded = entry.get("fingerprint_parts")
    if not isinstance(recorded, dict) or content_hash(recorded) != entry.get("fingerprint"):
        return [OLDER]
    return part_changes(recorded, current) or ["fingerprint differs"]


def stage_statuses(cfg: Config) -> list[StageStatus] | None:
    """Each stage's status, in running order; None when there is no run.json yet."""
    path = cfg.run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        state = io.read_json(path)
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        return [
            StageStatus(name, False, ("run.json is unreadable: every stage runs again",))
            for name in STAGE_NAMES
        ]
    modules = load_stages()
    graph = dependency_graph(modules)
    parts = stage_fingerprint_parts(cfg, modules)
    fingerprints = stage_fingerprints(cfg, parts=parts)
    holder = lock_holder(cfg.run_dir)
    run, out = Run(cfg, state), {}
    for stage in modules:
        name, entry = stage.NAME, state.get("stages", {}).get(stage.NAME)
        stale_upstream = [u for u in graph[name] if not out[u].up_to_date]
        if not entry:
            reasons = ["never run"]
        elif entry.get("status") == "running":
            reasons = [
                f"running now ({holder})"
                if holder
                else "interrupted while running: a rerun resumes it"
            ]
        elif entry.get("fingerprint") != fingerprints[name]:
            reasons = fingerprint_changes(entry, parts[name])
        else:
            why = run.check(stage, fingerprints[name], graph[name])[0]
            reasons = [why] if why else []
            if (
                not why and stale_upstream
            ):  # current, made from files a stale stage is about to write again
                reasons = [
                    f"after {_listed(stale_upstream)} (stale): reruns if "
                    f"{'it writes' if len(stale_upstream) == 1 else 'they write'} other contents"
                ]
        out[name] = StageStatus(name, not reasons, tuple(reasons))
    return list(out.values())


def status_lines(cfg: Config) -> list[str]:
    statuses = stage_statuses(cfg)
    if statuses is None:
        return [f"no run yet: every stage would run ({cfg.run_dir} has no run.json)"]
    holder = lock_holder(cfg.run_dir)
    head = [
        f"run {cfg.run_name} ({cfg.run_dir})"
        + (f": a run is in progress, {holder}" if holder else "")
    ]
    width = max(len(s.name) for s in statuses)
    return head + ["  " + s.line(width) for s in statuses]
