"""What a metric is: one object that says, in one place, how its sums are reduced from a batch's
attention on the device, how its ratios and tables are formed from the merged sums, which
figures draw it, what the paper reports for it, and which of the paper's claims it checks.

Every hook has a do-nothing default, so a metric implements only what it has. The engine calls
the reduction hooks (`pair_features`, `reduce_layer`, `batch_sums`, the optional first pass, and for a
metric that reads the residual stream of the same forward pass, `residual_rows` and `reduce_residuals`);
the aggregate stage calls `ratios`, `layer_columns`, `tables` and `findings`; the report stage
draws `figures` and evaluates `claims`. A metric that cannot be computed under the run's config
(variability with N = 0) says why in `disabled_reason`: its columns are then NaN, its figures are
replaced by that reason, and its claims are not applicable. One that the loaded model cannot give (the logit lens
on a bidirectional model) says why in `model_reason`, which the attend stage records the same way."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import polars as pl


def ratio(num, den) -> np.ndarray:
    """num / den where den > 0, NaN elsewhere (a head that never attends has no share)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def ranked(df: pl.DataFrame, column: str, descending: bool = True) -> pl.DataFrame:
    """Rows by `column`, leaving out NaN and null: Polars sorts NaN above every number, so a head with
    no non-null attention (a NaN share) would otherwise top a descending ranking."""
    return df.filter(pl.col(column).is_not_null() & pl.col(column).is_not_nan()).sort(column, descending=descending)


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


