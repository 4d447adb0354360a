"""The project's modules (pipeline/, stages/) import one another without a cycle. The graph is read from the
import statements of the source (top level and inside functions alike, with `ast`), independently of the
fingerprint code's own reading (pipeline/run/stage.py). A package whose __init__ discovers its modules
(importlib.import_module by name) adds no edge: that is how registries are built, and it is no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")


def module_files() -> dict[str, Path]:
    """{dotted module name: file} of every project module (a package is its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _nearest(name: str, modules: dict) -> str | None:
    """The module a dotted name lives in: itself, or its longest prefix that is a module (a name inside it)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in modules:
            return ".".join(parts[:k])
    return None


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that module `name`'s import statements name, anywhere in its file."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(_nearest(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in (
                node.names
            ):  # `from package import module` names the module, else the module it is from
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else _nearest(base, modules))
    return {m for m in found if m and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, modules) for name in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a → b → … → a) per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return sorted(component)


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    assert sorted(map(tuple, cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}))) == [
        ("a", "b", "a"),
        ("c", "d", "c"),
    ]


def test_the_graph_reads_imports_anywhere_in_a_file_and_relative_ones(tmp_path):
    path = tmp_path / "d.py"
    path.write_text(
        "import os\nimport p.sub\nfrom .b import thing\nfrom .. import a\nfrom p.sub import name\n"
        "def f():\n    from . import c\n    import p.e.attribute\n",
        encoding="utf-8",
    )
    modules = {m: Path() for m in ("p", "p.a", "p.e", "p.sub", "p.sub.b", "p.sub.c")} | {
        "p.sub.d": path
    }
    assert imports_of("p.sub.d", modules) == {"p.sub", "p.sub.b", "p.a", "p.sub.c", "p.e"}


def test_the_project_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycle(s): " + "; ".join(" → ".join(c) for c in found)


def test_the_executor_imports_no_executor_and_models_no_stage_contract():
    graph = import_graph()
    assert "pipeline.run.ray_executor" not in graph["pipeline.run.executor"]
    assert "pipeline.run.stage" not in graph["pipeline.models.loading"]


def test_only_the_runner_and_the_cli_load_stages():
    """A stage module is imported by no module outside stages/; the list of stages (the `stages` package) only
    by what runs or inspects them."""
    loaders = {"pipeline.cli", "pipeline.run.runner", "pipeline.run.status"}
    for name, imported in import_graph().items():
        if name.split(".")[0] == "stages":
            continue
        assert not {m for m in imported if m.startswith("stages.")}, f"{name} imports a stage"
        assert "stages" not in imported or name in loaders, f"{name} imports the list of stages"


def test_the_ray_executor_registers_itself():
    from pipeline.config import ExecutorConfig
    from pipeline.errors import PipelineError
    from pipeline.run import executor

    assert isinstance(executor.make_executor(ExecutorConfig()), executor.LocalExecutor)
    import pipeline.run.runner  # noqa: F401  imports the Ray executor, which registers `ray`
    from pipeline.run.ray_executor import RayExecutor

    assert isinstance(
        executor.make_executor(ExecutorConfig(kind="ray")), RayExecutor
    )  # Ray starts at run()
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(executor.EXECUTORS, "ray")
        with pytest.raises(PipelineError, match="executor.kind 'ray' has no executor registered"):
            executor.make_executor(ExecutorConfig(kind="ray"))
