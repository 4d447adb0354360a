"""The metric registry: one module per metric in this package, each defining `METRIC`, an instance
of `pipeline.metrics.base.Metric`. Modules are discovered, so adding a metric is adding a module
(and its test); `registry()` orders them by `Metric.order`, which is the order of the columns of
head_metrics and of the report's figures."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from pipeline.errors import PipelineError
from pipeline.metrics.base import Metric


@functools.cache
def registry() -> tuple[Metric, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        metric = getattr(module, "METRIC", None)
        if not isinstance(metric, Metric):
            raise PipelineError(f"{module.__name__} defines no METRIC (an instance of pipeline.metrics.base.Metric)")
        found.append(metric)
    names = [m.name for m in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise PipelineError(f"two metrics share the name(s) {duplicated}")
    return tuple(sorted(found, key=lambda m: (m.order, m.name)))


NORM_WEIGHTING = "norm_weighting"  # its entry in a run's metric status: not a metric, every metric's second weighting


def weightings(status: dict) -> tuple[str, ...]:
    """The weightings a run's sums hold, from its metric status: attention always, norm when it was computed."""
    return ("attention", "norm") if status.get(NORM_WEIGHTING) == "enabled" else ("attention",)


def status(attend_cfg, adapter=None) -> dict[str, str]:
    """{metric name: "enabled" | "disabled: <why>"} for a run's attend config (and, given it, the loaded model:
    Metric.model_reason)."""
    out = {}
    for m in registry():
        reason = m.disabled_reason(attend_cfg)
        if reason is None and adapter is not None:
            reason = m.model_reason(adapter)
        out[m.name] = "enabled" if reason is None else f"disabled: {reason}"
    return out


def enabled(attend_cfg) -> tuple[Metric, ...]:
    return tuple(m for m in registry() if m.disabled_reason(attend_cfg) is None)
