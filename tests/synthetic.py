"""Small synthetic result tables with known values, for report and claims tests."""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline import io

TAGS = ["NOUN", "PROPN", "DET", "PUNCT", "VERB"]


def tables(L: int = 12, H: int = 12, seed: int = 0) -> dict[str, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    layer, head = layer.ravel().astype(np.int32), head.ravel().astype(np.int32)
    distance = 2 + layer * 0.5 + rng.random(L * H)
    heads = pl.DataFrame({
        "layer": layer, "head": head, "null_share": (layer * H + head) / (L * H),
        "dep_align_attending_parent": 0.1 + 0.01 * rng.random(L * H), "dep_align_receiving_parent": 0.1 + 0.01 * rng.random(L * H),
        "dep_align_either": 0.5 - 0.02 * distance, "variability": 0.05 + 0.3 * rng.random(L * H),
        "mean_distance": distance, "mean_entropy": 0.2 * distance + 0.1 * rng.random(L * H),
        "mass": np.full(L * H, 100.0), "mass_all": np.full(L * H, 200.0), "mass_null": np.full(L * H, 100.0),
        "entropy_rows": np.full(L * H, 50.0), "entropy_skipped": np.zeros(L * H), "var_abs_dev": np.ones(L * H), "var_mass": np.ones(L * H),
    })
    layers = heads.group_by("layer").agg(pl.col(c).mean() for c in heads.columns if c not in ("layer", "head")).sort("layer")
    layers = layers.with_columns(baseline_attending_parent=pl.lit(0.04), baseline_receiving_parent=pl.lit(0.06),
                                 baseline_dep_pair_share=pl.lit(0.1))
    pos_rows = []
    for direction in ("to", "from"):
        share = rng.random((L * H, len(TAGS)))
        share /= share.sum(1, keepdims=True)
        for k, tag in enumerate(TAGS):
            pos_rows.append(pl.DataFrame({"layer": layer, "head": head, "direction": direction, "tag": tag,
                                          "share": share[:, k], "tag_frequency": 1 / len(TAGS)}))
    pos = pl.concat(pos_rows)
    dep_layer = pl.DataFrame({"layer": np.repeat(np.arange(L, dtype=np.int32), 3), "label": ["nsubj", "det", "_"] * L,
                              "share": np.tile([0.3, 0.5, 0.2], L)})
    text = "The cat sat on the mat."
    tokens = pl.DataFrame({"sentence_id": [0] * 6, "position": list(range(6)), "piece": ["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat."],
                           "char_start": [0, 3, 7, 11, 14, 18], "char_end": [3, 7, 11, 14, 18, 23], "pos": ["DET", "NOUN", "VERB", "ADP", "DET", "NOUN"]})
    ex = pl.DataFrame({"layer": layer, "head": head, "rank": np.zeros(L * H, dtype=np.int32), "sentence_id": np.zeros(L * H, dtype=np.int64),
                       "weight": np.full(L * H, 0.9), "attending_position": np.full(L * H, 5), "receiving_position": np.full(L * H, 1),
                       "attending_piece": "Ġmat.", "receiving_piece": "Ġcat", "attending_char_start": 18, "attending_char_end": 23,
                       "receiving_char_start": 3, "receiving_char_end": 7,
                       "attention_row": [[0.05, 0.9, 0.01, 0.01, 0.01, 0.02]] * (L * H), "text": text, "n_pieces": 6})
    findings = pl.DataFrame({"statistic": ["null_share_overall", "null_share_mean", "null_share_max", "sd_mean_distance",
                                           "max_mean_distance", "r_distance_entropy", "r_distance_dep_align", "layer_max_dep_align",
                                           "layer_max_mean_distance", "baseline_dep_pair_share"],
                             "value": [0.5, 0.5, 0.99, 3.0, 9.0, 0.7, -0.8, 4.0, 11.0, 0.1],
                             "p_value": [None, None, None, None, None, 1e-6, 1e-6, None, None, None]})
    stats = pl.DataFrame({"statistic": ["dependency_probability_at_distance"] * 3, "key": ["1", "5", "10"], "value": [0.4, 0.07, 0.02],
                          "paper_value": [0.42, 0.07, 0.02]})
    return {"head_metrics": heads, "layer_metrics": layers, "pos_share": pos, "dep_share_by_layer": dep_layer,
            "exemplars": ex, "findings": findings, "tokens": tokens, "corpus_stats": stats,
            "dep_share": pl.DataFrame({"layer": [0], "head": [0], "label": ["det"], "share": [1.0]})}


def write_run(run_dir, t: dict[str, pl.DataFrame], model: dict | None = None, metrics: dict | None = None):
    for name, df in t.items():
        if name in ("sentences", "tokens"):  # corpus-sized tables are parted
            io.write_parquet(df, run_dir / name / "part-00000.parquet")
            io.write_json({"parts": ["part-00000.parquet"]}, run_dir / name / "meta.json")
        else:
            io.write_parquet(df, run_dir / f"{name}.parquet")
    io.write_json({"run_name": run_dir.name, "model": model or {"name": "synthetic", "model_type": "gpt2", "num_layers": 12,
                                                                 "num_heads": 12}, "stages": {}, "metrics": metrics or {}},
                  run_dir / "run.json")
    return run_dir
