"""Figures of the paper's aggregate analysis, drawn from the Parquet tables alone.

Every function returns a matplotlib Figure; heatmaps put layers on the vertical axis (0 at the
top, as the paper) and heads on the horizontal axis, zero-based, and size themselves for any
number of layers and heads (12×12, 30×9, 48×25, ...)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from pipeline.analysis.base import top_row  # noqa: E402
from pipeline.analysis.roles import COLOURS as ROLE_COLOURS  # noqa: E402
from pipeline.analysis.roles import ROLES  # noqa: E402
from pipeline.data.alignment import special_tags  # noqa: E402
from pipeline.run import io  # noqa: E402

CMAP = "viridis"


def grid(df: pl.DataFrame, value: str) -> np.ndarray:
    """[layers, heads] array of `value` from a (layer, head, value) table."""
    L, H = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    out = np.full((L, H), np.nan)
    out[df["layer"].to_numpy(), df["head"].to_numpy()] = df[value].to_numpy()
    return out


def _ticks(n: int) -> np.ndarray:
    step = 1 if n <= 16 else 2 if n <= 32 else math.ceil(n / 16)
    return np.arange(0, n, step)


def draw_heatmap(
    ax,
    values: np.ndarray,
    title: str = "",
    vmin=None,
    vmax=None,
    colorbar=True,
    cmap=CMAP,
    label="",
):
    L, H = values.shape
    im = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks(_ticks(H))
    ax.set_yticks(_ticks(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
    return im


def _size(L: int, H: int, scale=1.0) -> tuple[float, float]:
    return (min(max(2.5 + 0.38 * H, 4.5), 16) * scale, min(max(1.5 + 0.3 * L, 3.5), 14) * scale)


def head_heatmap(
    heads: pl.DataFrame, metric: str, title: str, label: str = "", vmin=None, vmax=None
) -> plt.Figure:
    values = grid(heads, metric)
    fig, ax = plt.subplots(figsize=_size(*values.shape), layout="constrained")
    draw_heatmap(ax, values, title, vmin=vmin, vmax=vmax, label=label or metric)
    return fig


def tag_small_multiples(
    pos: pl.DataFrame, direction: str, min_frequency: float = 0.0
) -> plt.Figure:
    """One heatmap per tag, each with its own colour scale (Figs. 6/7, A.1/A.2)."""
    d = pos.filter((pl.col("direction") == direction) & ~special_tags(pl.col("tag")))
    freq = (
        d.group_by("tag")
        .agg(pl.col("tag_frequency").first())
        .filter(pl.col("tag_frequency") > min_frequency)
    )
    tags = freq.sort("tag_frequency", descending=True)["tag"].to_list()
    cols = 4
    rows = math.ceil(len(tags) / cols)
    L, H = int(d["layer"].max()) + 1, int(d["head"].max()) + 1
    w, h = _size(L, H, 0.62)
    fig, axes = plt.subplots(
        rows, cols, figsize=(w * cols, h * rows + 0.6), layout="constrained", squeeze=False
    )
    for ax, tag in zip(axes.flat, tags):
        values = grid(d.filter(pl.col("tag") == tag), "share")
        draw_heatmap(ax, values, f"{tag} (mean {np.nanmean(values):.3f})")
    for ax in axes.flat[len(tags) :]:
        ax.axis("off")
    fig.suptitle(
        f"Share of attention {'to' if direction == 'to' else 'from'} each part of speech, by layer and head"
    )
    return fig


def _interval(df: pl.DataFrame, column: str) -> tuple:
    """The bootstrap's 95% interval of a column ([low], [high] arrays), or (None, None) without one."""
    low, high = f"{column}_ci_low", f"{column}_ci_high"
    if low not in df.columns or df[low].is_nan().all():
        return None, None
    return df[low].to_numpy(), df[high].to_numpy()


def _interval_band(ax, df: pl.DataFrame, column: str, x, color) -> None:
    low, high = _interval(df, column)
    if low is not None:
        ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)


