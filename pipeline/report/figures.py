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

from pipeline import io  # noqa: E402
from pipeline.metrics.base import top_row  # noqa: E402

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


def draw_heatmap(ax, values: np.ndarray, title: str = "", vmin=None, vmax=None, colorbar=True, cmap=CMAP, label=""):
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


def head_heatmap(heads: pl.DataFrame, metric: str, title: str, label: str = "", vmin=None, vmax=None) -> plt.Figure:
    values = grid(heads, metric)
    fig, ax = plt.subplots(figsize=_size(*values.shape), layout="constrained")
    draw_heatmap(ax, values, title, vmin=vmin, vmax=vmax, label=label or metric)
    return fig


def tag_small_multiples(pos: pl.DataFrame, direction: str, min_frequency: float = 0.0) -> plt.Figure:
    """One heatmap per tag, each with its own colour scale (Figs. 6/7, A.1/A.2)."""
    d = pos.filter((pl.col("direction") == direction) & ~pl.col("tag").is_in(["BOS"]))
    freq = d.group_by("tag").agg(pl.col("tag_frequency").first()).filter(pl.col("tag_frequency") > min_frequency)
    tags = freq.sort("tag_frequency", descending=True)["tag"].to_list()
    cols = 4
    rows = math.ceil(len(tags) / cols)
    L, H = int(d["layer"].max()) + 1, int(d["head"].max()) + 1
    w, h = _size(L, H, 0.62)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows + 0.6), layout="constrained", squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        values = grid(d.filter(pl.col("tag") == tag), "share")
        draw_heatmap(ax, values, f"{tag} (mean {np.nanmean(values):.3f})")
    for ax in axes.flat[len(tags):]:
        ax.axis("off")
    fig.suptitle(f"Share of attention {'to' if direction == 'to' else 'from'} each part of speech, by layer and head")
    return fig


def dependency_alignment(layers: pl.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * layers.height + 3), 3.8), layout="constrained")
    x = layers["layer"].to_numpy()
    for column, baseline, label, color in (
            ("dep_align_either", "baseline_dep_pair_share", "either is parent", "tab:blue"),
            ("dep_align_attending_parent", "baseline_attending_parent", "attending piece is parent", "tab:green"),
            ("dep_align_receiving_parent", "baseline_receiving_parent", "receiving piece is parent", "tab:purple")):
        ax.plot(x, layers[column], marker="o", ms=3, label=label, color=color)
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
    totals = dep_by_layer.group_by("label").agg(pl.col("share").mean()).filter(~pl.col("label").is_in(["_", ""]))
    others = [lab for lab in totals.sort("share", descending=True, maintain_order=True)["label"].to_list()
              if lab not in DISCUSSED_LABELS][:top]
    labels = [*DISCUSSED_LABELS, *others]
    L = int(dep_by_layer["layer"].max()) + 1
    values = np.zeros((len(labels), L))  # a discussed label the corpus never has is a row of zeros, not dropped
    for k, label in enumerate(labels):
        rows = dep_by_layer.filter(pl.col("label") == label).sort("layer")
        values[k, rows["layer"].to_numpy()] = np.nan_to_num(rows["share"].to_numpy())
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * L + 3), 0.3 * len(labels) + 1.8), layout="constrained")
    im = ax.imshow(values, aspect="auto", cmap=CMAP, interpolation="nearest",
                   norm=matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=max(float(values.max()), 1e-12)))
    ax.set_yticks(range(len(labels)), labels)
    ax.axhline(len(DISCUSSED_LABELS) - 0.5, color="white", lw=1.5)
    ax.set_xticks(_ticks(L))
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label="share of the layer's non-null attention")
    ax.set_title("Attention received by each dependency label, by layer")
    return fig


def distance_by_layer_and_head(heads: pl.DataFrame, layers: pl.DataFrame) -> plt.Figure:
    values = grid(heads, "mean_distance")
    w, h = _size(*values.shape)
    fig, (left, right) = plt.subplots(1, 2, figsize=(w + 4, h), layout="constrained", width_ratios=[max(values.shape[1], 4), 4])
    draw_heatmap(left, values, "by layer and head", label="mean distance (pieces)")
    right.barh(layers["layer"], layers["mean_distance"], color="tab:blue", height=0.8)
    right.set_ylim(layers.height - 0.5, -0.5)  # rows line up with the heatmap's
    right.set_yticks(_ticks(layers.height))
    right.set_xlabel("mean distance (pieces)")
    right.set_ylabel("layer")
    right.set_title("by layer")
    fig.suptitle("Mean attention distance")
    return fig