def pearson(heads: pl.DataFrame, x: str, y: str, statistic: str, paper_value: float | None = None) -> Finding:
    from scipy import stats

    d = heads.select(x, y).drop_nulls().drop_nans()
    if d.height >= 3 and d[x].std() > 0 and d[y].std() > 0:
        with warnings.catch_warnings():  # a column constant up to rounding (a bootstrap replicate of a closed form)
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            r, p = stats.pearsonr(d[x].to_numpy(), d[y].to_numpy())
        return Finding(statistic, float(r), float(p), d.height, paper_value)
    return Finding(statistic, float("nan"), float("nan"), d.height, paper_value)


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: file stem, title, caption, and how to draw it from the run's tables.

    `draw` names a function of the figure kit (pipeline/report/figures.py), called with the tables
    named in `inputs` and then `options`; declaring it by name keeps drawing code out of the
    metric's imports, so a change to the figure kit redoes only the report stage, not the forward
    passes (a change to the metric's own module, this spec included, redoes attend too). A callable
    (tables → matplotlib Figure) also works, for a figure no kit function draws."""

    stem: str
    title: str
    caption: str
    draw: str | Callable
    inputs: tuple[str, ...] = ("head_metrics",)
    options: dict = field(default_factory=dict)


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

    `interval` is the bootstrap's 95% interval of the run's number (pipeline/bootstrap.py), given only where a
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
    interval: tuple | None = None        # the bootstrap's 95% interval of the run's number (pipeline/bootstrap.py)
    paper_number: float | None = None    # the paper's number, where paper_value is text (default: paper_value)
    source: str = ""                     # where the sentence stands in the paper: "§5.2.3, p. 5"
    interval_note: str | None = None     # what the interval is of, or why there is none


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
        bounds = findings.select("statistic", "ci_low", "ci_high").rows() if "ci_low" in findings.columns else []
        self.intervals = {s: (lo, hi) for s, lo, hi in bounds if defined(lo) and defined(hi)}
        self.L = self.tables["layer_metrics"].height

    @property
    def gpt2_small(self) -> bool:
        return self.model.get("model_type") == "gpt2" and self.model.get("num_layers") == 12 and self.model.get("num_heads") == 12

    def layer(self, statistic: str) -> int | None:
        """A layer-valued finding as an int; None when undefined (every value NaN)."""
        value = self.f.get(statistic)
        return None if value is None or value != value else int(value)

    def corpus(self, statistic: str, key: str = "") -> float | None:
        """A corpus_stats value (pipeline/syntax_stats.py); None when the table or the row is absent."""
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

    def named_head(self, claim: str, statement: str, metric: str, head: tuple[int, int], paper: str,
                   low: float, high: float, highest: bool = True, top: int = 1,
                   paper_number: float | None = None, source: str = "") -> "Claim":
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
                exists = self.tables["head_metrics"].filter((pl.col("layer") == head[0]) & (pl.col("head") == head[1])).height
                run += f"; {head}: " + (f"{value:.3g}, rank {rank} of {len(keys)}" if rank else "undefined" if exists else "no such head")
        extreme = "highest" if highest else "lowest"
        where = f"is the head with the {extreme} {metric}" if top == 1 else f"ranks among the {top} {extreme} of {len(keys)} heads by {metric}"
        ranks = rank is not None and rank <= top
        interval = self.head_ci(head, metric)
        return Claim(claim, statement, f"head {head} {where}, and its value lies in the band", paper, run,
                     ranks and in_band(value, low, high), self.gpt2_small and bool(keys), band(low, high), ranks,
                     interval, paper_number, source, HEAD_VALUE_INTERVAL if interval else None)

    def last(self, n: int) -> set[int]:
        """The last n of 12 layers, scaled to this model's depth."""
        return set(range(self.L - math.ceil(n * self.L / 12), self.L))

    def first(self, n: int) -> set[int]:
        return set(range(0, math.ceil(n * self.L / 12)))

    def between(self, a: int, b: int) -> set[int]:
        """Layers a..b of 12, scaled to this model's depth so that it starts where first(a) ends (layers 2-4 of 12
        are 4-9 of 24 and 5-12 of 30)."""
        return set(range(math.ceil(a * self.L / 12), math.ceil((b + 1) * self.L / 12)))


class Metric:
    name: str = ""
    order: int = 100              # position of its columns and figures (the paper's figure order)
    description: str = ""
    columns: tuple[str, ...] = ()        # ratio columns of head_metrics and layer_metrics
    raw_columns: tuple[str, ...] = ()    # sums copied into head_metrics (for users who re-weight)
    layer_extra_columns: tuple[str, ...] = ()  # further layer_metrics columns, from layer_columns()
    table_schemas: dict[str, dict] = {}  # extra tables it writes: name → polars schema
    figures: tuple[FigureSpec, ...] = ()
    norm_weighting: bool = True          # also reduced on norm-weighted attention α_ij·‖f_h(x_j)‖ (sums norm.<key>)
    wants_residuals: bool = False        # reads the residual stream of the same forward pass (reduce_residuals)

    def disabled_reason(self, attend_cfg) -> str | None:
        return None

    def model_reason(self, adapter) -> str | None:
        """Why the loaded model cannot give this metric (a property of the model, not of the config: the attend stage
        asks where the model is at hand and records it in the metric status), or None."""
        return None

    # ---- reduction on the device (pipeline/engine.py) ----
    def pair_features(self, batch) -> dict:
        """{sum key: [B, T, T] weight per pair}: the engine adds Σ α_ij·w_ij per head in one matmul for all metrics."""
        return {}

    def reduce_layer(self, layer) -> dict:
        """{sum key: [B, H, ...] tensor per sentence} from one layer's attention (an engine.LayerView); the engine
        adds them over the batch, and gives a head-level sum ([B, H]) its bootstrap replicates. Under norm weighting
        the view holds α'_ij = α_ij n_j, whose rows do not sum to 1: a metric reads weights, never assumes they are
        probabilities (layer.null_row_share is the share of position 0 in a row under either weighting)."""
        return {}

    def batch_sums(self, batch) -> dict:
        """{sum key: [B, ...] tensor per sentence} that do not depend on attention (pair counts)."""
        return {}

    def first_pass_positions(self, attend_cfg) -> int:
        """> 0: the metric needs a first pass over the first N pieces of every sentence."""
        return 0

    def first_pass_layer(self, layer) -> dict:
        return {}

    def first_pass_batch(self, batch) -> dict:
        return {}

    def first_pass_result(self, sums) -> dict:
        """Merged first-pass sums → arrays the main pass reads as `layer.first_pass[name]`."""
        return {}

    def residual_rows(self, batch):
        """wants_residuals: [B, T] bool, the pieces whose residual stream the engine keeps during the forward pass."""
        return None

    def reduce_residuals(self, batch, rows, residuals: list, adapter):
        """wants_residuals: after the forward pass, the residual stream of the pieces `rows` ([B, T] bool, from
        residual_rows) at every depth d = 0..L (0: the input of the first block, d ≥ 1: the output of block d), each
        [N, D] in the order of rows.nonzero() → a Sums of this batch (additive sums over the batch, and ranked
        candidates; neither gets bootstrap replicates)."""
        raise NotImplementedError

    # ---- tables (stages/aggregate.py) ----
    def ratios(self, get) -> dict:
        """{column: array}; get(key) gives a sum per head ([L, H]) or, for layer_metrics, summed over heads ([L])."""
        return {}

    def layer_columns(self, sums) -> dict:
        """{column in layer_extra_columns: [L] array}."""
        return {}

    def tables(self, sums, inputs: dict) -> dict:
        return {}

    def findings(self, heads: pl.DataFrame, layers: pl.DataFrame, sums) -> list[Finding]:
        return []

    # ---- the paper's claims (stages/report.py) ----
    def claims(self, c: ClaimContext) -> list[Claim]:
        return []
