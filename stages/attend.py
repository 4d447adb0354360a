"""attend stage: tokens/ → attend/ (per-head sums for each tokens part, never attention maps).

Each tokens part is a work unit of the executor: its sentences, sorted by (length, sentence_id) so
that padding is minimal, go through the model in batches of `attend.token_budget` padded tokens,
and every enabled metric reduces each layer's attention on the device into sums (pipeline/engine/).
Metrics that need a first pass (variability's ᾱ) get it before the main pass, as units of their own
whose sums merge into attend/first_pass.npz: a global step, timed separately. Every unit's file is
written atomically when finished, so a killed run resumes at the first missing part.

Outputs in attend/: first-NNNNN.npz (first-pass sums per part), first_pass.npz (merged, finished),
part-NNNNN.npz (sums per part), pool-NNNNN.npz (exemplar candidates of the exemplar pool's parts,
searched in a pass of their own that reduces nothing else: forward passes at the exemplars' cost only),
and meta.json (vocabularies, shapes, model identity, metric status, the parts), written last: it
marks the stage complete. The metric status has an entry `norm_weighting` too: whether the sums also
hold every metric under norm-weighted attention (keys norm.*), or why not."""

from __future__ import annotations

import functools
import resource
import time
from pathlib import Path

import polars as pl
import torch

from pipeline import metrics
from pipeline.data.alignment import is_special_tag
from pipeline.engine import (
    Reduction,
    TokenArrays,
    first_pass_parts,
    first_pass_results,
    first_pass_sums,
    norm_weighting_reason,
    null_rule,
    reduce_sentences,
)
from pipeline.errors import PipelineError
from pipeline.models import load_adapter, resolve_device
from pipeline.models.loading import local_identity, resolve_source
from pipeline.models.memory import plan_attend
from pipeline.models.tokenizer_check import check_model_tokenizer
from pipeline.run import io
from pipeline.run.executor import Resources, WorkUnit, make_executor, tqdm_bar
from pipeline.run.parts import (
    PartedOutput,
    is_pool,
    part_paths,
    read_meta,
    read_part,
    scan_parts,
)
from pipeline.run.stage import Output
from pipeline.sums import Sums

NAME = "attend"
VERSION = 2
INPUTS = ("tokens",)
OUTPUTS = (Output("attend"), Output("attend/meta.json"))
CONFIG = ("model", "attend")
TUNING = (
    "attend.token_budget",
    "executor",
)  # batch size and workers: the same sums up to float rounding (tested)


def external_inputs(cfg) -> dict:
    return {"model": local_identity(resolve_source(cfg.model.name, cfg.model.gguf_file))}


@functools.lru_cache(maxsize=1)
def _adapter(model_json: str, device: str):
    """One model per process (the local executor's two passes share it; a Ray actor loads its own)."""
    from pipeline.config import ModelConfig

    return load_adapter(ModelConfig.model_validate_json(model_json), resolve_device(device))