def _piece_labels(tokens: pl.DataFrame, text: str) -> list[str]:
    return [(text[s:e].strip() or "␣") for s, e in zip(tokens["char_start"], tokens["char_end"])]


HEAD_CARD_PICKS = [("most position-focused (lowest variability)", "variability", False),
                   ("most diffuse (highest entropy)", "mean_entropy", True),
                   ("largest mean distance", "mean_distance", True)]


extreme_head = top_row  # the head with the highest (or lowest) defined value of a metric, or None


def head_card_specs(heads: pl.DataFrame, exemplars: pl.DataFrame) -> list[dict]:
    cards = []
    for why, metric, highest in HEAD_CARD_PICKS:
        row = extreme_head(heads, metric, highest)
        if row is None:
            continue
        top = exemplars.filter((pl.col("layer") == row["layer"]) & (pl.col("head") == row["head"])).sort("rank")
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
    out[p["attending_position"].to_numpy(), p["receiving_position"].to_numpy()] = p["weight"].to_numpy()
    return out


def head_cards(heads: pl.DataFrame, exemplars: pl.DataFrame, tokens: pl.DataFrame, patterns: pl.DataFrame) -> plt.Figure:
    """Fig. 4-style cards: a head's aggregate metrics and its whole attention pattern on its top exemplar
    sentence (rows attend, columns receive), with the pairs in a dependency relation marked and the share
    of the sentence's non-null attention on them (the head's dependency alignment on this sentence)."""
    from matplotlib.colors import PowerNorm

    cards = head_card_specs(heads, exemplars)
    fig, axes = plt.subplots(1, max(len(cards), 1), figsize=(6.2 * max(len(cards), 1), 7.4), layout="constrained",
                             squeeze=False)
    for ax, card in zip(axes[0], cards):
        ex = card["exemplar"]
        sent = tokens.filter(pl.col("sentence_id") == ex["sentence_id"]).sort("position")
        labels, n = _piece_labels(sent, ex["text"]), sent.height
        matrix = pattern_matrix(patterns, card["layer"], card["head"], n)
        related = related_pairs(sent)
        nonnull = np.tril(np.ones((n, n), bool)) & (np.arange(n)[None, :] >= 1) & (np.arange(n)[:, None] >= 1)
        mass = matrix[nonnull].sum()
        on_sentence = matrix[nonnull & related].sum() / mass if mass > 0 else float("nan")
        ax.imshow(matrix, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest")
        ri, rj = np.nonzero(related & nonnull)
        ax.scatter(rj, ri, s=max(2.0, 900 / n ** 1.3), facecolors="none", edgecolors="tab:orange", linewidths=0.8)
        ax.scatter([ex["receiving_position"]], [ex["attending_position"]], marker="s", s=max(6.0, 2500 / n ** 1.3),
                   facecolors="none", edgecolors="tab:red", linewidths=1.2)
        size = max(3.0, min(8.0, 280 / max(n, 1)))
        ax.set_xticks(range(n), labels, rotation=90, fontsize=size)
        ax.set_yticks(range(n), labels, fontsize=size)
        ax.set_xlabel("receiving piece j")
        ax.set_ylabel("attending piece i")
        ax.set_title(f"Layer {card['layer']}, head {card['head']}: {card['why']}\nvariability {card['variability']:.3f}, "
                     f"mean distance {card['mean_distance']:.2f}, entropy {card['mean_entropy']:.2f}\n"
                     f"dependency alignment {card['dep_align_either']:.3f} (corpus), {on_sentence:.3f} (this sentence)",
                     fontsize=9, loc="left")
    return fig


def save(fig: plt.Figure, directory, name: str, formats=("png", "svg")) -> dict[str, str]:
    """Each format written atomically, with the ordinary file mode and a checksum (pipeline/io.py)."""
    paths = {}
    try:
        for fmt in formats:
            path = io.write_with(directory / f"{name}.{fmt}",
                                 lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=130 if fmt == "png" else None, format=fmt))
            paths[fmt] = str(path)
    finally:
        plt.close(fig)
    return paths
