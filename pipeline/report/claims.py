"""The quantitative statements of the paper's section 5.3, checked against a run's tables.

Each metric declares the claims about it (pipeline/metrics/); each gives the paper's value, this
run's value, the criterion for "holds" (written out in the table, so a reader can disagree with it),
and whether it applies: claims naming a GPT-2 head (e.g. layer 4, head 11) apply only to GPT-2 small,
and claims of a metric the run did not compute apply to nothing. Depth-relative claims ("the last
three of 12 layers") are scaled to the model's depth: last ⌈3L/12⌉ layers.

Two verdicts (pipeline/metrics/base.py, Claim): `holds` judges the sentence as stated, its numbers read within
the `tolerance` band (a different model, corpus and spaCy version cannot give the paper's exact numbers; each
band is justified where the claim is declared); `direction_holds` judges the sentence's qualitative point alone
(a correlation's sign, an ordering, a head's rank), and is null where the sentence has no such point apart from
its number, or no number apart from its point."""

from __future__ import annotations

import math

import polars as pl

from pipeline.metrics import registry
from pipeline.metrics.base import ClaimContext

# ci_95: the bootstrap's 95% interval of the run's number (attend.bootstrap_replicates); paper_in_ci: whether the
# paper's number lies in it (null where the claim has no single number, or the run no bootstrap).
SCHEMA = {"claim": pl.String, "statement": pl.String, "criterion": pl.String, "tolerance": pl.String,
          "paper_value": pl.String, "run_value": pl.String, "applicable": pl.Boolean, "holds": pl.Boolean,
          "direction_holds": pl.Boolean, "ci_95": pl.String, "paper_in_ci": pl.Boolean}


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _paper_in_interval(c, applicable: bool) -> tuple[str | None, bool | None]:
    number = c.paper_number if c.paper_number is not None else c.paper_value
    if not applicable or c.interval is None or not isinstance(number, (int, float)):
        return None, None
    low, high = c.interval
    return f"[{low:.3g}, {high:.3g}]", bool(low <= number <= high)


def evaluate(tables: dict[str, pl.DataFrame], model: dict, metric_status: dict | None = None) -> pl.DataFrame:
    context = ClaimContext(tables, model)
    rows = []
    for metric in registry():
        computed = metric_status is None or metric_status.get(metric.name, "enabled") == "enabled"
        for c in metric.claims(context):
            applicable = bool(c.applicable) and computed
            rows.append((c.claim, c.statement, c.criterion, c.tolerance, _fmt(c.paper_value), _fmt(c.run_value),
                         applicable, bool(c.holds) if applicable and c.holds is not None else None,
                         bool(c.direction_holds) if applicable and c.direction_holds is not None else None,
                         *_paper_in_interval(c, applicable)))
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")
