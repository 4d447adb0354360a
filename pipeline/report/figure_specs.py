"""The report's figures: which exist, in which order (the paper's), their titles and captions, and which function
of the figure kit (pipeline/report/figures.py) draws each from which tables. Only the report stage reads this
file, so editing a caption redraws the report and recomputes nothing (pipeline/run/stage.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from pipeline.report.sections import logit_lens_section

# The sources the captions cite.
CITATION = 'nostalgebraist (2020), "interpreting GPT: the logit lens" (LessWrong)'
CLARK = 'Clark et al. (2019), "What Does BERT Look At?", Fig. 2'
KOBAYASHI = 'Kobayashi et al. (2020), "Attention is Not Only a Weight"'


@dataclass(frozen=True)
class FigureSpec:
    """A figure of the report: file stem, title, caption, and how to draw it from the run's tables.

    `draw` names a function of the figure kit (pipeline/report/figures.py), called with the tables
    named in `inputs` and then `options`. A callable (tables → matplotlib Figure) also works, for a figure no
    kit function draws."""

    metric: (
        str | None
    )  # the metric whose figure it is (not drawn when its metric was not computed); None: the run's
    stem: str
    title: str
    caption: str
    draw: str | Callable
    inputs: tuple[str, ...] = ("head_metrics",)
    options: dict = field(default_factory=dict)


# null_attention
_NULL_ATTENTION = (
    FigureSpec(
        "null_attention",
        "fig05_null_attention",
        "Null attention (Fig. 5)",
        "Share of each head's attention that goes to the null pieces — position 0 (the first piece; the BOS token when "
        "one is prepended), or an encoder's [CLS] and [SEP] (attend.null_pieces) — Σ_{j null} α_ij / Σ_j α_ij over the "
        "attending (non-null) pieces of every sentence: Σα_i0 / Σ_j α_ij over i ≥ 1 for a decoder.",
        "head_heatmap",
        options={
            "metric": "null_share",
            "title": "Attention to the first token",
            "label": "null share",
            "vmin": 0,
            "vmax": 1,
        },
    ),
)


# token_share
_TOKEN_SHARE = (
    FigureSpec(
        "token_share",
        "beyond_token_share",
        'Attention to [CLS], [SEP] and ". or ,": weights and norms (beyond the paper)',
        f"Left: after {CLARK}: by layer, the mean attention α that a head gives to each token, averaged over ALL rows of a "
        "sentence (the special pieces' rows included) and then over sentences; the line is the mean over the layer's "
        'heads, the dots the heads. ". or ," is the tokens "." and "," themselves (not the PUNCT tag); [CLS] and '
        "[SEP] (BERT) or BOS (model.bos) are the special pieces. Middle: the same for the absolute norm "
        f'‖α_ij f(x_j)‖ ({KOBAYASHI}, their re-examination of Clark et al.), "all" being the head\'s mean Σ_j ‖α_ij '
        "f(x_j)‖ per row; right: the mean ‖f(x_j)‖ of each token's pieces. Middle and right are absolute norms, not the "
        "pooled ratios of the norm-weighted tables; blank without value norms.",
        "token_share",
        inputs=("token_share",),
    ),
)


# pos_share
_POS_SHARE = (
    FigureSpec(
        "pos_share",
        "fig06_pos_to",
        "Attention to each part of speech (Figs. 6, A.1)",
        "Eq. 3: the share of each head's non-null attention (j ≥ 1; an encoder's: j not [CLS] or [SEP]) received by pieces of the tag. Each heatmap "
        "has its own colour scale; the title gives the tag's mean over heads. A word split into pieces gives its "
        "tag to every piece.",
        "tag_small_multiples",
        ("pos_share",),
        {"direction": "to"},
    ),
    FigureSpec(
        "pos_share",
        "fig07_pos_from",
        "Attention from each part of speech (Figs. 7, A.2)",
        "The 'from' twin of Eq. 3: the share of each head's non-null attention sent by pieces of the tag.",
        "tag_small_multiples",
        ("pos_share",),
        {"direction": "from"},
    ),
)


# dependency_alignment
_DEPENDENCY_ALIGNMENT = (
    FigureSpec(
        "dependency_alignment",
        "fig08_dependency_alignment",
        "Dependency alignment by layer (Fig. 8)",
        "Eq. 4 per layer, from the layer's summed numerators and denominators, for the three formulations; each dashed "
        "line, in its formulation's colour, is its baseline: the share of piece pairs (i ≥ 2, 1 ≤ j < i; an encoder's: "
        "non-null i ≠ j; the diagonal "
        "i = j is left out, as a piece is never related to itself) whose words are related that way. Shaded: the "
        "bootstrap's 95% interval over sentences (attend.bootstrap_replicates).",
        "dependency_alignment",
        inputs=("layer_metrics",),
    ),
)


# dependency_labels
_DEPENDENCY_LABELS = (
    FigureSpec(
        "dependency_labels",
        "fig09_dependency_labels",
        "Attention to dependency labels by layer (Fig. 9)",
        "Share of each layer's non-null attention received by pieces of each dependency label (absolute, on a square-root "
        "colour scale). Above the line: every label section 5.3.2 discusses (subjects: nsubj, nsubjpass, csubj, "
        "csubjpass; aux, cc, det, expl, neg), however rare; below it, the most-attended other labels.",
        "dependency_labels",
        inputs=("dep_share_by_layer",),
    ),
)


# dependency_accuracy
_DEPENDENCY_ACCURACY = (
    FigureSpec(
        "dependency_accuracy",
        "beyond_dependency_accuracy",
        "Dependency accuracy of the best head per relation (Clark et al. 2019, Table 1)",
        "As Clark et al. (2019), Table 1, at the level of words (a word's attention to another word: the sum over that "
        "word's pieces; a word of several pieces attends with the mean of its pieces' rows; null pieces left out). For "
        "the most frequent dependency relations (ROOT left out: no head can predict it), the accuracy of the single best "
        "head over both directions, coloured by its direction: dependent → head, the share of words whose "
        "most-attended-to other word is their head; head → dependent (Clark et al.'s 'head<-dep', the word matrix "
        "transposed), the share of words attended most by their head. Grey: the best fixed offset, 'the head of word d "
        "is the word d + o' for o = −3..+2 (Clark et al.'s baselines), the same o for every word of the relation. n: "
        "the words of the relation. A causal model cannot attend to later words, so a relation whose head usually "
        "follows its dependent scores in the head → dependent direction only; dep_accuracy.parquet has both.",
        "dependency_accuracy",
        inputs=("dep_accuracy",),
    ),
)


# variability
_VARIABILITY = (
    FigureSpec(
        "variability",
        "fig10_variability",
        "Attention variability (Fig. 10)",
        "Eq. 5 over the first N positions of each sentence (footnote 3): mean absolute deviation of α_ij from its corpus "
        "mean ᾱ_ij, scaled to [0, 1]. Low: position-based heads; high: content-dependent heads.",
        "head_heatmap",
        options={"metric": "variability", "title": "Attention variability", "label": "variability"},
    ),
)


# distance
_DISTANCE = (
    FigureSpec(
        "distance",
        "fig11_mean_distance",
        "Mean attention distance (Fig. 11)",
        "Eq. 6: attention-weighted mean of i − j over non-null attention, by layer and head (left) and by layer (right, "
        "with the bootstrap's 95% interval over sentences).",
        "distance_by_layer_and_head",
        inputs=("head_metrics", "layer_metrics"),
    ),
)


# entropy
_ENTROPY = (
    FigureSpec(
        "entropy",
        "fig12_entropy",
        "Attention entropy (Fig. 12)",
        "Eq. 7, footnote 4: entropy of each piece's attention renormalised without the null pieces (position 0; an "
        "encoder's [CLS] and [SEP]), skipping pieces that put more than 90% on them; mean over pieces.",
        "head_heatmap",
        options={
            "metric": "mean_entropy",
            "title": "Mean attention entropy",
            "label": "entropy (nats)",
        },
    ),
)


# exemplars
_EXEMPLARS = (
    FigureSpec(
        "exemplars",
        "fig04_head_cards",
        "Head cards (Fig. 4)",
        "The most position-focused head (lowest variability), the most diffuse (highest entropy) and the one with the "
        "largest mean distance, each with its aggregate metrics and its whole attention pattern on its top exemplar "
        "sentence (rows attend, columns receive; square-root colour scale, so diffuse attention stays visible; column 0 "
        "is the null position). Orange circles: pairs of pieces whose words are in a dependency relation; the head's "
        "dependency alignment is the share of its non-null attention on such pairs, over the corpus and on this "
        "sentence. Red square: the sentence's largest non-null weight, which ranked it.",
        "head_cards",
        inputs=("head_metrics", "exemplars", "tokens", "patterns"),
    ),
)


# positional
_POSITIONAL = (
    FigureSpec(
        "positional",
        "beyond_positional_profile",
        "Positional profile (beyond the paper)",
        "The share of each head's non-null attention (j ≥ 1) at offset d = i − j, for d = 1..D "
        "(attend.positional_offsets, default 20; an encoder's also −1..−D, to the right): Σ α_i,i−d / "
        "Σ_{j ≥ 1} α_ij over attending pieces i ≥ 1 (an encoder: over its non-null pieces). "
        "Left: the mean over the heads of each layer, one line per layer (colour: depth). Right: the largest "
        "share of any head of the layer at each offset; a head fixed on one offset (such as the previous "
        "piece, d = 1) is one bright cell.",
        "positional_profile",
        inputs=("positional_profile",),
    ),
    FigureSpec(
        "positional",
        "beyond_head_roles",
        "Head roles (beyond the paper)",
        "Each head labelled by the first criterion it meets, in this order (thresholds: aggregate.roles, "
        "defaults in brackets): sink, null share ≥ sink_null_share (0.9); positional, one offset i − j takes "
        "≥ positional_share (0.5) of its non-null attention; syntactic, dependency alignment (either "
        "direction) ≥ syntactic_ratio (3) × the share of piece pairs whose words are related; broad, mean "
        "entropy in the upper broad_entropy_quantile (0.75) quantile of all heads; else mixed. "
        "head_roles.parquet has every criterion as its own column. White dots: heads whose null share, pooled "
        "over the corpus, exceeds ε (aggregate.roles.sink_rate_epsilon, 0.3): the pooled sink rate (finding "
        'sink_rate_pooled). The title also gives the sink rate of Gu et al. (2024), "When Attention Sink '
        'Emerges in Language Models", computed per sentence as they do (finding sink_rate, figure '
        "beyond_sink_rate).",
        "head_roles_map",
        inputs=("head_roles",),
    ),
)


# sink_rate
_SINK_RATE = (
    FigureSpec(
        "sink_rate",
        "beyond_sink_rate",
        "Attention sink rate (Gu et al. 2024)",
        'As Gu et al. (2024), "When Attention Sink Emerges in Language Models": on each sentence, a head\'s score is the '
        "attention to the first token (position 0) averaged over all query rows, the first token's own row included; "
        "the head is a sink on that sentence when the score exceeds ε (attend.sink_epsilon, 0.3). Each cell: the share "
        "of sentences on which the head is a sink (sink_frequency). Their sink rate, the mean over heads and sentences, "
        "is the finding sink_rate; the pooled variant in the head roles (white dots) thresholds each head's null share "
        "over the whole corpus instead.",
        "head_heatmap",
        options={
            "metric": "sink_frequency",
            "title": "Share of sentences on which each head is a sink",
            "label": "sink frequency",
            "vmin": 0,
            "vmax": 1,
        },
    ),
)


# logit_lens
_LOGIT_LENS = (
    FigureSpec(
        "logit_lens",
        "beyond_logit_lens",
        "Logit lens by depth (beyond the paper; nostalgebraist 2020)",
        f"After {CITATION}: the residual stream after each block (depth 0: the embeddings, the input of the first "
        "block) decoded through the model's final norm and its own LM head, for every piece whose next piece "
        "is in the sentence. Two ranks are drawn, each named: the rank of the TRUE next piece (ours; blue) and the "
        "rank of the model's FINAL top-1 prediction, the argmax at the last depth (the rank nostalgebraist's essay "
        "plots; orange; 0 at the last depth by definition). Left: the median of each rank (0 = the lens's top "
        "prediction; the axis shows rank + 1 on a log scale; read from a histogram exact below 16 and in bins 19% "
        "wide above, shaded between the bin's edges). Middle: the share of pieces for which each is the lens's top-1 "
        "and among its top-10 predictions. Right: KL(final ‖ depth d) in nats, how far each depth's distribution is "
        "from the model's output. attend.logit_lens_sample decodes a seeded subset of the sentences; n in the title.",
        "logit_lens_by_depth",
        inputs=("logit_lens",),
    ),
    FigureSpec(
        "logit_lens",
        "beyond_logit_lens_pos",
        "Logit lens by part of speech and relation (beyond the paper)",
        f"After {CITATION}; here the rank of the TRUE next piece only (not of the final prediction). Left: the "
        "top-1 share of the logit lens (the share of pieces whose true next piece is its top prediction) at each "
        "depth (rows, 0 = the embeddings at the top) for next pieces of each part of speech (columns, most frequent first; n beside each tag). Right: the "
        "top-1 share by depth for four relations between the current and the next word: the next piece continues "
        "the current word; the next word depends on the current one (the current word is its head); the current "
        "word depends on the next; unrelated.",
        "logit_lens_pos_heatmap",
        inputs=("logit_lens",),
    ),
)


# Drawn from both weightings' tables: the report passes the norm-weighted ones as "norm.<table>".
NORM_FIGURE = FigureSpec(
    None,
    "beyond_norm_weighting",
    "Attention weights vs norm-weighted (Kobayashi et al. 2020)",
    'After Kobayashi et al. (2020), "Attention is Not Only a Weight: Analyzing Transformers with Vector Norms": what head '
    "h adds to piece i for piece j is α_ij f_h(x_j), f_h(x) = (x W_V^h + b_V^h) W_O^h, so the weight that reaches the "
    "residual stream is its norm α_ij ‖f_h(x_j)‖, not α_ij alone. Left: attention weights (the paper's analysis); right: "
    "every share formed the same way from the norm-weighted α_ij ‖f_h(x_j)‖: pooled ratios of norms (a share of the "
    "summed norms), not Kobayashi et al.'s absolute norms, which beyond_token_share draws per token. Top: null share per head, both on one colour "
    "scale. Bottom: the share of non-null attention received by pieces of the most frequent tags, mean over each layer's "
    "heads. Kobayashi et al. found that much of the attention to special and frequent tokens ([CLS], [SEP], punctuation) "
    "goes to value vectors of small norm, so it largely disappears under norm weighting; here the null position and "
    "frequent tags are where to look.",
    "norm_weighting",
    inputs=("head_metrics", "norm.head_metrics", "pos_share", "norm.pos_share"),
)


@dataclass(frozen=True)
class Section:
    """A section of the report page beyond the figures: `render(*tables named in inputs, the metric's status)` → HTML."""

    metric: str
    anchor: str
    render: Callable
    inputs: tuple[str, ...]


SECTIONS = (
    Section("logit_lens", "logit-lens", logit_lens_section, ("logit_lens", "logit_lens_exemplars")),
)

FIGURES: tuple[FigureSpec, ...] = (
    *_NULL_ATTENTION,
    *_TOKEN_SHARE,
    *_POS_SHARE,
    *_DEPENDENCY_ALIGNMENT,
    *_DEPENDENCY_LABELS,
    *_DEPENDENCY_ACCURACY,
    *_VARIABILITY,
    *_DISTANCE,
    *_ENTROPY,
    *_EXEMPLARS,
    *_POSITIONAL,
    *_SINK_RATE,
    *_LOGIT_LENS,
    NORM_FIGURE,
)