def dependency_alignment(layers: pl.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * layers.height + 3), 3.8), layout="constrained")
    x = layers["layer"].to_numpy()
    for column, baseline, label, color in (
        ("dep_align_either", "baseline_dep_pair_share", "either is parent", "tab:blue"),
        (
            "dep_align_attending_parent",
            "baseline_attending_parent",
            "attending piece is parent",
            "tab:green",
        ),
        (
            "dep_align_receiving_parent",
            "baseline_receiving_parent",
            "receiving piece is parent",
            "tab:purple",
        ),
    ):
        ax.plot(x, layers[column], marker="o", ms=3, label=label, color=color)
        _interval_band(ax, layers, column, x, color)
        if baseline in layers.columns:
            ax.axhline(layers[baseline][0], color=color, ls="--", lw=1, label=f"baseline: {label}")
    ax.set_xlabel("layer")
    ax.set_ylabel("dependency alignment")
    ax.set_xticks(_ticks(len(x)))
    ax.legend(fontsize=8)
    ax.set_title("Attention aligned with dependency relations, by layer")
    return fig


# The labels section 5.3.2 discusses (subjects deeper; auxiliaries, conjunctions, determiners, expletives and
# negations lower): always drawn, however rare; the most-attended others are added after them.
DISCUSSED_LABELS = ("nsubj", "nsubjpass", "csubj", "csubjpass", "aux", "cc", "det", "expl", "neg")


def dependency_labels(dep_by_layer: pl.DataFrame, top: int = 12) -> plt.Figure:
    """Rows: the discussed labels, then the `top` most-attended others; colour: the absolute share of the layer's
    non-null attention (a square-root scale, so that rare labels stay visible without being rescaled)."""
    totals = (
        dep_by_layer.group_by("label")
        .agg(pl.col("share").mean())
        .filter(~pl.col("label").is_in(["_", ""]))
    )
    others = [
        lab
        for lab in totals.sort("share", descending=True, maintain_order=True)["label"].to_list()
        if lab not in DISCUSSED_LABELS
    ][:top]
    labels = [*DISCUSSED_LABELS, *others]
    L = int(dep_by_layer["layer"].max()) + 1
    values = np.zeros(
        (len(labels), L)
    )  # a discussed label the corpus never has is a row of zeros, not dropped
    for k, label in enumerate(labels):
        rows = dep_by_layer.filter(pl.col("label") == label).sort("layer")
        values[k, rows["layer"].to_numpy()] = np.nan_to_num(rows["share"].to_numpy())
    fig, ax = plt.subplots(
        figsize=(max(5, 0.3 * L + 3), 0.3 * len(labels) + 1.8), layout="constrained"
    )
    im = ax.imshow(
        values,
        aspect="auto",
        cmap=CMAP,
        interpolation="nearest",
        norm=matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=max(float(values.max()), 1e-12)),
    )
    ax.set_yticks(range(len(labels)), labels)
    ax.axhline(len(DISCUSSED_LABELS) - 0.5, color="white", lw=1.5)
    ax.set_xticks(_ticks(L))
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label="share of the layer's non-null attention")
    ax.set_title("Attention received by each dependency label, by layer")
    return fig


def token_share(shares: pl.DataFrame) -> plt.Figure:
    """token_share.parquet: by layer, per token ([CLS], [SEP], BOS, ". or ,", other; "all" for the norms), three panels
    each naming what it shows: Clark et al.'s mean attention α (Fig. 2), Kobayashi et al.'s mean absolute norm ‖α f(x)‖,
    and the mean ‖f(x)‖; lines: the mean over the layer's heads, dots: the heads. A panel without values (no value
    norms in the run) says so."""
    from pipeline.metrics.token_share import ALL

    tokens = [t for t in shares["token"].unique(maintain_order=True).to_list()]
    order = sorted(tokens, key=lambda t: (t == ALL, t == "other", t == ". or ,", t))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
    panels = (
        (
            "mean_attention",
            "attention weight α (Clark et al. 2019, Fig. 2)",
            "mean attention, all rows",
        ),
        (
            "mean_weighted_norm",
            "absolute norm ‖α f(x)‖ (Kobayashi et al. 2020)",
            "mean Σ_j ‖α_ij f(x_j)‖ per row",
        ),
        (
            "mean_value_norm",
            "value norm ‖f(x)‖ (Kobayashi et al. 2020)",
            "mean ‖f(x_j)‖ of the token's pieces",
        ),
    )
    for ax, (column, title, label) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        values = shares.with_columns(pl.col(column).fill_nan(None))
        if values[column].drop_nulls().is_empty():
            ax.axis("off")
            ax.text(
                0.5,
                0.5,
                f"{title}:\nnot computed (no value norms in this run)",
                ha="center",
                va="center",
                fontsize=9,
            )
            continue
        for k, token in enumerate(order):
            if column == "mean_attention" and token == ALL:  # Σ_j α_ij = 1 in every row
                continue
            rows = values.filter(pl.col("token") == token).drop_nulls(column)
            by_layer = rows.group_by("layer").agg(pl.col(column).mean()).sort("layer")
            colour = "k" if token == ALL else plt.get_cmap("tab10")(k % 10)
            ax.scatter(
                rows["layer"].to_numpy(),
                rows[column].cast(pl.Float64).to_numpy(),
                s=6,
                color=colour,
                alpha=0.35,
            )
            ax.plot(
                by_layer["layer"].to_numpy(),
                by_layer[column].cast(pl.Float64).to_numpy(),
                marker="o",
                ms=3,
                color=colour,
                ls="--" if token == ALL else "-",
                label=token,
            )
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if column == "mean_attention":
            ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(
        'Attention to [CLS], [SEP] and the tokens "." and ",": weights (left) and absolute norms (middle, '
        "right), mean over sentences"
    )
    return fig


