"""Stage contracts: what a stage is, what it may read and write, and its fingerprint.

A stage is a module in `stages/` with
  NAME      its name (the list of stages is `stages.STAGE_NAMES`, in running order)
  VERSION   bumped when the meaning of its outputs changes without its code changing (e.g. data rules)
  INPUTS    files it reads, each written by an earlier stage: the runner builds the dependency graph from them
  OUTPUTS   `Output`s it writes (run directory, or report directory), with a polars schema checked on write
  CONFIG    dotted config fields it reads; `ctx.cfg` exposes only these (plus run_name and paths)
  TUNING    (optional) fields it also reads that change speed, not results (batch sizes, workers)
  external_inputs(cfg) -> dict  (optional) identity of files outside the run it reads (size, SHA-256)
  run(ctx) -> counts, and optionally summary(counts) -> str.

The fingerprint rule (this module, nowhere else): a stage's fingerprint hashes NAME, VERSION, the values of
CONFIG, the identity of its external inputs and its code. The runner redoes a stage when its fingerprint
changed or when the files it reads (INPUTS) differ from those it last ran on, by the checksums their stage
recorded: so a change redoes the stage it concerns, and a stage after it only if that stage's outputs change
(an edit to a claim reruns aggregate, whose tables come out the same, and not patterns). Its code is
every project module it imports, transitively (imports inside functions count), with the packages around
them, except the modules in NOT_CODE: how stages are run (pipeline/run/: runner, executors, lock, I/O), the
config's schema (its values are hashed instead) and the error type, which decide where, when and whether
outputs are written, never what they hold. A module counts by its syntax tree without docstrings: editing a
comment, a docstring or the layout (`make format`) redoes nothing.
So the forward pass (stages/attend.py) hashes the device parts of the metrics (pipeline/metrics/), the
aggregate stage the analysis (pipeline/analysis/), and only the report stage the figures and claims.
`fingerprint_parts` gives the pieces, per file, so that `python -m pipeline status` can say which changed."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import polars as pl

from pipeline.config import fingerprint as content_hash
from pipeline.errors import PipelineError
from pipeline.run import io

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("pipeline", "stages")
# Never part of a stage's code (module docstring). pipeline/run/parts.py is not among them: which parts hold the
# exemplar pool decides which sentences a stage reads.
NOT_CODE = (
    "pipeline.run.runner",
    "pipeline.run.status",
    "pipeline.run.stage",
    "pipeline.run.executor",
    "pipeline.run.ray_executor",
    "pipeline.run.lock",
    "pipeline.run.io",
    "pipeline.config",
    "pipeline.errors",
)
ALWAYS_READABLE = ("run_name", "data_dir", "reports_dir")


@dataclass(frozen=True)
class Output:
    name: str  # path relative to the run (or report) directory
    schema: dict | Callable | None = (
        None  # polars schema (or a function returning one), checked on write
    )
    root: Literal["run", "report"] = "run"

    def resolved_schema(self) -> dict | None:
        return self.schema() if callable(self.schema) else self.schema


def within(name: str, declared: str) -> bool:
    """A file at or under a declared input or output (a directory's declared name covers its parts)."""
    return name == declared or name.startswith(declared.rstrip("/") + "/")


def check_schema(df: pl.DataFrame, schema: dict, name: str) -> None:
    got = dict(df.schema)
    if list(got) != list(schema) or any(got[c] != t for c, t in schema.items()):
        diff = [
            f"{c}: {got.get(c)} (expected {schema.get(c)})"
            for c in dict.fromkeys([*schema, *got])
            if got.get(c) != schema.get(c)
        ]
        raise PipelineError(
            f"{name} does not match its declared schema: {'; '.join(diff) or 'column order differs'}"
        )


# ---- code fingerprints ----


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError, AttributeError):  # a name inside a module, not a module
        return None
    origin = Path(spec.origin) if spec and spec.origin else None
    return origin if origin and origin.suffix == ".py" and ROOT in origin.parents else None


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _all_imports(path: Path) -> set[str]:
    tree = _tree(path)
    return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
    }


def _imported_modules(path: Path, package: str) -> set[str]:
    """Project modules named by the import statements of one file (anywhere in it: lazy imports count)."""
    names = set()
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in PROJECT_PACKAGES:
                continue
            for alias in (
                node.names
            ):  # `from pkg import module` names the module; `from module import name`, the module
                sub = f"{base}.{alias.name}"
                names.add(sub if _module_file(sub) else base)
    return {n for n in names if n.split(".")[0] in PROJECT_PACKAGES}


def is_machinery(module: str) -> bool:
    """A module of NOT_CODE (or inside one of its packages): how stages run, not what they compute."""
    return any(module == m or module.startswith(m + ".") for m in NOT_CODE)


