"""patterns stage: exemplars.parquet + tokens/ → patterns.parquet, each head's whole attention pattern
on its top exemplar sentence (the paper's Fig. 4 draws a head's pattern on an example sentence).

The attend stage never keeps attention maps: it reduces them on the device. Once the exemplars are
known, this stage runs the model again on those few sentences only (at most one per head), and keeps,
for each head, the matrix of that head on its own top exemplar: the report can then draw patterns
without the model.

Output `patterns.parquet`, one row per attending piece i and receiving piece j ≤ i (position 0, the null
piece, included): layer, head, sentence_id, attending_position, receiving_position, weight."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import polars as pl
import torch

from pipeline.engine.batches import TokenArrays, plan_batches
from pipeline.models import load_adapter, resolve_device
from pipeline.models.loading import local_identity, resolve_source
from pipeline.run.parts import scan
from pipeline.run.stage import Output, check_schema

NAME = "patterns"
VERSION = 1
INPUTS = ("exemplars.parquet", "tokens")
SCHEMA = {
    "layer": pl.Int32,
    "head": pl.Int32,
    "sentence_id": pl.Int64,
    "attending_position": pl.Int64,
    "receiving_position": pl.Int64,
    "weight": pl.Float64,
}
OUTPUTS = (Output("patterns.parquet", SCHEMA),)
CONFIG = ("model",)
TUNING = ("attend.token_budget",)  # batch size: the same patterns


def external_inputs(cfg) -> dict:
    return {"model": local_identity(resolve_source(cfg.model.name, cfg.model.gguf_file))}


def pattern_rows(
    matrix: np.ndarray, layer: int, head: int, sentence_id: int, causal: bool = True
) -> pl.DataFrame:
    """A head's [n, n] attention on a sentence as rows: the lower triangle j ≤ i of a causal model, all of an encoder's."""
    n = matrix.shape[0]
    i, j = np.tril_indices(n) if causal else np.indices((n, n)).reshape(2, -1)
    n = len(i)
    return pl.DataFrame(
        {
            "layer": np.full(n, layer, np.int32),
            "head": np.full(n, head, np.int32),
            "sentence_id": np.full(n, sentence_id, np.int64),
            "attending_position": i.astype(np.int64),
            "receiving_position": j.astype(np.int64),
            "weight": matrix[i, j].astype(np.float64),
        },
        schema=SCHEMA,
    )


def head_patterns(
    adapter, tokens: pl.DataFrame, wanted: pl.DataFrame, token_budget: int
) -> pl.DataFrame:
    """wanted: (layer, head, sentence_id) → each head's [n, n] attention on its sentence, as rows."""
    if wanted.is_empty():
        return pl.DataFrame(schema=SCHEMA)
    arrays = TokenArrays.from_frame(tokens)
    heads_of = defaultdict(list)  # sentence id → [(layer, head)]
    for layer, head, sid in wanted.select("layer", "head", "sentence_id").iter_rows():
        heads_of[sid].append((layer, head))
    order = arrays.length_order()
    frames = []
    for rows in plan_batches(arrays.lengths[order], token_budget):
        rows = order[rows]
        batch = arrays.batch(rows, adapter.device)
        sids, lengths = arrays.sentence_ids[rows], arrays.lengths[rows]

        def keep(index, att, sids=sids, lengths=lengths):
            return [
                (b, head, att[b, head, :n, :n].float().cpu().numpy())
                for b, (sid, n) in enumerate(zip(sids, lengths))
                for layer, head in heads_of[sid]
                if layer == index
            ]

        with torch.no_grad():
            per_layer = adapter.map_attention(batch.input_ids, batch.attention_mask, keep)
        frames += [
            pattern_rows(m, layer, head, int(sids[b]), adapter.causal)
            for layer, kept in enumerate(per_layer)
            for b, head, m in kept
        ]
    return pl.concat(frames).sort("layer", "head", "attending_position", "receiving_position")


def run(ctx) -> dict:
    cfg = ctx.cfg
    wanted = (
        ctx.read_parquet("exemplars.parquet")
        .filter(pl.col("rank") == 0)
        .select("layer", "head", "sentence_id")
    )
    ids = wanted["sentence_id"].unique().implode()
    tokens = (
        scan(ctx.input_path("tokens"), pool=True)
        .filter(pl.col("sentence_id").is_in(ids))
        .collect(engine="streaming")
    )
    adapter = load_adapter(cfg.model, resolve_device(cfg.model.device))
    patterns = head_patterns(adapter, tokens, wanted, cfg.attend.token_budget)
    check_schema(patterns, SCHEMA, "patterns.parquet")
    ctx.write_parquet(patterns, "patterns.parquet")
    return {
        "heads": wanted.height,
        "sentences": int(tokens["sentence_id"].n_unique()) if tokens.height else 0,
        "rows": patterns.height,
    }


def summary(c: dict) -> str:
    return f"attention patterns of {c['heads']} heads on their top exemplars ({c['sentences']} sentences, {c['rows']} rows)"