DIRECTION_NAMES = {"dependent_to_head": "dependent → head", "head_to_dependent": "head → dependent"}
DIRECTION_COLOURS = {"dependent_to_head": "tab:blue", "head_to_dependent": "tab:orange"}


def best_dependency_heads(dep_accuracy: pl.DataFrame) -> pl.DataFrame:
    """Per relation of dep_accuracy.parquet: the (head, direction) with the highest accuracy, as Clark et al.'s Table 1
    picks it over both directions (ties: the lowest layer, then head, then direction), with its n and the baseline."""
    d = dep_accuracy.filter(pl.col("accuracy").is_not_null() & pl.col("accuracy").is_not_nan())
    return (
        d.sort(["accuracy", "layer", "head", "direction"], descending=[True, False, False, False])
        .group_by("relation", maintain_order=True)
        .first()
    )


def offset_name(o: int) -> str:
    """A baseline offset o (Clark et al.'s: the head of word d is the word d + o) as the word it names: d−1, d+2."""
    return f"d{o:+d}".replace("-", "−")


def dependency_accuracy(dep_accuracy: pl.DataFrame, top: int = 20) -> plt.Figure:
    """Clark et al. (2019), Table 1, as bars: for the `top` relations with the most words (ROOT left out, as in their
    table: no head can predict it), the best single head over both directions (wide bar, coloured by its direction)
    and the best fixed-offset baseline (narrow grey bar), most frequent relation at the top."""
    best = best_dependency_heads(
        dep_accuracy.filter(pl.col("relation").str.to_uppercase() != "ROOT")
    )
    rows = best.sort(["n", "relation"], descending=[True, False]).head(top).to_dicts()
    fig, ax = plt.subplots(figsize=(8.5, 0.34 * len(rows) + 1.8), layout="constrained")
    if not rows:
        ax.text(0.5, 0.5, "no dependency cases in this run", ha="center", va="center")
        ax.axis("off")
        return fig
    y = np.arange(len(rows))
    ax.barh(
        y,
        [r["accuracy"] for r in rows],
        height=0.75,
        color=[DIRECTION_COLOURS[r["direction"]] for r in rows],
    )
    ax.barh(y, [r["baseline_accuracy"] for r in rows], height=0.3, color="0.35")
    for k, r in enumerate(rows):
        ax.text(
            min(max(r["accuracy"], r["baseline_accuracy"]), 1.0) + 0.01,
            k,
            f"L{r['layer']} H{r['head']} {DIRECTION_NAMES[r['direction']]}; baseline word "
            f"{offset_name(r['baseline_offset'])}",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(y, [f"{r['relation']}, n={r['n']:,}" for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, 1.55)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel(
        "accuracy: share of words whose head is the predicted word (word-level attention)"
    )
    handles = [
        matplotlib.patches.Patch(color=c, label=f"best head, {DIRECTION_NAMES[d]}")
        for d, c in DIRECTION_COLOURS.items()
    ]
    fig.legend(
        handles=[
            *handles,
            matplotlib.patches.Patch(color="0.35", label="best fixed offset (baseline)"),
        ],
        fontsize=8,
        loc="outside lower center",
        ncols=3,
    )
    ax.set_title(
        "Best single head per dependency relation vs. a fixed offset (after Clark et al. 2019)",
        fontsize=10,
    )
    return fig


def distance_by_layer_and_head(heads: pl.DataFrame, layers: pl.DataFrame) -> plt.Figure:
    values = grid(heads, "mean_distance")
    w, h = _size(*values.shape)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(w + 4, h), layout="constrained", width_ratios=[max(values.shape[1], 4), 4]
    )
    draw_heatmap(left, values, "by layer and head", label="mean distance (pieces)")
    low, high = _interval(layers, "mean_distance")
    error = (
        None
        if low is None
        else np.abs(np.vstack([layers["mean_distance"] - low, high - layers["mean_distance"]]))
    )
    right.barh(
        layers["layer"],
        layers["mean_distance"],
        color="tab:blue",
        height=0.8,
        xerr=error,
        ecolor="black",
        capsize=2,
    )  # the bootstrap's 95% interval, where the run has one
    right.set_ylim(layers.height - 0.5, -0.5)  # rows line up with the heatmap's
    right.set_yticks(_ticks(layers.height))
    right.set_xlabel("mean distance (pieces)")
    right.set_ylabel("layer")
    right.set_title("by layer")
    fig.suptitle("Mean attention distance")
    return fig


def positional_profile(profile: pl.DataFrame) -> plt.Figure:
    """positional_profile.parquet. Left: per layer, the mean over its heads of the share at each offset d = i − j
    (heads without non-null attention left out), one line per layer coloured by depth. Right: layer × offset, the
    largest share of any head of the layer, so that a head fixed on one offset stands out."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    by_layer = (
        profile.with_columns(pl.col("share").fill_nan(None))
        .group_by("layer", "offset")
        .agg(mean=pl.col("share").mean(), peak=pl.col("share").max())
    )
    offsets = np.sort(
        profile["offset"].unique().to_numpy()
    )  # 1..D; an encoder's also −D..−1 (to the right)
    L, D = int(profile["layer"].max()) + 1, len(offsets)
    mean, peak = np.full((L, D), np.nan), np.full((L, D), np.nan)
    at = (by_layer["layer"].to_numpy(), np.searchsorted(offsets, by_layer["offset"].to_numpy()))
    mean[at] = by_layer["mean"].cast(pl.Float64).to_numpy()
    peak[at] = by_layer["peak"].cast(pl.Float64).to_numpy()
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, min(max(3.8, 1.5 + 0.3 * L), 14)), layout="constrained"
    )
    cmap, norm = plt.get_cmap(CMAP), Normalize(0, max(L - 1, 1))
    for layer in range(L):  # a gap at d = 0 between an encoder's two directions
        for side in (s for s in (offsets < 0, offsets > 0) if s.any()):
            left.plot(
                offsets[side],
                mean[layer][side],
                color=cmap(norm(layer)),
                marker="o",
                ms=2.5,
                lw=1.2,
            )
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=left, label="layer", ticks=_ticks(L))
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.set_xlabel("offset d = i − j (pieces)")
    left.set_ylabel("share of non-null attention")
    left.set_title("mean over the heads of each layer")
    im = right.imshow(peak, aspect="auto", cmap=CMAP, vmin=0, interpolation="nearest")
    ticks = _ticks(D)
    right.set_xticks(ticks, [str(offsets[t]) for t in ticks])
    right.set_yticks(_ticks(L))
    right.set_xlabel("offset d = i − j (pieces)")
    right.set_ylabel("layer")
    right.set_title("largest share of any head of the layer")
    fig.colorbar(im, ax=right, label="share of non-null attention")
    fig.suptitle("Positional profile: attention at each offset")
    return fig


def head_roles_map(roles: pl.DataFrame) -> plt.Figure:
    """head_roles.parquet as a layer × head map, one colour per role (pipeline/analysis/roles.py; the legend counts the heads
    of each). White dots: heads whose null share, pooled over the corpus, exceeds ε (above_sink_epsilon). The title
    gives Gu et al. (2024)'s sink rate, per sentence (the mean of sink_frequency over heads), and the dots' share."""
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    names = list(ROLES)
    codes = grid(
        roles.with_columns(
            code=pl.col("role").replace_strict(
                names, list(range(len(names))), default=None, return_dtype=pl.Float64
            )
        ),
        "code",
    )
    L, H = codes.shape
    w, h = _size(L, H)
    fig, ax = plt.subplots(figsize=(w + 2.5, h), layout="constrained")
    draw_heatmap(
        ax,
        codes,
        colorbar=False,
        vmin=-0.5,
        vmax=len(names) - 0.5,
        cmap=ListedColormap([ROLE_COLOURS[n] for n in names]),
    )
    sinks = roles.filter(pl.col("above_sink_epsilon"))
    ax.scatter(
        sinks["head"].to_numpy(),
        sinks["layer"].to_numpy(),
        s=max(4.0, min(30.0, 3000 / (L * H))),
        c="white",
        edgecolors="black",
        linewidths=0.5,
    )
    counts = dict(roles.group_by("role").len().iter_rows())
    handles = [
        Patch(facecolor=ROLE_COLOURS[n], edgecolor="0.5", label=f"{n} ({counts.get(n, 0)})")
        for n in names
    ]
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            markerfacecolor="white",
            markeredgecolor="black",
            label="pooled null\nshare > ε",
        )
    )
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    pooled = sinks.height / roles.height if roles.height else float("nan")
    frequency = (
        roles["sink_frequency"].drop_nans().drop_nulls()
        if "sink_frequency" in roles.columns
        else pl.Series([])
    )
    gu = f"{frequency.mean():.0%}" if frequency.len() else "not computed"
    ax.set_title(
        f"Head roles\nsink rate (Gu et al. 2024, per sentence): {gu}; pooled null share > ε: {pooled:.0%} of heads"
    )
    return fig


def tag_shares_by_layer(pos: pl.DataFrame, direction: str, tags: list[str]) -> np.ndarray:
    """[tags, layers]: each tag's share, the mean over the heads of each layer (heads without non-null attention
    left out)."""
    d = (
        pos.filter((pl.col("direction") == direction) & pl.col("tag").is_in(tags))
        .with_columns(pl.col("share").fill_nan(None))
        .group_by("tag", "layer")
        .agg(pl.col("share").mean())
    )
    L = int(pos["layer"].max()) + 1
    out = np.full((len(tags), L), np.nan)
    for k, tag in enumerate(tags):
        rows = d.filter(pl.col("tag") == tag)
        out[k, rows["layer"].to_numpy()] = rows["share"].cast(pl.Float64).to_numpy()
    return out


def norm_weighting(
    heads: pl.DataFrame,
    norm_heads: pl.DataFrame,
    pos: pl.DataFrame,
    norm_pos: pl.DataFrame,
    top_tags: int = 6,
) -> plt.Figure:
    """Attention weights (left) against norm-weighted attention (right; Kobayashi et al. 2020), from the two
    weightings' head_metrics and pos_share. Top: null share per head, both heatmaps on one colour scale. Bottom: the
    'to' share of the `top_tags` most frequent tags by layer (mean over the layer's heads), both panels on one y scale,
    a tag in the same colour in both."""
    null, norm_null = grid(heads, "null_share"), grid(norm_heads, "null_share")
    vmax = float(np.nanmax([np.nanmax(null), np.nanmax(norm_null), 1e-12]))
    frequency = (
        pos.filter(~special_tags(pl.col("tag")))
        .group_by("tag")
        .agg(pl.col("tag_frequency").first())
    )
    tags = (
        frequency.sort(["tag_frequency", "tag"], descending=[True, False])["tag"]
        .head(top_tags)
        .to_list()
    )
    shares = [tag_shares_by_layer(p, "to", tags) for p in (pos, norm_pos)]
    top = float(
        np.nanmax([np.nanmax(s) if np.isfinite(s).any() else 0.0 for s in shares] + [1e-12])
    )
    w, h = _size(*null.shape)
    fig, axes = plt.subplots(
        2, 2, figsize=(2 * w + 1.5, h + 4.2), layout="constrained", height_ratios=[h, 3.6]
    )
    colours = plt.get_cmap("tab10")
    for column, (name, values, share) in enumerate(
        (
            ("attention weights α_ij", null, shares[0]),
            ("norm-weighted α_ij ‖f(x_j)‖", norm_null, shares[1]),
        )
    ):
        draw_heatmap(
            axes[0, column],
            values,
            f"null share (a pooled ratio), {name}",
            vmin=0,
            vmax=vmax,
            colorbar=column == 1,
            label="null share (one scale for both)",
        )
        ax = axes[1, column]
        for k, tag in enumerate(tags):
            ax.plot(
                np.arange(share.shape[1]),
                share[k],
                marker="o",
                ms=2.5,
                color=colours(k % 10),
                label=tag,
            )
        ax.set_ylim(0, top * 1.05)
        ax.set_xticks(_ticks(share.shape[1]))
        ax.set_xlabel("layer")
        ax.set_ylabel("share of non-null attention")
        ax.set_title(f"'to' share of each tag (a pooled ratio), {name}", fontsize=10)
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        fontsize=8,
        loc="outside lower center",
        ncols=len(tags),
        title="the most frequent tags",
    )
    fig.suptitle(
        "Attention weights vs norm-weighted attention (Kobayashi et al. 2020): shares, i.e. pooled ratios "
        "Σ α'/Σ α' of norms,\nnot their absolute norms ‖α f(x)‖ (those: figure beyond_token_share)"
    )
    return fig


def _piece_labels(tokens: pl.DataFrame, text: str) -> list[str]:
    """Each piece's characters in the sentence; a special piece ([CLS], [SEP], BOS: no characters) by its name."""
    from pipeline.data.alignment import is_special_tag

    pos = tokens["pos"].to_list() if "pos" in tokens.columns else [""] * tokens.height
    return [
        piece if is_special_tag(tag) else (text[s:e].strip() or "␣")
        for s, e, piece, tag in zip(tokens["char_start"], tokens["char_end"], tokens["piece"], pos)
    ]


HEAD_CARD_PICKS = [
    ("most position-focused (lowest variability)", "variability", False),
    ("most diffuse (highest entropy)", "mean_entropy", True),
    ("largest mean distance", "mean_distance", True),
]


extreme_head = top_row  # the head with the highest (or lowest) defined value of a metric, or None


def head_card_specs(heads: pl.DataFrame, exemplars: pl.DataFrame) -> list[dict]:
    cards = []
    for why, metric, highest in HEAD_CARD_PICKS:
        row = extreme_head(heads, metric, highest)
        if row is None:
            continue
        top = exemplars.filter(
            (pl.col("layer") == row["layer"]) & (pl.col("head") == row["head"])
        ).sort("rank")
        if top.height:
            cards.append({**row, "why": why, "exemplar": top.row(0, named=True)})
    return cards


def related_pairs(sent: pl.DataFrame) -> np.ndarray:
    """[n, n] bool: pieces i and j of two different words, one the dependency head of the other (the pairs
    that dependency alignment counts, Eq. 4)."""
    word, head = sent["word_index"].to_numpy(), sent["head_word_index"].to_numpy()
    w_i, w_j = word[:, None], word[None, :]
    real = (w_i >= 0) & (w_j >= 0) & (w_i != w_j)
    return real & ((head[:, None] == w_j) | (head[None, :] == w_i))


def pattern_matrix(patterns: pl.DataFrame, layer: int, head: int, n: int) -> np.ndarray:
    p = patterns.filter((pl.col("layer") == layer) & (pl.col("head") == head))
    out = np.zeros((n, n))
    out[p["attending_position"].to_numpy(), p["receiving_position"].to_numpy()] = p[
        "weight"
    ].to_numpy()
    return out


def nonnull_pairs(sent: pl.DataFrame, causal: bool) -> np.ndarray:
    """[n, n] bool: pairs of non-null pieces (the special pieces when the sentence has any, as attend.null_pieces: auto
    gives for an encoder or a prepended BOS; else position 0), j ≤ i for a causal model."""
    from pipeline.data.alignment import is_special_tag

    n = sent.height
    special = np.array([is_special_tag(t) for t in sent["pos"].to_list()], dtype=bool)
    null = special if special.any() else np.arange(n) == 0
    pairs = ~null[:, None] & ~null[None, :]
    return pairs & np.tril(np.ones((n, n), bool)) if causal else pairs


def head_cards(
    heads: pl.DataFrame, exemplars: pl.DataFrame, tokens: pl.DataFrame, patterns: pl.DataFrame
) -> plt.Figure:
    """Fig. 4-style cards: a head's aggregate metrics and its whole attention pattern on its top exemplar
    sentence (rows attend, columns receive), with the pairs in a dependency relation marked and the share
    of the sentence's non-null attention on them (the head's dependency alignment on this sentence)."""
    from matplotlib.colors import PowerNorm

    cards = head_card_specs(heads, exemplars)
    fig, axes = plt.subplots(
        1,
        max(len(cards), 1),
        figsize=(6.2 * max(len(cards), 1), 7.4),
        layout="constrained",
        squeeze=False,
    )
    for ax, card in zip(axes[0], cards):
        ex = card["exemplar"]
        sent = tokens.filter(pl.col("sentence_id") == ex["sentence_id"]).sort("position")
        labels, n = _piece_labels(sent, ex["text"]), sent.height
        matrix = pattern_matrix(patterns, card["layer"], card["head"], n)
        related = related_pairs(sent)
        nonnull = nonnull_pairs(sent, causal=not np.triu(matrix, 1).any())
        mass = matrix[nonnull].sum()
        on_sentence = matrix[nonnull & related].sum() / mass if mass > 0 else float("nan")
        ax.imshow(
            matrix, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest"
        )
        ri, rj = np.nonzero(related & nonnull)
        ax.scatter(
            rj,
            ri,
            s=max(2.0, 900 / n**1.3),
            facecolors="none",
            edgecolors="tab:orange",
            linewidths=0.8,
        )
        ax.scatter(
            [ex["receiving_position"]],
            [ex["attending_position"]],
            marker="s",
            s=max(6.0, 2500 / n**1.3),
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.2,
        )
        size = max(3.0, min(8.0, 280 / max(n, 1)))
        ax.set_xticks(range(n), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(n), labels, fontsize=size)
        ax.set_xlabel("receiving piece j")
        ax.set_ylabel("attending piece i")
        ax.set_title(
            f"Layer {card['layer']}, head {card['head']}: {card['why']}\nvariability {card['variability']:.3f}, "
            f"mean distance {card['mean_distance']:.2f}, entropy {card['mean_entropy']:.2f}\n"
            f"dependency alignment {card['dep_align_either']:.3f} (corpus), {on_sentence:.3f} (this sentence)",
            fontsize=9,
            loc="left",
        )
    return fig


LENS_RELATIONS = (
    ("same word", "the next piece continues the current word"),
    ("next depends on current", "next word depends on the current"),
    ("current depends on next", "current word depends on the next"),
    ("unrelated", "unrelated"),
)


def _lens_rows(lens: pl.DataFrame, grouping: str) -> pl.DataFrame:
    return lens.filter(pl.col("grouping") == grouping).sort("depth")


def logit_lens_by_depth(lens: pl.DataFrame) -> plt.Figure:
    """logit_lens.parquet, the group "all": by depth (0 = the embeddings), two ranks, each named: of the TRUE next piece
    and of the model's FINAL top-1 prediction (nostalgebraist's rank); their medians (rank + 1 on a log axis, the
    histogram bin's range shaded), their top-1 and top-10 shares, and KL(final ‖ depth)."""
    d = _lens_rows(lens, "all")
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(14, 4.4), layout="constrained")
    if d.is_empty():
        for ax in (left, middle, right):
            ax.axis("off")
        left.text(0.5, 0.5, "no piece was decoded in this run", ha="center", va="center")
        return fig
    depth = d["depth"].to_numpy()
    ranks = (
        ("median_rank", "top1_share", "top10_share", "true next piece", "tab:blue"),
        (
            "final_pred_median_rank",
            "final_pred_top1_share",
            "final_pred_top10_share",
            "final top-1 prediction (nostalgebraist)",
            "tab:orange",
        ),
    )
    for median, top1, top10, name, colour in ranks:
        low, high = d[median].to_numpy() + 1, d[f"{median}_upper"].to_numpy() + 1
        left.fill_between(depth, low, high, color=colour, alpha=0.2, lw=0)
        left.plot(depth, low, marker="o", ms=3, color=colour, label=name)
        middle.plot(
            depth, d[top1].to_numpy(), marker="o", ms=3, color=colour, label=f"{name}: top-1"
        )
        middle.plot(
            depth,
            d[top10].to_numpy(),
            marker="o",
            ms=3,
            color=colour,
            ls="--",
            label=f"{name}: top-10",
        )
    left.set_yscale("log")
    left.set_ylabel("median rank + 1 (log scale)")
    left.set_title(
        "median rank of the true next piece\nand of the final top-1 prediction", fontsize=10
    )
    left.legend(fontsize=7)
    middle.set_ylim(0, 1)
    middle.set_ylabel("share of pieces")
    middle.set_title("among the lens's top predictions", fontsize=10)
    middle.legend(fontsize=7)
    kl = d["mean_kl"].to_numpy()
    right.plot(depth, kl, marker="o", ms=3, color="tab:red")
    right.set_ylabel("mean KL(final ‖ depth), nats")
    right.set_title("distance from the model's output", fontsize=10)
    for ax in (left, middle, right):
        ax.set_xlabel("depth (0 = embeddings, d = output of block d)")
        ax.set_xticks(_ticks(len(depth)))
    fig.suptitle(
        f"Logit lens (nostalgebraist 2020), n = {int(d['n'][0]):,} pieces: ranks of the true next piece (blue) "
        "and of the final top-1 prediction (orange)"
    )
    return fig