def model_adapter(cfg, device: str | None = None):
    return _adapter(cfg.model.model_dump_json(), device or cfg.model.device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_batch_invariants(adapter, inputs: list, vocab: dict) -> dict:
    """The model's invariants (attention, norm weighting, logit lens) at load and on the run's first batch (the first
    part's shortest sentence and its shortest longer one, so that the batch is padded as the engine pads it):
    {"load": ..., "first_batch": ...}, each invariant passed, failed at load (its measurement off, the reason in the
    metric status) or not applicable; failing on the first batch refuses the run."""
    checks = {"load": adapter.certificate}
    arrays = (
        TokenArrays.from_frame(read_part(inputs[0]), vocab["pos_vocab"], vocab["dep_vocab"])
        if inputs
        else None
    )
    if (
        arrays is not None
        and len(arrays.lengths)
        and int(arrays.token_id.max()) < adapter.vocab_size
    ):
        order = arrays.length_order()
        longer = order[arrays.lengths[order] > arrays.lengths[order[0]]]
        batch = arrays.batch(
            [*order[:1], *(longer[:1] if len(longer) else order[1:2])], adapter.device
        )
        checks["first_batch"] = adapter.check_invariants(batch.input_ids, batch.attention_mask)
    return checks


PASSES = ("first", "main", "exemplars")


class AttendWorker:
    """A tokens part → its sums of one pass, the model loaded once: "first" (the first-pass sums), "main" (every
    enabled metric, given the merged first pass) or "exemplars" (exemplar candidates only: the exemplar pool)."""

    def __init__(
        self, cfg, vocab: dict, row_width: int, kind: str, first_pass_path: Path | None = None
    ):
        assert kind in PASSES, kind
        self.cfg, self.vocab, self.row_width, self.kind = cfg, vocab, row_width, kind
        self.adapter = model_adapter(cfg)
        self.first_pass = None
        if first_pass_path is not None:
            self.first_pass = {
                k: torch.from_numpy(v).to(device=self.adapter.device, dtype=torch.float32)
                for k, v in io.read_npz(first_pass_path).items()
            }

    def __call__(self, unit: WorkUnit, progress=None) -> dict:
        a = self.cfg.attend
        arrays = TokenArrays.from_frame(
            read_part(unit.inputs[0]), self.vocab["pos_vocab"], self.vocab["dep_vocab"]
        )
        if len(arrays.token_id) and int(arrays.token_id.max()) >= self.adapter.vocab_size:
            raise PipelineError(
                f"token ids reach {int(arrays.token_id.max())} but the model has {self.adapter.vocab_size} "
                "embeddings: the tokens were made with another tokenizer (model.tokenizer); annotate "
                "with the model's own"
            )
        events = {"batches_halved_oom": 0}
        started = time.perf_counter()
        if self.kind == "first":
            io.write_npz(first_pass_sums(self.adapter, arrays, a, events), unit.outputs[0])
            if progress:
                progress(len(arrays.lengths))
        else:
            only = (
                tuple(m for m in metrics.enabled(a) if m.name == "exemplars")
                if self.kind == "exemplars"
                else None
            )
            reduction = Reduction(
                a,
                len(arrays.pos_vocab),
                len(arrays.dep_vocab),
                metrics=only,
                first_pass=self.first_pass,
                row_width=self.row_width,
            )
            sums = (
                reduce_sentences(
                    self.adapter,
                    arrays,
                    arrays.length_order(),
                    reduction,
                    a.token_budget,
                    progress,
                    events,
                )
                if len(arrays.lengths)
                else Sums()
            )
            sums.save(unit.outputs[0], io.write_npz)
        return {
            "sentences": int(len(arrays.lengths)),
            "tokens": int(arrays.lengths.sum()),
            "seconds": time.perf_counter() - started,
            "peak_memory_mb": peak_memory_mb(self.adapter.device),
            **events,
        }


def run(ctx) -> dict:
    a, cfg = ctx.cfg.attend, ctx.cfg
    tokens_dir = ctx.input_path("tokens")
    every, vocab = part_paths(tokens_dir), read_meta(tokens_dir)
    inputs, pool = [p for p in every if not is_pool(p)], [p for p in every if is_pool(p)]
    vocab = {"pos_vocab": vocab["pos_vocab"], "dep_vocab": vocab["dep_vocab"]}
    out = PartedOutput(ctx.output_path("attend"), ctx.fingerprint, ctx.force)
    sentences_in = {
        p: int(
            pl.scan_parquet(p)
            .select(pl.col("sentence_id").n_unique())
            .collect(engine="streaming")
            .item()
        )
        for p in every
    }
    per_part = [sentences_in[p] for p in inputs]
    row_width = (
        int(
            scan_parts(every).select(pl.col("position").max()).collect(engine="streaming").item()
            or 0
        )
        + 1
    )
    # before loading: the memory estimate (may lower the token budget) and attend.logit_lens_sample: auto resolved
    pieces = (
        int(scan_parts(inputs).select(pl.len()).collect(engine="streaming").item()) if inputs else 0
    )
    cfg, plan, lines = plan_attend(cfg, row_width, sum(per_part), pieces / max(sum(per_part), 1))
    for line in lines:
        print(f"[attend] {line}", flush=True)
    ctx.record("attend_plan", plan)
    a = cfg.attend

    # the driver's copy: identity and shapes (the local executor's worker reuses it; with Ray, the actors hold
    # the models, and the driver's stays on the CPU)
    adapter = model_adapter(cfg, "cpu" if cfg.executor.kind == "ray" else None)
    check_model_tokenizer(
        adapter, cfg.model
    )  # a tokenizer of another model: refused before any forward pass
    identity = adapter.identity()
    checks = first_batch_invariants(
        adapter, inputs, vocab
    )  # refuses a model that fails one (pipeline/models/invariants.py)
    norm_reason = norm_weighting_reason(a, adapter)  # the same test the workers' passes make
    null_pieces = null_rule(a, adapter.causal)
    if null_pieces == "special" and not any(is_special_tag(t) for t in vocab["pos_vocab"]):
        raise PipelineError(
            "attend.null_pieces is 'special' (an encoder's default) but the tokens have no special pieces: "
            "set model.add_special_tokens (or model.bos: always), or attend.null_pieces: first"
        )
    status = {
        **metrics.status(a, adapter),
        metrics.NORM_WEIGHTING: "enabled" if norm_reason is None else f"disabled: {norm_reason}",
    }
    ctx.record("model", identity)
    ctx.record(
        "device",
        {
            "type": adapter.device.type,
            "torch_threads": torch.get_num_threads(),
            "name": torch.cuda.get_device_name(adapter.device)
            if adapter.device.type == "cuda"
            else None,
        },
    )
    ctx.record("metrics", status)
    ctx.record("null_pieces", null_pieces)
    ctx.record("invariants", checks)
    executor = make_executor(cfg.executor, tqdm_bar("sent"))
    resources = Resources(
        model=True, gpus=cfg.executor.gpus_per_worker
    )  # GPUs: where the cluster has them

    started = time.perf_counter()
    first_units = [
        WorkUnit(k, (p,), (out.path(k, ".npz", "first"),), size=n)
        for k, (p, n) in enumerate(zip(inputs, per_part))
    ]
    first_path = out.directory / "first_pass.npz"
    first_report = None
    if first_pass_parts(a):
        first_report = executor.run(
            first_units,
            functools.partial(AttendWorker, cfg, vocab, row_width, "first"),
            resources,
            desc="attend: first pass",
        )
        parts = Sums.merge(Sums(io.read_npz(u.outputs[0])) for u in first_units)  # cheap: always
        merged = first_pass_results(a, parts.additive)
    else:
        merged = {}
    io.write_npz(merged, first_path)
    first_pass_seconds = time.perf_counter() - started

    units = [
        WorkUnit(k, (p, first_path), (out.path(k, ".npz"),), size=n)
        for k, (p, n) in enumerate(zip(inputs, per_part))
    ]
    main_started = time.perf_counter()
    report = executor.run(
        units,
        functools.partial(AttendWorker, cfg, vocab, row_width, "main", first_path),
        resources,
        desc="attend: forward + reduce",
    )
    seconds = time.perf_counter() - main_started
    done = list(report.counts.values())
    sentences_done, tokens_done = sum(c["sentences"] for c in done), sum(c["tokens"] for c in done)

    # the exemplar pool (section 5.4): its sentences searched for exemplars only; their parts' sums hold no additive key
    pool_units = [
        WorkUnit(
            len(units) + k,
            (p,),
            (out.directory / p.with_suffix(".npz").name,),
            size=sentences_in[p],
        )
        for k, p in enumerate(pool if status.get("exemplars") == "enabled" else [])
    ]
    pool_started = time.perf_counter()
    pool_report = (
        executor.run(
            pool_units,
            functools.partial(AttendWorker, cfg, vocab, row_width, "exemplars"),
            resources,
            desc="attend: exemplar pool",
        )
        if pool_units
        else None
    )
    pool_seconds = time.perf_counter() - pool_started
    out.finish(
        {
            "parts": [u.outputs[0].name for u in units + pool_units],
            "sentences": int(sum(per_part)),
            **vocab,
            "num_layers": adapter.num_layers,
            "num_heads": adapter.num_heads,
            "metrics": status,
            "exemplars_per_head": a.exemplars_per_head,
            "model": identity,
            "null_pieces": null_pieces,
            "invariants": checks,
        }
    )
    halved = sum(
        c["batches_halved_oom"]
        for r in (first_report, report, pool_report)
        if r
        for c in r.counts.values()
    )
    return {
        "sentences": int(sum(per_part)),
        "parts": len(units),
        "parts_resumed": report.resumed,
        "parts_empty": sum(n == 0 for n in per_part),
        "parts_damaged_recomputed": report.damaged,
        "tokens_this_run": tokens_done,
        "layers": adapter.num_layers,
        "heads": adapter.num_heads,
        "device": adapter.device.type,
        "executor": cfg.executor.kind,
        "first_pass_seconds": round(first_pass_seconds, 2),
        "sentences_per_second": round(sentences_done / seconds, 1)
        if seconds and sentences_done
        else None,
        "tokens_per_second": round(tokens_done / seconds, 1) if seconds and tokens_done else None,
        "peak_memory_mb": round(
            max([peak_memory_mb(adapter.device)] + [c["peak_memory_mb"] for c in done]), 1
        ),
        "metrics_disabled": sorted(name for name, s in status.items() if s != "enabled"),
        "exemplar_pool_sentences_only": sum(u.size for u in pool_units),
        "exemplar_pool_seconds": round(pool_seconds, 2),
        "batches_halved_oom": halved,
    }


def summary(c: dict) -> str:
    return (
        f"{c['sentences']} sentences in {c['parts']} parts ({c['parts_resumed']} resumed) through "
        f"{c['layers']}×{c['heads']} heads on {c['device']} ({c['executor']} executor): {c['sentences_per_second']} "
        f"sentences/s, {c['tokens_per_second']} tokens/s, first pass {c['first_pass_seconds']}s, "
        f"peak memory {c['peak_memory_mb']} MB"
    )
