"""Small synthetic result tables with known values, for report and claims tests."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.analysis.dependency_accuracy import SCHEMA as DEP_ACCURACY_SCHEMA
from pipeline.analysis.roles import head_roles
from pipeline.config import RolesConfig
from pipeline.run import io
from pipeline.run.parts import PartedOutput, part_name

TAGS = ["NOUN", "PROPN", "DET", "PUNCT", "VERB"]


def tables(L: int = 12, H: int = 12, seed: int = 0) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    layer, head = layer.ravel().astype(np.int32), head.ravel().astype(np.int32)
    distance = (
        2 + layer * 0.5 + 6 * rng.random(L * H)
    )  # grows with depth, and varies within a layer
    heads = pl.DataFrame(
        {
            "layer": layer,
            "head": head,
            "null_share": (layer * H + head) / (L * H),
            "dep_align_attending_parent": 0.1 + 0.01 * rng.random(L * H),
            "dep_align_receiving_parent": 0.1 + 0.01 * rng.random(L * H),
            "dep_align_either": 0.5 - 0.02 * distance,
            "variability": 0.05 + 0.3 * rng.random(L * H),
            "mean_distance": distance,
            "mean_entropy": 0.2 * distance + 0.1 * rng.random(L * H),
            "mass": np.full(L * H, 100.0),
            "mass_all": np.full(L * H, 200.0),
            "mass_null": np.full(L * H, 100.0),
            "entropy_rows": np.full(L * H, 50.0),
            "entropy_skipped": np.zeros(L * H),
            "var_abs_dev": np.ones(L * H),
            "var_mass": np.ones(L * H),
            "sink_frequency": (layer * H + head) / (L * H),
        }
    )
    layers = (
        heads.group_by("layer")
        .agg(pl.col(c).mean() for c in heads.columns if c not in ("layer", "head"))
        .sort("layer")
    )
    layers = layers.with_columns(
        baseline_attending_parent=pl.lit(0.04),
        baseline_receiving_parent=pl.lit(0.06),
        baseline_dep_pair_share=pl.lit(0.1),
    )
    pos_rows = []
    for direction in ("to", "from"):
        share = rng.random((L * H, len(TAGS)))
        share /= share.sum(1, keepdims=True)
        for k, tag in enumerate(TAGS):
            pos_rows.append(
                pl.DataFrame(
                    {
                        "layer": layer,
                        "head": head,
                        "direction": direction,
                        "tag": tag,
                        "share": share[:, k],
                        "tag_frequency": 1 / len(TAGS),
                    }
                )
            )
    pos = pl.concat(pos_rows)
    # Fig. 9: subjects rise with depth, the low-layer labels fall; no csubj/csubjpass (a label the parser never produced)
    depth = np.arange(L) / max(L - 1, 1)
    trend = {
        "nsubj": (0.10, 0.10),
        "nsubjpass": (0.01, 0.01),
        "aux": (0.05, -0.02),
        "cc": (0.03, -0.01),
        "det": (0.15, -0.08),
        "expl": (0.004, -0.002),
        "neg": (0.006, -0.003),
        "punct": (0.2, 0.0),
    }
    dep_share = {label: a + b * depth for label, (a, b) in trend.items()}
    dep_share["_"] = 1 - sum(dep_share.values())
    dep_layer = pl.DataFrame(
        {
            "layer": np.repeat(np.arange(L, dtype=np.int32), len(dep_share)),
            "label": list(dep_share) * L,
            "share": np.stack(list(dep_share.values()), 1).ravel(),
        }
    )
    text = "The cat sat on the mat."
    tokens = pl.DataFrame(
        {
            "sentence_id": [0] * 6,
            "position": list(range(6)),
            "piece": ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat."],
            "char_start": [0, 3, 7, 11, 14, 18],
            "char_end": [3, 7, 11, 14, 18, 23],
            "pos": ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN"],
            "word_index": list(range(6)),
            "head_word_index": [1, 2, 2, 2, 5, 3],
        }
    )
    ex = pl.DataFrame(
        {
            "layer": layer,
            "head": head,
            "rank": np.zeros(L * H, dtype=np.int32),
            "sentence_id": np.zeros(L * H, dtype=np.int64),
            "weight": np.full(L * H, 0.9),
            "attending_position": np.full(L * H, 5),
            "receiving_position": np.full(L * H, 1),
            "attending_piece": "Ġmat.",
            "receiving_piece": "Ġcat",
            "attending_char_start": 18,
            "attending_char_end": 23,
            "receiving_char_start": 3,
            "receiving_char_end": 7,
            "attention_row": [[0.05, 0.9, 0.01, 0.01, 0.01, 0.02]] * (L * H),
            "text": text,
            "n_pieces": 6,
        }
    )
    findings = pl.DataFrame(
        {
            "statistic": [
                "null_share_overall",
                "null_share_mean",
                "null_share_max",
                "sd_mean_distance",
                "max_mean_distance",
                "r_distance_entropy",
                "r_distance_dep_align",
                "layer_max_dep_align",
                "layer_max_mean_distance",
                "baseline_dep_pair_share",
            ],
            "value": [0.5, 0.5, 0.99, 3.0, 9.0, 0.7, -0.8, 4.0, 11.0, 0.1],
            "p_value": [None, None, None, None, None, 1e-6, 1e-6, None, None, None],
        }
    )
    probability = [
        0.4,
        0.2,
        0.12,
        0.09,
        0.07,
        0.055,
        0.045,
        0.035,
        0.027,
        0.02,
        0.016,
        0.013,
        0.011,
        0.009,
        0.007,
        0.006,
        0.005,
        0.004,
    ]
    paper = {"1": 0.42, "5": 0.07, "10": 0.02}
    stats = pl.DataFrame(
        {
            "statistic": ["dependency_probability_at_distance"] * 18
            + ["mean_dependency_distance", "share_dependencies_within_18", "mean_sentence_pieces"],
            "key": [str(d) for d in range(1, 19)] + ["", "", ""],
            "value": [*probability, 3.9, 0.997, 27.0],
            "paper_value": [paper.get(str(d)) for d in range(1, 19)] + [3.89, 0.998, 27.7],
        }
    )
    # Positional profile (pipeline/metrics/positional.py): shares decreasing with the offset, and head roles from them
    profile = rng.random((L * H, 20)) / np.arange(1, 21) ** 2
    profile *= 0.9 / profile.sum(1, keepdims=True)
    positional = pl.DataFrame(
        {
            "layer": np.repeat(layer, 20),
            "head": np.repeat(head, 20),
            "offset": np.tile(np.arange(1, 21, dtype=np.int32), L * H),
            "share": profile.ravel(),
        }
    )
    roles = head_roles(
        heads.with_columns(
            max_offset_share=pl.Series(profile.max(1)),
            argmax_offset=pl.Series(profile.argmax(1) + 1.0),
        ),
        layers,
        RolesConfig(),
    )
    return {
        "head_metrics": heads,
        "layer_metrics": layers,
        "pos_share": pos,
        "dep_share_by_layer": dep_layer,
        "positional_profile": positional,
        "head_roles": roles,
        "dep_accuracy": dep_accuracy(L, H),
        "exemplars": ex,
        "findings": findings,
        "tokens": tokens,
        "corpus_stats": stats,
        "dep_share": pl.DataFrame({"layer": [0], "head": [0], "label": ["det"], "share": [1.0]}),
        "patterns": previous_piece_patterns(L, H, 6),
        "token_share": token_share(L, H),
        **logit_lens(L),
    }


def logit_lens(L: int) -> dict[str, pl.DataFrame]:
    """pipeline/metrics/logit_lens.py: depths 0..L, the top-1 share rising from 0 to 0.4 and the median rank falling,
    for all pieces, two tags and the four kinds of relation; one earliest and one latest sentence."""
    from pipeline.analysis.logit_lens import EXEMPLAR_SCHEMA, SCHEMA

    groups = [
        ("all", "all", 100),
        ("pos", "NOUN", 40),
        ("pos", "VERB", 20),
        ("relation", "same word", 10),
        ("relation", "next depends on current: det", 30),
        ("relation", "current depends on next: nsubj", 20),
        ("relation", "unrelated", 40),
    ]
    rows = [
        (
            d,
            grouping,
            group,
            n,
            0.4 * d / L,
            min(1.0, 0.8 * d / L + 0.1),
            0.3 * d / L,
            -8.0 + 6.0 * d / L,
            4.0 * (1 - d / L),
            int(1000 * 0.5**d),
            int(1000 * 0.5**d) + 1,
            0.5 + 0.5 * d / L,
            min(1.0, 0.8 + 0.2 * d / L),
            int(100 * 0.5**d),
            int(100 * 0.5**d) + 1,
        )
        for d in range(L + 1)
        for grouping, group, n in groups
    ]
    lens = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    exemplars = pl.DataFrame(
        [
            ("earliest", 0, 0, 3.5, 4, 6, "An early sentence."),
            ("latest", 0, 0, 3.5, 4, 6, "An early sentence."),
        ],
        schema=EXEMPLAR_SCHEMA,
        orient="row",
    )
    return {"logit_lens": lens, "logit_lens_exemplars": exemplars}


def token_share(L: int, H: int) -> pl.DataFrame:
    """pipeline/metrics/token_share.py: every head's mean attention split between [CLS], [SEP], ". or ," and other, with
    norms beside it (one table, no weighting column)."""
    from pipeline.analysis.token_share import SCHEMA

    tokens = ["[CLS]", "[SEP]", ". or ,", "other", "all"]
    layer, head, tag = np.meshgrid(
        np.arange(L, dtype=np.int32), np.arange(H, dtype=np.int32), np.arange(5), indexing="ij"
    )
    return pl.DataFrame(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "token": np.asarray(tokens)[tag.ravel()],
            "mean_attention": np.array([0.4, 0.3, 0.1, 0.2, 1.0])[tag.ravel()],
            "mean_weighted_norm": np.array([0.1, 0.05, 0.2, 2.0, 2.35])[tag.ravel()],
            "mean_value_norm": np.array([0.3, 0.2, 1.5, 3.0, 2.9])[tag.ravel()],
            "sentences": np.full(L * H * 5, 20, dtype=np.int64),
        },
        schema=SCHEMA,
    )


def previous_piece_patterns(L: int, H: int, n: int) -> pl.DataFrame:
    """Every head attends from each piece to the one before it (position 0 to itself), on sentence 0."""
    i, j = np.tril_indices(n)
    weight = (j == np.maximum(i - 1, 0)).astype(np.float64)
    one = pl.DataFrame(
        {
            "sentence_id": np.zeros(len(i), np.int64),
            "attending_position": i.astype(np.int64),
            "receiving_position": j.astype(np.int64),
            "weight": weight,
        }
    )
    return pl.concat(
        [
            one.select(layer=pl.lit(layer, pl.Int32), head=pl.lit(head, pl.Int32), *one.columns)
            for layer in range(L)
            for head in range(H)
        ]
    )


WEIGHTED = (
    "head_metrics",
    "layer_metrics",
    "pos_share",
    "dep_share",
    "dep_share_by_layer",
    "positional_profile",
    "dep_accuracy",
    "head_roles",
    "findings",
)  # the tables made under each weighting (stages/aggregate.py)


def with_norm_weighting(t: dict[str, pl.DataFrame], scale: float = 0.5) -> dict[str, pl.DataFrame]:
    """The tables of a run with norm weighting: each weighted table's rows once as "attention" and again as "norm",
    with null shares, shares and findings multiplied by `scale` under "norm", so that a consumer reading the wrong
    weighting's rows shows. Write it with metrics={"norm_weighting": "enabled"}."""
    out = dict(t)
    for name in WEIGHTED:
        df = t[name]
        norm = df.with_columns(
            pl.col(c) * scale for c in ("null_share", "share", "value") if c in df.columns
        )
        out[name] = pl.concat(
            [
                frame.select(pl.lit(weighting).alias("weighting"), *frame.columns)
                for weighting, frame in (("attention", df), ("norm", norm))
            ]
        )
    return out


