"""Benchmark of the attend stage on a fixed slice, against (a) the bare forward pass and (b) the
common naive approach (one sentence at a time, attention maps copied to the host and saved, metrics
from Python/numpy loops). Each approach runs in its own process so its peak memory is its own.

    python bench/attend_bench.py --config configs/offline.yaml [--sentences 500] [--naive-sentences 100]

Prints sentences/s, tokens/s, peak memory (RSS, or CUDA max allocated) and bytes written to disk."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(config: str, sentences: int, overrides: list[str]) -> Path:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config(config, [f"corpus.max_sentences={sentences}", f"run_name=bench-{sentences}", *overrides])
    run_pipeline(cfg, ["corpus", "annotate"], echo=lambda *a: None)
    return cfg.run_dir


def measure(approach: str, config: str, run_dir: Path, limit: int | None, overrides: list[str]) -> dict:
    import numpy as np
    import polars as pl
    import torch

    from pipeline.config import load_config
    from pipeline.engine import Reduction, TokenArrays, first_passes, plan_batches, reduce_sentences
    from pipeline.models import load_adapter, resolve_device

    cfg = load_config(config, overrides)
    device = resolve_device(cfg.model.device)
    adapter = load_adapter(cfg.model, device)
    model = adapter.model
    tokens = pl.read_parquet(run_dir / "tokens.parquet")
    arrays = TokenArrays.from_frame(tokens)
    order = arrays.length_order()
    if limit:  # an evenly spaced subset keeps the slice's length distribution
        order = order[np.linspace(0, len(order) - 1, limit).round().astype(int)]
    n_tokens = int(arrays.lengths[order].sum())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    written = 0
    extra = {}
    sync()
    started = time.perf_counter()
    if approach == "bare":
        with torch.inference_mode():
            for rows in plan_batches(arrays.lengths[order], cfg.attend.token_budget):
                b = arrays.batch(order[rows], device)
                model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    elif approach == "pipeline":
        t0 = time.perf_counter()
        first = {k: torch.from_numpy(v).to(device=device, dtype=torch.float32)
                 for k, v in first_passes(adapter, arrays, cfg.attend).items()}
        sync()
        extra["first_pass_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        reduction = Reduction(cfg.attend, len(arrays.pos_vocab), len(arrays.dep_vocab), first_pass=first,
                              row_width=int(arrays.lengths.max()))
        sums = reduce_sentences(adapter, arrays, order, reduction, cfg.attend.token_budget)
        sync()
        extra["main_pass_seconds"] = time.perf_counter() - t1
        with tempfile.TemporaryDirectory() as tmp:
            sums.save(Path(tmp) / "shard.npz", lambda arrays, path: np.savez(path, **arrays))
            written = (Path(tmp) / "shard.npz").stat().st_size
    elif approach == "pipeline_main_only":  # every statistic but variability (which needs the first pass)
        attend = cfg.attend.model_copy(update={"variability_positions": 0})
        reduction = Reduction(attend, len(arrays.pos_vocab), len(arrays.dep_vocab), row_width=int(arrays.lengths.max()))
        reduce_sentences(adapter, arrays, order, reduction, attend.token_budget)
    elif approach == "naive":
        written = naive(model, arrays, order, device, cfg.attend.variability_positions)
    sync()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"approach": approach, "device": device.type, "sentences": int(len(order)), "tokens": n_tokens,
            "seconds": seconds, "sentences_per_s": len(order) / seconds, "tokens_per_s": n_tokens / seconds,
            "peak_memory_mb": peak, "bytes_written": written, **extra}


def naive(model, arrays, order, device, window: int) -> int:
    """What analysis scripts commonly do: per sentence, maps to numpy, saved, loops over heads and rows."""
    import numpy as np
    import torch

    written = 0
    totals, pos_to = {}, {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for k, s in enumerate(order):
            ids = torch.from_numpy(arrays.token_id[arrays.starts[s]:arrays.starts[s] + arrays.lengths[s]])[None].to(device)
            maps = np.stack([a[0].float().cpu().numpy() for a in model(input_ids=ids, output_attentions=True).attentions])
            path = Path(tmp) / f"{k}.npz"
            np.savez(path, maps.astype(np.float16))
            written += path.stat().st_size
            start = arrays.starts[s]
            n = arrays.lengths[s]
            pos, word, head = arrays.pos[start:start + n], arrays.word[start:start + n], arrays.head[start:start + n]
            for l in range(maps.shape[0]):
                for h in range(maps.shape[1]):
                    t = totals.setdefault((l, h), np.zeros(8))
                    for i in range(1, n):
                        row = maps[l, h, i, : i + 1]
                        rest = row[1:]
                        t[0] += row[0]
                        t[1] += rest.sum()
                        t[2] += (rest * (i - np.arange(1, i + 1))).sum()
                        rel = (word[1:i + 1] >= 0) & (word[i] >= 0) & (word[1:i + 1] != word[i]) & (
                            (head[1:i + 1] == word[i]) | (head[i] == word[1:i + 1]))
                        t[3] += rest[rel].sum()
                        if row[0] <= 0.9 and rest.sum() > 0:
                            p = rest / rest.sum()
                            t[4] -= (p[p > 0] * np.log(p[p > 0])).sum()
                            t[5] += 1
                        pos_to[(l, h)] = pos_to.get((l, h), 0) + np.bincount(pos[1:i + 1], weights=rest, minlength=64)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/offline.yaml")
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument("--naive-sentences", type=int, default=100, help="the naive approach is slow: time it on fewer")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--approach", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.approach:  # child process
        print(json.dumps(measure(args.approach, args.config, Path(args.run_dir), args.limit, args.overrides)))
        return
    run_dir = prepare(args.config, args.sentences, args.overrides)
    results = []
    plan = [("bare", None), ("pipeline", None), ("pipeline_main_only", None), ("pipeline", args.sentences // 2),
            ("naive", args.naive_sentences)]
    for approach, limit in plan:
        cmd = [sys.executable, __file__, "--config", args.config, "--approach", approach, "--run-dir", str(run_dir)]
        cmd += [f"--set={o}" for o in args.overrides] + (["--limit", str(limit)] if limit else [])
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['approach']:<20}{r['sentences']:>6} sent {r['tokens']:>7} tok {r['seconds']:>8.1f} s "
              f"{r['sentences_per_s']:>8.1f} sent/s {r['tokens_per_s']:>9.1f} tok/s  peak {r['peak_memory_mb']:>7.0f} MB  "
              f"disk {r['bytes_written']:>11,} B" + (f"  (first pass {r['first_pass_seconds']:.1f} s, main {r['main_pass_seconds']:.1f} s)"
                                                     if "first_pass_seconds" in r else ""), flush=True)
    bare, full, main_only, half, naive_r = results
    print()
    print(f"device: {full['device']}; slice: {full['sentences']} sentences, {full['tokens']} tokens")
    print(f"statistics overhead of the main pass over the bare forward: {main_only['seconds'] / bare['seconds'] - 1:+.1%}")
    print(f"whole attend stage (incl. variability first pass) over the bare forward: {full['seconds'] / bare['seconds'] - 1:+.1%}")
    print(f"speed-up over the naive approach (per sentence, same sentences' rate): "
          f"{full['sentences_per_s'] / naive_r['sentences_per_s']:.1f}x (naive measured on {naive_r['sentences']} sentences)")
    print(f"bytes to disk per sentence: pipeline {full['bytes_written'] / full['sentences']:.0f}, naive {naive_r['bytes_written'] / naive_r['sentences']:.0f}")
    print(f"peak memory with {half['sentences']} vs {full['sentences']} sentences: {half['peak_memory_mb']:.0f} vs {full['peak_memory_mb']:.0f} MB")


if __name__ == "__main__":
    main()
