"""The analysis parts of the metrics (one module per metric, named like its device part in pipeline/metrics/,
each defining `ANALYSIS`, an instance of `pipeline.analysis.base.Analysis`), and what they share: the bootstrap
(bootstrap.py), head roles (roles.py). The aggregate stage makes the tables from these; the report stage checks
their claims. `analyses()` orders them by `Analysis.order`: the order of head_metrics' columns."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from pipeline.errors import PipelineError


@functools.cache
def analyses() -> tuple:
    """Every metric's analysis part, in column order; each device part has exactly one, and each one a device part."""
    from pipeline.analysis.base import Analysis
    from pipeline.metrics import by_name

    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        analysis = getattr(module, "ANALYSIS", None)
        if isinstance(analysis, Analysis):
            found.append(analysis)
    names, devices = [a.name for a in found], set(by_name())
    if sorted(names) != sorted(devices):
        raise PipelineError(
            f"metrics without an analysis part: {sorted(devices - set(names))}; analysis parts "
            f"without a device part: {sorted(set(names) - devices)}; duplicated: "
            f"{sorted({n for n in names if names.count(n) > 1})}"
        )
    return tuple(sorted(found, key=lambda a: (a.order, a.name)))
