"""Presenting a run: the figure kit (figures), the HTML kit (html), the claims check (claims), and
two runs side by side (compare). Which figures and claims exist is declared by the metrics; the one
figure that sets the two weightings side by side (NORM_FIGURE) is declared here."""

from pipeline.metrics import registry
from pipeline.metrics.base import FigureSpec

# Drawn from both weightings' tables: the report passes the norm-weighted ones as "norm.<table>".
NORM_FIGURE = FigureSpec(
    "beyond_norm_weighting", "Attention weights vs norm-weighted (Kobayashi et al. 2020)",
    "After Kobayashi et al. (2020), \"Attention is Not Only a Weight: Analyzing Transformers with Vector Norms\": what head "
    "h adds to piece i for piece j is α_ij f_h(x_j), f_h(x) = (x W_V^h + b_V^h) W_O^h, so the weight that reaches the "
    "residual stream is its norm α_ij ‖f_h(x_j)‖, not α_ij alone. Left: attention weights (the paper's analysis); right: "
    "every share formed the same way from the norm-weighted α_ij ‖f_h(x_j)‖: pooled ratios of norms (a share of the "
    "summed norms), not Kobayashi et al.'s absolute norms, which beyond_token_share draws per token. Top: null share per head, both on one colour "
    "scale. Bottom: the share of non-null attention received by pieces of the most frequent tags, mean over each layer's "
    "heads. Kobayashi et al. found that much of the attention to special and frequent tokens ([CLS], [SEP], punctuation) "
    "goes to value vectors of small norm, so it largely disappears under norm weighting; here the null position and "
    "frequent tags are where to look.", "norm_weighting",
    inputs=("head_metrics", "norm.head_metrics", "pos_share", "norm.pos_share"))


def figure_specs() -> list:
    """Every metric's figures, in registry order (the paper's figure order), then the weightings side by side."""
    return [spec for m in registry() for spec in m.figures] + [NORM_FIGURE]