def logit_lens_pos_heatmap(lens: pl.DataFrame, top_tags: int = 16) -> plt.Figure:
    """logit_lens.parquet: depth × POS of the next piece's word, the top-1 share (the `top_tags` most frequent tags,
    most frequent first), and the top-1 share by depth for the four kinds of relation between the current and the
    next word (each relation's labels pooled: Σ n·share / Σ n)."""
    pos = _lens_rows(lens, "pos")
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(15, 5.2), layout="constrained", width_ratios=[3, 2]
    )
    if pos.is_empty():
        for ax in (left, right):
            ax.axis("off")
        left.text(0.5, 0.5, "no piece was decoded in this run", ha="center", va="center")
        return fig
    counts = (
        pos.filter(pl.col("depth") == 0)
        .sort(["n", "group"], descending=[True, False])
        .head(top_tags)
    )
    tags, D = counts["group"].to_list(), int(lens["depth"].max()) + 1
    values = np.full((D, len(tags)), np.nan)
    for k, tag in enumerate(tags):
        rows = pos.filter(pl.col("group") == tag)
        values[rows["depth"].to_numpy(), k] = rows["top1_share"].to_numpy()
    im = left.imshow(
        values,
        aspect="auto",
        cmap=CMAP,
        vmin=0,
        vmax=max(float(np.nanmax(values)), 1e-9),
        interpolation="nearest",
    )
    left.set_xticks(
        np.arange(len(tags)),
        [f"{t}\n{n:,}" for t, n in zip(tags, counts["n"].to_list())],
        fontsize=7,
        rotation=90,
    )
    left.set_yticks(_ticks(D))
    left.set_ylabel("depth (0 = embeddings)")
    left.set_xlabel("part of speech of the next piece's word (n pieces)")
    left.set_title("top-1 share of the logit lens (true next piece)")
    fig.colorbar(im, ax=left, label="top-1 share")
    rel = _lens_rows(lens, "relation").with_columns(
        kind=pl.col("group").str.split(":").list.first(), hits=pl.col("n") * pl.col("top1_share")
    )
    pooled = (
        rel.group_by("kind", "depth").agg(pl.col("hits").sum(), pl.col("n").sum()).sort("depth")
    )
    for kind, label in LENS_RELATIONS:
        rows = pooled.filter(pl.col("kind") == kind)
        if rows.height:
            right.plot(
                rows["depth"].to_numpy(),
                (rows["hits"] / rows["n"]).to_numpy(),
                marker="o",
                ms=3,
                label=f"{label} (n = {int(rows['n'][0]):,})",
            )
    right.set_ylim(0, 1)
    right.set_xticks(_ticks(D))
    right.set_xlabel("depth (0 = embeddings)")
    right.set_ylabel("top-1 share")
    right.set_title("by relation between the current and the next word")
    right.legend(fontsize=8)
    fig.suptitle(
        "Logit lens by part of speech and by relation (nostalgebraist 2020): the true next piece's top-1 share"
    )
    return fig


def save(fig: plt.Figure, directory, name: str, formats=("png", "svg")) -> dict[str, str]:
    """Each format written atomically, with the ordinary file mode and a checksum (pipeline/run/io.py)."""
    paths = {}
    try:
        for fmt in formats:
            path = io.write_with(
                directory / f"{name}.{fmt}",
                lambda tmp, fmt=fmt: fig.savefig(
                    tmp, dpi=130 if fmt == "png" else None, format=fmt
                ),
            )
            paths[fmt] = str(path)
    finally:
        plt.close(fig)
    return paths
