"""attend stage: tokens.parquet → attend/ (shards of per-head partial sums, never attention maps).

Sentences are sorted by (length, sentence_id) — so results do not depend on corpus order —, cut
into shards of `attend.shard_sentences`, and each shard into batches that fit `attend.token_budget`
padded tokens (right padding + attention mask). Each batch's attention is reduced on the device
(pipeline/attention_sums.py) and each finished shard is written atomically, so a killed run resumes
at the first missing shard. Variability (Eq. 5) needs ᾱ first: a cheap first pass over the first N
pieces of every sentence (causal attention there depends on nothing later) writes window_mean.npz.

Outputs in attend/: meta.json (vocabularies, shapes, config hash), window_mean.npz, shard-NNNNN.npz."""

from __future__ import annotations

import logging
import resource
import shutil
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from pipeline import io
from pipeline.attention_sums import Accumulator, Batch, BatchReducer, reduce_batch
from pipeline.errors import PipelineError
from pipeline.modeling import load_model, model_identity, resolve_device

NAME = "attend"
OUTPUTS = ("attend/meta.json",)
log = logging.getLogger(__name__)


def fingerprint(cfg) -> dict:
    a = cfg.attend
    return {"model": cfg.model.model_dump(), "window": a.variability_positions, "k": a.exemplars_per_head,
            "entropy_threshold": a.entropy_null_threshold, "exemplar_rows": True,
            "shard_sentences": a.shard_sentences}  # shard layout: resuming must not mix two layouts


@dataclass
class TokenArrays:
    """The corpus as flat numpy arrays (tokens sorted by sentence, position) plus per-sentence offsets."""

    sentence_ids: np.ndarray  # [S]
    starts: np.ndarray        # [S] index of each sentence's first piece
    lengths: np.ndarray       # [S]
    token_id: np.ndarray
    pos: np.ndarray           # index into pos_vocab
    dep: np.ndarray
    word: np.ndarray
    head: np.ndarray
    pos_vocab: list[str]
    dep_vocab: list[str]

    @classmethod
    def from_frame(cls, tokens: pl.DataFrame) -> "TokenArrays":
        tokens = tokens.sort("sentence_id", "position")
        pos_vocab = sorted(tokens["pos"].unique().to_list())
        dep_vocab = sorted(tokens["dep"].unique().to_list())
        per_sentence = tokens.group_by("sentence_id", maintain_order=True).len()
        lengths = per_sentence["len"].to_numpy().astype(np.int64)
        return cls(
            sentence_ids=per_sentence["sentence_id"].to_numpy(),
            starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
            lengths=lengths,
            token_id=tokens["token_id"].to_numpy(),
            pos=tokens["pos"].replace_strict(pos_vocab, range(len(pos_vocab)), return_dtype=pl.Int64).to_numpy(),
            dep=tokens["dep"].replace_strict(dep_vocab, range(len(dep_vocab)), return_dtype=pl.Int64).to_numpy(),
            word=tokens["word_index"].to_numpy(), head=tokens["head_word_index"].to_numpy(),
            pos_vocab=pos_vocab, dep_vocab=dep_vocab,
        )

    def batch(self, rows: np.ndarray, device: torch.device, max_len: int | None = None) -> Batch:
        lengths = self.lengths[rows] if max_len is None else np.minimum(self.lengths[rows], max_len)
        T = int(lengths.max())
        offsets = np.arange(T)[None, :]
        valid = offsets < lengths[:, None]
        flat = np.where(valid, self.starts[rows][:, None] + offsets, 0)

        def take(values, fill):
            return torch.from_numpy(np.where(valid, values[flat], fill)).to(device)

        return Batch(input_ids=take(self.token_id, 0), attention_mask=torch.from_numpy(valid.astype(np.int64)).to(device),
                     lengths=torch.from_numpy(lengths).to(device), sentence_ids=torch.from_numpy(self.sentence_ids[rows]).to(device),
                     pos=take(self.pos, 0), dep=take(self.dep, 0), word=take(self.word, -1), head=take(self.head, -1))


