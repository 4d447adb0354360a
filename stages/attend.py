"""attend stage: tokens.parquet → attend/ (shards of per-head sums, never attention maps).

Sentences are sorted by (length, sentence_id), so results do not depend on corpus order, and cut
into shards of `attend.shard_sentences`: the work units, each written atomically when finished, so
a killed run resumes at the first missing shard. Metrics that need a first pass (variability's ᾱ)
get it before the shards (attend/first_pass.npz). The engine (pipeline/engine.py) does the work.

Outputs in attend/: plan.json (the shard layout), first_pass.npz, shard-NNNNN.npz, and meta.json
(vocabularies, shapes, model identity, metric status, shard files), written last: it marks the
stage complete."""

from __future__ import annotations

import resource
import shutil
import time

import torch
from tqdm.auto import tqdm

from pipeline import io, metrics
from pipeline.engine import Reduction, TokenArrays, first_passes, reduce_sentences
from pipeline.errors import PipelineError
from pipeline.executor import LocalExecutor, WorkUnit
from pipeline.models import load_adapter, resolve_device
from pipeline.models.loading import local_identity, resolve_source
from pipeline.stage import Output
from pipeline.sums import Sums

NAME = "attend"
VERSION = 1
INPUTS = ("tokens.parquet",)
OUTPUTS = (Output("attend"), Output("attend/meta.json"))
CONFIG = ("model", "attend")
TUNING = ("attend.token_budget",)  # batch size: the same sums up to float rounding (tested)


def external_inputs(cfg) -> dict:
    return {"model": local_identity(resolve_source(cfg.model.name, cfg.model.gguf_file))}


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def write_shard(ctx, unit: WorkUnit, sums: Sums) -> None:
    sums.save(unit.path, io.write_npz)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(ctx) -> dict:
    a = ctx.cfg.attend
    out_dir = ctx.output_path("attend")
    meta_path, plan_path = out_dir / "meta.json", out_dir / "plan.json"
    previous = io.read_json(plan_path) if io.verify(plan_path) else None
    if ctx.force or previous is None or previous.get("fingerprint") != ctx.fingerprint:
        shutil.rmtree(out_dir, ignore_errors=True)  # shards of another config or code must not be resumed
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # rewritten when all shards are done

    arrays = TokenArrays.from_frame(ctx.read_parquet("tokens.parquet"))
    device = resolve_device(ctx.cfg.model.device)
    adapter = load_adapter(ctx.cfg.model, device)
    if int(arrays.token_id.max()) >= adapter.vocab_size:
        raise PipelineError(f"token ids reach {int(arrays.token_id.max())} but the model has {adapter.vocab_size} "
                            "embeddings: tokens.parquet was made with another tokenizer (model.tokenizer); annotate "
                            "with the model's own")
    identity = adapter.identity()
    status = metrics.status(a)
    ctx.record("model", identity)
    ctx.record("device", {"type": device.type, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                          "torch_threads": torch.get_num_threads()})
    ctx.record("metrics", status)
    order = arrays.length_order()
    units = [WorkUnit(k, order[s:s + a.shard_sentences], out_dir / shard_name(k))
             for k, s in enumerate(range(0, len(order), a.shard_sentences))]
    damaged = [u.index for u in units if u.path.exists() and not u.done]  # recomputed, never read
    plan = {"fingerprint": ctx.fingerprint, "shards": len(units), "sentences": int(len(order)),
            "pos_vocab": arrays.pos_vocab, "dep_vocab": arrays.dep_vocab,
            "num_layers": adapter.num_layers, "num_heads": adapter.num_heads, "metrics": status,
            "exemplars_per_head": a.exemplars_per_head, "shard_files": [u.path.name for u in units]}
    io.write_json(plan, plan_path)

    started = time.perf_counter()
    events = {"batches_halved_oom": 0}
    first_pass_path = out_dir / "first_pass.npz"
    if not io.verify(first_pass_path):
        progress = lambda batches, name: tqdm(batches, desc=f"attend: {name} (first pass)", unit="batch")  # noqa: E731
        io.write_npz(first_passes(adapter, arrays, a, progress, events), first_pass_path)
    first_pass = {k: torch.from_numpy(v).to(device=device, dtype=torch.float32) for k, v in io.read_npz(first_pass_path).items()}
    first_pass_seconds = time.perf_counter() - started

    reduction = Reduction(a, len(arrays.pos_vocab), len(arrays.dep_vocab), first_pass=first_pass,
                          row_width=int(arrays.lengths.max()))
    todo = [u for u in units if not u.done]
    main_started = time.perf_counter()
    with tqdm(total=int(len(order)), initial=int(len(order) - sum(len(u.rows) for u in todo)),
              desc="attend: forward + reduce", unit="sent") as bar:  # closed on errors too: the error gets its own line
        report = LocalExecutor().run(
            units, compute=lambda u: reduce_sentences(adapter, arrays, u.rows, reduction, a.token_budget, bar.update, events),
            write=lambda u, sums: write_shard(ctx, u, sums))
    seconds = time.perf_counter() - main_started
    sentences_done = int(sum(len(u.rows) for u in todo))
    tokens_done = int(sum(arrays.lengths[u.rows].sum() for u in todo))
    io.write_json({**plan, "model": identity}, meta_path)
    return {
        "sentences": int(len(order)), "shards": len(units), "shards_resumed": report.resumed,
        "tokens_this_run": tokens_done, "layers": adapter.num_layers, "heads": adapter.num_heads,
        "device": device.type, "first_pass_seconds": round(first_pass_seconds, 2),
        "sentences_per_second": round(sentences_done / seconds, 1) if seconds and sentences_done else None,
        "tokens_per_second": round(tokens_done / seconds, 1) if seconds and tokens_done else None,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "metrics_disabled": sorted(name for name, s in status.items() if s != "enabled"),
        "shards_damaged_recomputed": len(damaged),
        "batches_halved_oom": events["batches_halved_oom"],
    }


def summary(c: dict) -> str:
    return (f"{c['sentences']} sentences in {c['shards']} shards ({c['shards_resumed']} resumed) through "
            f"{c['layers']}×{c['heads']} heads on {c['device']}: {c['sentences_per_second']} sentences/s, "
            f"{c['tokens_per_second']} tokens/s, first pass {c['first_pass_seconds']}s, peak memory {c['peak_memory_mb']} MB")

