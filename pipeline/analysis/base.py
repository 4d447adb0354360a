"""What the analysis part of a metric is (`Analysis`), and what analysis parts share: ratios of sums, findings,
claims and the context claims read.

A metric has two parts. Its device part (pipeline/metrics/<name>.py, `pipeline.metrics.base.DevicePart`)
reduces each batch's attention into sums on the device; the attend stage imports only those. Its analysis part
(pipeline/analysis/<name>.py, `Analysis` below) turns the merged sums into ratio columns, tables and findings (the
aggregate stage) and checks the paper's claims (the report stage). The report's figures are declared apart, in
pipeline/report/figure_specs.py. So an edit to a claim redoes aggregate and report, an edit to a figure only the
report, and an edit to a device part the forward passes and everything after them (pipeline/run/stage.py)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import polars as pl


def ratio(num, den) -> np.ndarray:
    """num / den where den > 0, NaN elsewhere (a head that never attends has no share)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def ranked(df: pl.DataFrame, column: str, descending: bool = True) -> pl.DataFrame:
    """Rows by `column`, leaving out NaN and null: Polars sorts NaN above every number, so a head with
    no non-null attention (a NaN share) would otherwise top a descending ranking."""
    return df.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan()).sort(
        column, descending=descending
    )


def top_row(df: pl.DataFrame, column: str, highest: bool = True) -> dict | None:
    """The row with the highest (or lowest) defined value of `column`; None when it is undefined everywhere."""
    rows = ranked(df, column, descending=highest).head(1).to_dicts()
    return rows[0] if rows else None


def defined(x) -> bool:
    """A number that exists: not None and not NaN (a claim on an undefined number is not applicable)."""
    return x is not None and x == x


def in_band(x, low: float, high: float) -> bool:
    return defined(x) and low <= x <= high


def band(low: float, high: float) -> str:
    """The tolerance column's text for a closed interval."""
    return f"[{low:.3g}, {high:.3g}]"


def layer_names(layers) -> str:
    """{0, 1, 2} → "layers 0-2" (a contiguous span, as first/last/between give)."""
    layers = sorted(layers)
    if not layers:
        return "no layers"
    return f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"


def mean_in_layers(df: pl.DataFrame, column: str, layers) -> float | None:
    """Mean of the defined values of `column` over the rows (heads or layers) of `layers`; None when there are none."""
    d = ranked(df.filter(pl.col("layer").is_in(sorted(layers))), column)
    return float(d[column].mean()) if d.height else None


@dataclass(frozen=True)
class Finding:
    """One number of the paper's section 5.3 (or ours), with the paper's value where it gives one.
    `interval_note` is None where a bootstrap percentile interval is valid for the statistic (a ratio, a mean,
    a correlation); for an extreme over heads or layers (a maximum, an argmax, a count above a threshold) it
    says why the findings table prints none (one of the NO_INTERVAL_* notes below)."""

    statistic: str
    value: float
    p_value: float | None = None
    n: int | None = None
    paper_value: float | None = None
    interval_note: str | None = None


