"""The device parts of the metrics: one module per metric in this package, each defining `METRIC`, an instance of
`pipeline.metrics.base.DevicePart`. Modules are discovered, so adding a metric is adding a module here, its
analysis part in pipeline/analysis/ and its test. The registry checks at import that every sum has one owner:
two metrics providing the same key, or a metric requiring a key that none provides, is refused."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from pipeline.errors import PipelineError
from pipeline.metrics.base import DevicePart


def check_keys(parts) -> None:
    """One provider per sum key (`<metric>.<key>`), and a provider for every required key."""
    names = [m.name for m in parts]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PipelineError(f"two metrics share the name(s) {duplicated}")
    owner: dict[str, str] = {}
    for m in parts:
        for short in m.provides:
            key = f"{m.name}.{short}"
            if key in owner:
                raise PipelineError(f"sum {key!r} is provided twice, by {owner[key]} and {m.name}")
            owner[key] = m.name
    for m in parts:
        missing = sorted(set(m.requires) - set(owner))
        if missing:
            raise PipelineError(
                f"metric {m.name} requires sum(s) {missing}, which no metric provides"
            )


@functools.cache
def registry() -> tuple[DevicePart, ...]:
    """Every device part, by name (the order of columns and figures is the analysis parts' business)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        metric = getattr(module, "METRIC", None)
        if not isinstance(metric, DevicePart):
            raise PipelineError(
                f"{module.__name__} defines no METRIC (an instance of pipeline.metrics.base.DevicePart)"
            )
        found.append(metric)
    check_keys(found)
    return tuple(sorted(found, key=lambda m: m.name))


def by_name() -> dict[str, DevicePart]:
    return {m.name: m for m in registry()}


NORM_WEIGHTING = "norm_weighting"  # its entry in a run's metric status: not a metric, every metric's second weighting


def weightings(status: dict) -> tuple[str, ...]:
    """The weightings a run's sums hold, from its metric status: attention always, norm when it was computed."""
    return ("attention", "norm") if status.get(NORM_WEIGHTING) == "enabled" else ("attention",)


def status(attend_cfg, adapter=None) -> dict[str, str]:
    """{metric name: "enabled" | "disabled: <why>"} for a run's attend config (and, given it, the loaded model:
    DevicePart.model_reason)."""
    out = {}
    for m in registry():
        reason = m.disabled_reason(attend_cfg)
        if reason is None and adapter is not None:
            reason = m.model_reason(adapter)
        out[m.name] = "enabled" if reason is None else f"disabled: {reason}"
    return out


def enabled(attend_cfg) -> tuple[DevicePart, ...]:
    return tuple(m for m in registry() if m.disabled_reason(attend_cfg) is None)