@functools.cache
def code_files(module: str) -> tuple[Path, ...]:
    """The files of `module` and of every project module it imports, transitively (imports inside functions
    count). Importing a package counts as importing what its __init__ imports, and all of its modules when
    the __init__ discovers them with pkgutil (as the metric registry does)."""
    seen: dict[str, Path] = {}
    around: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None or is_machinery(name):
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = _imported_modules(path, package)
        todo.extend(imported)
        parts = name.split(
            "."
        )  # the packages around it: Python runs their __init__ first (its own code; what
        for k in range(1, len(parts)):  # it imports for others to import is theirs)
            ancestor = ".".join(parts[:k])
            if (init := _module_file(ancestor)) is not None and not is_machinery(ancestor):
                around.add(init)
        if path.name == "__init__.py" and "pkgutil" in _all_imports(
            path
        ):  # it discovers its modules
            todo.extend(
                f"{name}.{p.stem}" for p in path.parent.glob("*.py") if p.stem != "__init__"
            )
    return tuple(sorted(set(seen.values()) | around))


def code_digest(path: Path) -> str:
    """SHA-256 of a module's syntax tree without its docstrings: what it does, not how it reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def code_digests(module: str) -> dict[str, str]:
    """{file relative to the project: digest of its code (code_digest)} for every file of `module`'s code."""
    return {str(path.relative_to(ROOT)): code_digest(path) for path in code_files(module)}


# ---- config seen by a stage ----


def config_value(cfg, path: str):
    value = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


class ConfigView:
    """The config as one stage may see it: the fields it declares in CONFIG, nothing else, so that its
    fingerprint covers everything it reads."""

    def __init__(self, cfg, allowed: tuple[str, ...], stage: str, prefix: str = ""):
        self._cfg, self._allowed, self._stage, self._prefix = cfg, allowed, stage, prefix

    def __getattr__(self, name: str):
        if name.startswith(
            "_"
        ):  # private and dunder lookups (pickle's __setstate__) are not config
            raise AttributeError(name)
        path = f"{self._prefix}{name}"
        value = getattr(self._cfg, name)
        if path in self._allowed or (not self._prefix and name in ALWAYS_READABLE):
            return value
        if any(a.startswith(path + ".") for a in self._allowed):
            return ConfigView(value, self._allowed, self._stage, path + ".")
        raise PipelineError(
            f"stage {self._stage!r} reads config {path!r} without declaring it in its CONFIG"
        )


def stage_config(stage, cfg) -> dict:
    """The values a stage's fingerprint covers: its CONFIG, less its TUNING fields."""
    tuning = tuple(getattr(stage, "TUNING", ()))
    out = {}
    for path in stage.CONFIG:
        value = _jsonable(config_value(cfg, path))
        for t in tuning:
            if t.startswith(path + ".") and isinstance(value, dict):
                node = value
                parts = t[len(path) + 1 :].split(".")
                for part in parts[:-1]:
                    node = node.get(part, {})
                node.pop(parts[-1], None)
        out[path] = value
    return out


def _jsonable(value):
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


# ---- what a stage sees while it runs ----


@dataclass
class StageContext:
    stage: object
    cfg: ConfigView
    run_dir: Path
    report_dir: Path
    cache_dir: Path  # shared across runs (the spaCy parse cache)
    fingerprint: str  # what its parts are made for: its fingerprint and the files it reads (runner)
    force: bool = False
    record: Callable = lambda key, value: None  # provenance into run.json
    state: dict = field(default_factory=dict)  # run.json as it stands (read-only use)

    def output_path(self, name: str) -> Path:
        output = self._output(name)
        return (self.report_dir if output.root == "report" else self.run_dir) / name

    def _output(self, name: str) -> Output:
        for o in self.stage.OUTPUTS:
            if within(name, o.name):
                return o
        raise PipelineError(
            f"stage {self.stage.NAME!r} writes {name!r} without declaring it in its OUTPUTS"
        )

    def input_path(self, name: str) -> Path:
        if not any(within(name, i) for i in self.stage.INPUTS):
            raise PipelineError(
                f"stage {self.stage.NAME!r} reads {name!r} without declaring it in its INPUTS"
            )
        return self.run_dir / name

    def read_parquet(self, name: str) -> pl.DataFrame:
        path = self.input_path(name)
        if not path.is_file():
            raise PipelineError(f"missing input {path}: run the stage that writes it first")
        from pipeline.results import read_table

        return read_table(path)

    def write_parquet(self, df: pl.DataFrame, name: str) -> Path:
        schema = self._output(name).resolved_schema()
        if schema is not None:
            check_schema(df, schema, name)
        return io.write_parquet(df, self.output_path(name))


def fingerprint_parts(stage, cfg) -> dict:
    """What a stage's fingerprint hashes, by name: the runner keeps it in run.json, and `pipeline status` compares
    it with the current one to say why a stage is stale (which config key, input file or module changed)."""
    external = getattr(stage, "external_inputs", None)
    return {
        "stage": stage.NAME,
        "version": stage.VERSION,
        "code": code_digests(stage.__name__),
        "config": stage_config(stage, cfg),
        "inputs": external(cfg) if external else {},
    }


def stage_fingerprint(stage, cfg) -> str:
    return content_hash(fingerprint_parts(stage, cfg))