def pearson(
    heads: pl.DataFrame, x: str, y: str, statistic: str, paper_value: float | None = None
) -> Finding:
    from scipy import stats

    d = heads.select(x, y).drop_nulls().drop_nans()
    if d.height >= 3 and d[x].std() > 0 and d[y].std() > 0:
        with (
            warnings.catch_warnings()
        ):  # a column constant up to rounding (a bootstrap replicate of a closed form)
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            r, p = stats.pearsonr(d[x].to_numpy(), d[y].to_numpy())
        return Finding(statistic, float(r), float(p), d.height, paper_value)
    return Finding(statistic, float("nan"), float("nan"), d.height, paper_value)


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper, the criterion that decides whether this run supports it, and the verdict.

    `statement` is the paper's sentence verbatim ("…" marks what is left out; tests/test_claims.py finds it in the
    paper's text) and `source` where it stands (section, page). `holds` judges the sentence as the paper states it:
    the paper's own threshold where it gives one ("over 97%" is ≥ 0.97, "more than double" is > 2×, "all five"), and
    a number it reports within `tolerance` (the band the run's number must lie in, justified where the claim is
    declared; None for a sentence with no number), and, where it makes one, its qualitative point too.
    `direction_holds` judges the qualitative point alone, without the number (a correlation's sign, an ordering,
    a head's rank); None where the sentence has no point apart from its number (57% null attention) or no number
    apart from its point (the top five heads are in the last three layers): there `holds` says it all.

    `interval` is the bootstrap's 95% interval of the run's number (pipeline/analysis/bootstrap.py), given only where a
    percentile interval means something: a smooth statistic (a ratio, a mean or SD over heads, a correlation), or
    one named head's value. `interval_note` says what the interval is of, or why there is none: a maximum,
    minimum, argmax or count over heads or layers, or a rank, has no valid percentile interval (the bootstrap
    distribution of an extreme does not cover it), and tag-level and corpus tables are not bootstrapped."""

    claim: str
    statement: str
    criterion: str
    paper_value: object
    run_value: object
    holds: bool | None
    applicable: bool = True
    tolerance: str | None = None
    direction_holds: bool | None = None
    interval: tuple | None = (
        None  # the bootstrap's 95% interval of the run's number (pipeline/analysis/bootstrap.py)
    )
    paper_number: float | None = (
        None  # the paper's number, where paper_value is text (default: paper_value)
    )
    source: str = ""  # where the sentence stands in the paper: "§5.2.3, p. 5"
    interval_note: str | None = None  # what the interval is of, or why there is none


# interval_note for the kinds of statistic that have no valid percentile interval, or no bootstrap at all
NO_INTERVAL_EXTREME = "no interval: an extreme over heads (a maximum, a count above a threshold) has no valid percentile interval"
NO_INTERVAL_ARGMAX = "no interval: an argmax over layers has no valid percentile interval"
NO_INTERVAL_RANK = "no interval: a ranking of heads has no valid percentile interval"
NO_INTERVAL_TAGS = "no interval: tag-level shares are not bootstrapped"
NO_INTERVAL_CORPUS = "no interval: a property of the corpus and its parse, not of attention"
HEAD_VALUE_INTERVAL = "of the head's value; its rank has no interval"


@dataclass
class ClaimContext:
    """What claims read: the run's tables, findings by name, the model's identity and depth."""

    tables: dict
    model: dict

    def __post_init__(self):
        findings = self.tables["findings"]
        self.f = dict(zip(findings["statistic"], findings["value"]))
        self.p = dict(zip(findings["statistic"], findings["p_value"]))
        bounds = (
            findings.select("statistic", "ci_low", "ci_high").rows()
            if "ci_low" in findings.columns
            else []
        )
        self.intervals = {s: (lo, hi) for s, lo, hi in bounds if defined(lo) and defined(hi)}
        self.L = self.tables["layer_metrics"].height

    @property
    def gpt2_small(self) -> bool:
        return (
            self.model.get("model_type") == "gpt2"
            and self.model.get("num_layers") == 12
            and self.model.get("num_heads") == 12
        )

    def layer(self, statistic: str) -> int | None:
        """A layer-valued finding as an int; None when undefined (every value NaN)."""
        value = self.f.get(statistic)
        return None if value is None or value != value else int(value)

    def corpus(self, statistic: str, key: str = "") -> float | None:
        """A corpus_stats value (pipeline/data/syntax_stats.py); None when the table or the row is absent."""
        stats = self.tables.get("corpus_stats")
        if stats is None or stats.is_empty():
            return None
        row = stats.filter((pl.col("statistic") == statistic) & (pl.col("key") == key))
        return float(row["value"][0]) if row.height else None

    def ci(self, statistic: str) -> tuple | None:
        """The bootstrap interval of a finding; None when the run had no bootstrap."""
        return self.intervals.get(statistic)

    def head_ci(self, head: tuple[int, int], metric: str) -> tuple | None:
        heads = self.tables["head_metrics"]
        if f"{metric}_ci_low" not in heads.columns:
            return None
        row = heads.filter((pl.col("layer") == head[0]) & (pl.col("head") == head[1]))
        bounds = row.select(f"{metric}_ci_low", f"{metric}_ci_high").rows()
        return bounds[0] if bounds and all(defined(b) for b in bounds[0]) else None

    def named_head(
        self,
        claim: str,
        statement: str,
        metric: str,
        head: tuple[int, int],
        paper: str,
        low: float,
        high: float,
        highest: bool = True,
        top: int = 1,
        paper_number: float | None = None,
        source: str = "",
    ) -> "Claim":
        """A claim that the paper's GPT-2 head `head` is the head with the highest (or lowest) `metric` (top=1), or
        among the `top` highest (lowest), with the value the paper gives. holds: its rank and its value in
        [low, high]; direction_holds: its rank alone. Applies to GPT-2 small only; heads whose metric is undefined
        are left out of the ranking (NaN never tops it). The interval is the head's own value's."""
        order = ranked(self.tables["head_metrics"], metric, descending=highest)
        keys = list(zip(order["layer"].to_list(), order["head"].to_list()))
        rank = keys.index(head) + 1 if head in keys else None
        value = order[metric][rank - 1] if rank else None
        run = None
        if keys:
            run = f"({keys[0][0]}, {keys[0][1]}): {order[metric][0]:.3g}"
            if rank != 1:
                exists = (
                    self.tables["head_metrics"]
                    .filter((pl.col("layer") == head[0]) & (pl.col("head") == head[1]))
                    .height
                )
                run += f"; {head}: " + (
                    f"{value:.3g}, rank {rank} of {len(keys)}"
                    if rank
                    else "undefined"
                    if exists
                    else "no such head"
                )
        extreme = "highest" if highest else "lowest"
        where = (
            f"is the head with the {extreme} {metric}"
            if top == 1
            else f"ranks among the {top} {extreme} of {len(keys)} heads by {metric}"
        )
        ranks = rank is not None and rank <= top
        interval = self.head_ci(head, metric)
        return Claim(
            claim,
            statement,
            f"head {head} {where}, and its value lies in the band",
            paper,
            run,
            ranks and in_band(value, low, high),
            self.gpt2_small and bool(keys),
            band(low, high),
            ranks,
            interval,
            paper_number,
            source,
            HEAD_VALUE_INTERVAL if interval else None,
        )

    def last(self, n: int) -> set[int]:
        """The last n of 12 layers, scaled to this model's depth."""
        return set(range(self.L - math.ceil(n * self.L / 12), self.L))

    def first(self, n: int) -> set[int]:
        return set(range(0, math.ceil(n * self.L / 12)))

    def between(self, a: int, b: int) -> set[int]:
        """Layers a..b of 12, scaled to this model's depth so that it starts where first(a) ends (layers 2-4 of 12
        are 4-9 of 24 and 5-12 of 30)."""
        return set(range(math.ceil(a * self.L / 12), math.ceil((b + 1) * self.L / 12)))


class Analysis:
    """The analysis part of the metric whose device part has the same `name`. Everything has a do-nothing
    default: a metric implements what it has. The aggregate stage calls `ratios` (columns of head_metrics and
    layer_metrics), `layer_columns`, `tables` and `findings`; the report stage calls `claims`. Sums are read by
    their full key, `<metric>.<key>` (pipeline/metrics/base.py)."""

    name: str = ""
    order: int = 100  # position of its columns (the paper's figure order)
    columns: tuple[str, ...] = ()  # ratio columns of head_metrics and layer_metrics, from ratios()
    raw_columns: dict[
        str, str
    ] = {}  # head_metrics column → the sum copied into it (for users who re-weight)
    layer_extra_columns: tuple[str, ...] = ()  # further layer_metrics columns, from layer_columns()
    table_schemas: dict[str, dict] = {}  # tables of its own: name → polars schema

    @property
    def device(self):
        """Its device part: whether it was computed under a weighting, and what it requires."""
        from pipeline.metrics import by_name

        return by_name()[self.name]

    @property
    def norm_weighting(self) -> bool:
        return self.device.norm_weighting

    def ratios(self, get) -> dict:
        """{column: array}; get(key) gives a sum per head ([L, H]) or, for layer_metrics, summed over heads ([L])."""
        return {}

    def layer_columns(self, sums) -> dict:
        """{column in layer_extra_columns: [L] array}."""
        return {}

    def tables(self, sums, inputs: dict) -> dict:
        """{table in table_schemas: DataFrame}; inputs: the token and sentence scans, vocabularies, head and layer
        tables (stages/aggregate.py build_tables)."""
        return {}

    def findings(self, heads: pl.DataFrame, layers: pl.DataFrame, sums) -> list[Finding]:
        return []

    def claims(self, c: ClaimContext) -> list[Claim]:
        return []