def write_run(
    run_dir, t: dict[str, pl.DataFrame], model: dict | None = None, metrics: dict | None = None
):
    for name, df in t.items():
        if name in ("sentences", "tokens"):  # corpus-sized tables are parted
            out = PartedOutput(
                run_dir / name, fingerprint="synthetic"
            )  # planned, so its part is bound to its place
            io.write_parquet(df, out.path(0))
            out.finish({"parts": [part_name(0)]})
        else:
            io.write_parquet(df, run_dir / f"{name}.parquet")
    io.write_json(
        {
            "run_name": run_dir.name,
            "model": model
            or {"name": "synthetic", "model_type": "gpt2", "num_layers": 12, "num_heads": 12},
            "stages": {},
            "metrics": metrics or {},
        },
        run_dir / "run.json",
    )
    return run_dir


def dep_accuracy(L: int, H: int) -> pl.DataFrame:
    """Clark et al.'s accuracy (pipeline/metrics/dependency_accuracy.py): one head per relation clearly above its
    offset baseline, the rest at it."""
    rows = []
    for k, relation in enumerate(["det", "nsubj", "amod", "prep"]):
        for layer in range(L):
            for head in range(H):
                best = (layer * H + head) == (k * 7) % (L * H)
                rows.append(
                    (layer, head, relation, "dependent_to_head", 0.9 if best else 0.3, 50, 1, 0.3)
                )
    return pl.DataFrame(
        rows,
        schema=DEP_ACCURACY_SCHEMA,
        orient="row",
    )
