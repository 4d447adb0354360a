"""aggregate stage: attend/ shards → the paper's per-head tables (ratios of merged sums).

Outputs (one row per layer × head unless said):
- head_metrics.parquet: layer, head, null_share, dep_align_attending_parent, dep_align_receiving_parent,
  dep_align_either, variability, mean_distance, mean_entropy, and the sums behind them: mass, mass_all,
  mass_null, entropy_rows, entropy_skipped, var_abs_dev, var_mass.
- layer_metrics.parquet: the same metrics per layer from summed numerators and denominators, plus
  baseline_dep_pair_share (Fig. 8's baseline: share of piece pairs i ≥ 1, 1 ≤ j ≤ i in a relation).
- pos_share.parquet: layer, head, direction ('to' | 'from'), tag, share, tag_frequency.
- dep_share.parquet: layer, head, label, share; dep_share_by_layer.parquet: layer, label, share.
- exemplars.parquet: layer, head, rank, sentence_id, weight (the sentence's largest α_ij, j ≥ 1),
  attending/receiving position, piece and char span, attention_row (the attending piece's weights
  over positions 0..n-1), text, n_pieces.
- findings.parquet: statistic, value, p_value, n, paper_value (the numbers section 5.3 quotes)."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats as sps

from pipeline import io
from pipeline.attention_sums import merge_sums
from pipeline.errors import PipelineError

NAME = "aggregate"
TABLES = ("head_metrics", "layer_metrics", "pos_share", "dep_share", "dep_share_by_layer", "exemplars", "findings")
OUTPUTS = tuple(f"{t}.parquet" for t in TABLES)
METRICS = ("null_share", "dep_align_attending_parent", "dep_align_receiving_parent", "dep_align_either",
           "variability", "mean_distance", "mean_entropy")


def fingerprint(cfg) -> dict:
    return {}


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def metrics_from_sums(s: dict, axis=None) -> dict[str, np.ndarray]:
    """Per-head metrics; with axis=1 the sums over heads first (per-layer metrics, not means of ratios)."""
    g = (lambda k: s[k].sum(axis=axis)) if axis is not None else (lambda k: s[k])
    var_num = g("var_abs_dev") if "var_abs_dev" in s else np.nan * g("mass")
    var_den = g("var_mass") if "var_mass" in s else np.nan * g("mass")
    return {
        "null_share": _ratio(g("mass_null"), g("mass_all")),
        "dep_align_attending_parent": _ratio(g("dep_attending_parent"), g("mass")),
        "dep_align_receiving_parent": _ratio(g("dep_receiving_parent"), g("mass")),
        "dep_align_either": _ratio(g("dep_attending_parent") + g("dep_receiving_parent"), g("mass")),
        "variability": _ratio(var_num, 2 * var_den),
        "mean_distance": _ratio(g("distance"), g("mass")),
        "mean_entropy": _ratio(g("entropy_sum"), g("entropy_rows")),
    }


def head_table(s: dict) -> pl.DataFrame:
    L, H = s["mass"].shape
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    columns = {"layer": layer.ravel(), "head": head.ravel()}
    columns.update({k: v.ravel() for k, v in metrics_from_sums(s).items()})
    for raw in ("mass", "mass_all", "mass_null", "entropy_rows", "entropy_skipped", "var_abs_dev", "var_mass"):
        if raw in s:
            columns[raw] = s[raw].ravel()
    return pl.DataFrame(columns).with_columns(pl.col("layer", "head").cast(pl.Int32))


def layer_table(s: dict) -> pl.DataFrame:
    L = s["mass"].shape[0]
    columns = {"layer": np.arange(L, dtype=np.int32)}
    columns.update(metrics_from_sums(s, axis=1))
    baseline = float(_ratio(s["pairs_related"].sum(), s["pairs"].sum()))
    return pl.DataFrame(columns).with_columns(baseline_dep_pair_share=pl.lit(baseline))


def share_table(values: np.ndarray, mass: np.ndarray, labels: list[str], label_name: str) -> pl.DataFrame:
    L, H, P = values.shape
    share = _ratio(values, mass[..., None])
    layer, head, label = np.meshgrid(np.arange(L), np.arange(H), np.arange(P), indexing="ij")
    return pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                         label_name: np.asarray(labels, dtype=object)[label.ravel()], "share": share.ravel()})


def pos_table(s: dict, pos_vocab: list[str], tokens: pl.DataFrame) -> pl.DataFrame:
    freq = (tokens.filter(pl.col("position") >= 1).group_by("pos").len()
            .select(tag="pos", tag_frequency=pl.col("len") / pl.col("len").sum()))
    parts = [share_table(s[f"pos_{d}"], s["mass"], pos_vocab, "tag").with_columns(direction=pl.lit(d)) for d in ("to", "from")]
    return (pl.concat(parts).join(freq, on="tag", how="left").with_columns(pl.col("tag_frequency").fill_null(0.0))
            .select("layer", "head", "direction", "tag", "share", "tag_frequency"))


def exemplar_table(s: dict, tokens: pl.DataFrame, sentences: pl.DataFrame) -> pl.DataFrame:
    if "ex_value" not in s:
        return pl.DataFrame()
    L, H, k = s["ex_value"].shape
    layer, head, rank = np.meshgrid(np.arange(L), np.arange(H), np.arange(k), indexing="ij")
    df = pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                       "rank": rank.ravel().astype(np.int32), "sentence_id": s["ex_sentence_id"].ravel().astype(np.int64),
                       "weight": s["ex_value"].ravel(), "attending_position": s["ex_i"].ravel().astype(np.int64),
                       "receiving_position": s["ex_j"].ravel().astype(np.int64),
                       "attention_row": pl.Series(s["ex_row"].reshape(L * H * k, -1).tolist(), dtype=pl.List(pl.Float64))
                       if "ex_row" in s else None}
                      ).filter(pl.col("weight") > -np.inf)
    pieces = tokens.select("sentence_id", "position", "piece", "char_start", "char_end")
    for role in ("attending", "receiving"):
        df = df.join(pieces.rename({"position": f"{role}_position", "piece": f"{role}_piece",
                                    "char_start": f"{role}_char_start", "char_end": f"{role}_char_end"}),
                     on=["sentence_id", f"{role}_position"], how="left", maintain_order="left")
    df = df.join(sentences.select("sentence_id", "text"), on="sentence_id", how="left", maintain_order="left")
    lengths = tokens.group_by("sentence_id").agg(n_pieces=pl.len())
    df = df.join(lengths, on="sentence_id", how="left", maintain_order="left")
    if "attention_row" in df.columns and df["attention_row"].dtype != pl.Null:  # trim the padding to the sentence
        df = df.with_columns(attention_row=pl.col("attention_row").list.head(pl.col("n_pieces")))
    return df


PAPER_FINDINGS = {"null_share_mean": 0.57, "null_share_max": 0.97, "sd_mean_distance": 3.6,
                  "r_distance_entropy": 0.61, "r_distance_dep_align": -0.73, "max_mean_distance": 14.2}


def findings_table(heads: pl.DataFrame, layers: pl.DataFrame, s: dict) -> pl.DataFrame:
    rows = []

    def pearson(x, y, name):
        d = heads.select(x, y).drop_nulls().drop_nans()
        if d.height >= 3 and d[x].std() > 0 and d[y].std() > 0:
            r, p = sps.pearsonr(d[x].to_numpy(), d[y].to_numpy())
            rows.append((name, float(r), float(p), d.height))
        else:
            rows.append((name, float("nan"), float("nan"), d.height))

    n = heads.height
    rows.append(("null_share_overall", float(_ratio(s["mass_null"].sum(), s["mass_all"].sum())), None, n))
    rows.append(("null_share_mean", float(heads["null_share"].mean()), None, n))
    rows.append(("null_share_max", float(heads["null_share"].max()), None, n))
    rows.append(("sd_mean_distance", float(heads["mean_distance"].std(ddof=1)), None, n))
    rows.append(("max_mean_distance", float(heads["mean_distance"].max()), None, n))
    pearson("mean_distance", "mean_entropy", "r_distance_entropy")
    pearson("mean_distance", "dep_align_either", "r_distance_dep_align")
    pearson("variability", "dep_align_either", "r_variability_dep_align")
    rows.append(("layer_max_dep_align", float(layers.sort("dep_align_either", descending=True, nulls_last=True)["layer"][0]), None, layers.height))
    rows.append(("layer_max_mean_distance", float(layers.sort("mean_distance", descending=True, nulls_last=True)["layer"][0]), None, layers.height))
    rows.append(("baseline_dep_pair_share", float(layers["baseline_dep_pair_share"][0]), None, layers.height))
    df = pl.DataFrame(rows, schema={"statistic": pl.String, "value": pl.Float64, "p_value": pl.Float64, "n": pl.Int64}, orient="row")
    paper = pl.DataFrame({"statistic": list(PAPER_FINDINGS), "paper_value": list(PAPER_FINDINGS.values())})
    return df.join(paper, on="statistic", how="left", maintain_order="left")


def build_tables(s: dict, plan: dict, tokens: pl.DataFrame, sentences: pl.DataFrame) -> dict[str, pl.DataFrame]:
    heads, layers = head_table(s), layer_table(s)
    dep = share_table(s["dep_to"], s["mass"], plan["dep_vocab"], "label")
    dep_layer = share_table(s["dep_to"].sum(1, keepdims=True), s["mass"].sum(1, keepdims=True), plan["dep_vocab"], "label").drop("head")
    return {"head_metrics": heads, "layer_metrics": layers, "pos_share": pos_table(s, plan["pos_vocab"], tokens),
            "dep_share": dep, "dep_share_by_layer": dep_layer, "exemplars": exemplar_table(s, tokens, sentences),
            "findings": findings_table(heads, layers, s)}


def load_sums(run_dir) -> tuple[dict, dict]:
    meta_path = run_dir / "attend" / "meta.json"
    if not meta_path.is_file():
        raise PipelineError(f"{meta_path} is missing: the attend stage has not finished")
    plan = io.read_json(meta_path)
    paths = [run_dir / "attend" / f"shard-{k:05d}.npz" for k in range(plan["shards"])]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise PipelineError(f"attend shards missing: {missing[:3]}...; rerun the attend stage")
    return merge_sums([io.read_npz(p) for p in paths], plan["exemplars_per_head"]), plan


def run(ctx) -> dict:
    sums, plan = load_sums(ctx.run_dir)
    tables = build_tables(sums, plan, ctx.read_parquet("tokens.parquet"), ctx.read_parquet("sentences.parquet"))
    for name, df in tables.items():
        ctx.write_parquet(df, f"{name}.parquet")
    f = dict(zip(tables["findings"]["statistic"], tables["findings"]["value"]))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()}


def summary(f: dict) -> str:
    return (f"null attention {f['null_share_overall']:.1%} of all attention (head max {f['null_share_max']:.1%}); "
            f"dependency alignment highest in layer {int(f['layer_max_dep_align'])}, mean distance largest in layer "
            f"{int(f['layer_max_mean_distance'])}; SD of head distance {f['sd_mean_distance']:.2f} (paper 3.6); "
            f"r(distance, entropy) = {f['r_distance_entropy']:.2f} (paper 0.61); "
            f"r(distance, dependency alignment) = {f['r_distance_dep_align']:.2f} (paper −0.73)")