def length_order(arrays: TokenArrays) -> np.ndarray:
    return np.lexsort((arrays.sentence_ids, arrays.lengths))


def plan_batches(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive runs whose padded size (count × longest) fits the budget; a longer sentence goes alone.
    With lengths in ascending order (as attend sorts them) padding is minimal."""
    batches, start, longest = [], 0, 0
    for k, n in enumerate(lengths):
        if k > start and (k + 1 - start) * max(longest, n) > budget:
            batches.append(np.arange(start, k))
            start, longest = k, 0
        longest = max(longest, int(n))
    if len(lengths):
        batches.append(np.arange(start, len(lengths)))
    return batches


@torch.inference_mode()
def forward_attentions(model, batch: Batch):
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_attentions=True, use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise PipelineError("the model returned no attention weights; it must be loaded with attn_implementation='eager'")
    return out.attentions


@torch.inference_mode()
def window_mean_pass(model, arrays: TokenArrays, cfg, device, n_pos: int, n_dep: int) -> np.ndarray:
    """ᾱ_ij over the first N positions: mean over the sentences that reach row i."""
    N = cfg.attend.variability_positions
    order = length_order(arrays)
    acc = Accumulator(1)
    prefix = np.minimum(arrays.lengths[order], N)
    for rows in tqdm(plan_batches(prefix, cfg.attend.token_budget), desc="attend: variability mean (first pass)", unit="batch"):
        batch = arrays.batch(order[rows], device, max_len=N)
        reducer = BatchReducer(batch, n_pos, n_dep, N, cfg.attend.entropy_null_threshold)
        att = forward_attentions(model, batch)
        sums = [reducer.window_sum(a) for a in att]
        acc.add({"window_sum": torch.stack(sums), "window_rows": reducer.window_rows}, batch.sentence_ids)
    total = acc.to_numpy()
    rows = total["window_rows"]
    return np.divide(total["window_sum"], rows[None, None, :, None], out=np.zeros_like(total["window_sum"]),
                     where=rows[None, None, :, None] > 0)


def shard_sums(model, arrays: TokenArrays, rows_in_shard: np.ndarray, a, window_mean, device, bar=None) -> dict:
    """One shard (rows in ascending length order) → its additive sums as numpy arrays."""
    acc = Accumulator(a.exemplars_per_head)
    n_pos, n_dep = len(arrays.pos_vocab), len(arrays.dep_vocab)
    window = a.variability_positions if window_mean is not None else 0
    for rows in plan_batches(arrays.lengths[rows_in_shard], a.token_budget):
        batch = arrays.batch(rows_in_shard[rows], device)
        reducer = BatchReducer(batch, n_pos, n_dep, window, a.entropy_null_threshold, window_mean,
                               row_width=int(arrays.lengths.max()))
        acc.add(reduce_batch(forward_attentions(model, batch), reducer), batch.sentence_ids)
        if bar is not None:
            bar.update(len(rows))
    sums = acc.to_numpy()
    bad = [k for k, v in sums.items() if not np.isfinite(v).all()]
    if bad:
        raise PipelineError(f"non-finite attention sums ({', '.join(bad)}): the model produced NaN/inf attention "
                            "(model.dtype float16 overflow?); try model.dtype=float32 or bfloat16")
    return sums


def shard_path(ctx, k: int):
    return ctx.path(f"attend/shard-{k:05d}.npz")


def write_shard(ctx, k: int, arrays: dict) -> None:
    io.write_npz(arrays, shard_path(ctx, k))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(ctx) -> dict:
    cfg = ctx.cfg
    a = cfg.attend
    out_dir = ctx.path("attend")
    stage_hash = ctx.state["stages"][NAME]["config_hash"]
    meta_path, plan_path = out_dir / "meta.json", out_dir / "plan.json"
    previous = io.read_json(plan_path) if plan_path.is_file() else None
    if ctx.force or (previous and previous.get("config_hash") != stage_hash):
        shutil.rmtree(out_dir, ignore_errors=True)  # shards of another config must not be resumed
    out_dir.mkdir(parents=True, exist_ok=True)
    if meta_path.is_file():
        meta_path.unlink()  # rewritten when all shards are done

    arrays = TokenArrays.from_frame(ctx.read_parquet("tokens.parquet"))
    device = resolve_device(cfg.model.device)
    model = load_model(cfg.model, device)
    vocab_size = model.get_input_embeddings().num_embeddings
    if int(arrays.token_id.max()) >= vocab_size:
        raise PipelineError(f"token ids reach {int(arrays.token_id.max())} but the model has {vocab_size} embeddings: "
                            "tokens.parquet was made with another tokenizer (model.tokenizer); annotate with the model's own")
    identity = model_identity(model, cfg.model)
    ctx.record("model", identity)
    ctx.record("device", {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                          "torch_threads": torch.get_num_threads()})
    n_pos, n_dep = len(arrays.pos_vocab), len(arrays.dep_vocab)
    order = length_order(arrays)
    shards = [order[s:s + a.shard_sentences] for s in range(0, len(order), a.shard_sentences)]
    plan = {"config_hash": stage_hash, "shards": len(shards), "sentences": int(len(order)),
            "pos_vocab": arrays.pos_vocab, "dep_vocab": arrays.dep_vocab,
            "num_layers": identity["num_layers"], "num_heads": identity["num_heads"],
            "variability_positions": a.variability_positions, "exemplars_per_head": a.exemplars_per_head}
    io.write_json(plan, plan_path)

    started = time.perf_counter()
    window_mean = None
    if a.variability_positions:
        mean_path = out_dir / "window_mean.npz"
        if not mean_path.is_file():
            io.write_npz({"window_mean": window_mean_pass(model, arrays, cfg, device, n_pos, n_dep)}, mean_path)
        window_mean = torch.from_numpy(io.read_npz(mean_path)["window_mean"]).to(device=device, dtype=torch.float32)
    first_pass_seconds = time.perf_counter() - started

    done = [k for k in range(len(shards)) if shard_path(ctx, k).is_file()]
    todo = sorted(set(range(len(shards))) - set(done))
    bar = tqdm(total=int(len(order)), initial=int(sum(len(shards[k]) for k in done)), desc="attend: forward + reduce", unit="sent")
    tokens_done, forward_started = 0, time.perf_counter()
    for k in todo:
        write_shard(ctx, k, shard_sums(model, arrays, shards[k], a, window_mean, device, bar))
        tokens_done += int(arrays.lengths[shards[k]].sum())
    bar.close()
    seconds = time.perf_counter() - forward_started
    sentences_done = int(sum(len(shards[k]) for k in todo))
    io.write_json({**plan, "model": identity}, meta_path)
    return {
        "sentences": int(len(order)), "shards": len(shards), "shards_resumed": len(done),
        "tokens_this_run": tokens_done, "layers": identity["num_layers"], "heads": identity["num_heads"],
        "device": device.type, "first_pass_seconds": round(first_pass_seconds, 2),
        "sentences_per_second": round(sentences_done / seconds, 1) if seconds and sentences_done else None,
        "tokens_per_second": round(tokens_done / seconds, 1) if seconds and tokens_done else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
    }


def summary(c: dict) -> str:
    return (f"{c['sentences']} sentences in {c['shards']} shards ({c['shards_resumed']} resumed) through "
            f"{c['layers']}×{c['heads']} heads on {c['device']}: {c['sentences_per_second']} sentences/s, "
            f"{c['tokens_per_second']} tokens/s, first pass {c['first_pass_seconds']}s, peak memory {c['peak_memory_mb']} MB")
