"""Benchmark of the attend stage on a fixed slice of sentences, made to survive a noisy machine:
every approach runs in its own process (so its peak memory is its own), the approaches take turns
in a rotated order in each of several rounds, and the report gives medians with their range, and
ratios computed within each round (then their median), never across rounds.

    python bench/attend_bench.py --config configs/offline.yaml [--sentences 500] [--naive-sentences 100]
        [--rounds 3] [--model config|gpt2-random] [--dtype float32|bfloat16] [--set KEY=VALUE ...]
    python bench/attend_bench.py --shape llama3-8b --dtype bfloat16 [--sentences 200] [--approaches ...]   # a GPU
    python bench/attend_bench.py --shape llama3-8b-smoke --sentences 20 --rounds 1                       # any CPU

Approaches (CUDA when present, else CPU; `--dtype bfloat16` takes effect on a GPU: on a CPU the
model stays float32, with a warning):
  sdpa_forward   bare forward with SDPA attention: the floor, no attention maps at all
  eager_forward  bare forward with eager attention: maps computed, not used
  main_pass      attend's main pass: every statistic but variability, reduced per layer on the device
  whole_stage    attend as it runs: variability's first pass, then the main pass
  naive          one sentence at a time, maps copied to the host and saved as float16, metrics from
                 Python/numpy loops (timed on --naive-sentences, compared per sentence and per token)
`--model gpt2-random` measures a GPT-2-small-shaped model (GPT2Config(), random weights: throughput
does not depend on the weights) with the real GPT-2 tokenizer from ../shared. Results also go to
.bench/attend-<device>-<model>-<dtype>.json.

`--shape llama3-8b` measures a model of Llama-3-8B's shape (32 layers × 32 heads, 8 key/value heads, 4096 wide,
14,336 MLP, vocabulary 128,256, untied LM head: 8.03B parameters), built from its config with random weights (no
download), saved once under .bench/ in --dtype, with the GPT-2 tokenizer (its ids fit the vocabulary; tokens/s does
not depend on which pieces); default approaches eager_forward and main_pass, one round. It first prints the setup:
parameters, the memory estimate (pipeline/models/memory.py) and the logit lens's auto share; without a CUDA device it
stops there (16 GB of bf16 weights are meant for a GPU). `--shape llama3-8b-smoke` is the same family scaled down
(4 layers × 8 heads, 256 wide, the same vocabulary), which runs the same code on a CPU in seconds."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
APPROACHES = ("sdpa_forward", "eager_forward", "main_pass", "whole_stage", "naive")
GPT2_TOKENIZER = ROOT.parent / "shared" / "models" / "gpt2-tokenizer"
LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    bos_token_id=128000,
    eos_token_id=128001,
)  # Meta-Llama-3-8B's config.json
SHAPES = {
    "llama3-8b": LLAMA3_8B,
    "llama3-8b-smoke": {
        **LLAMA3_8B,
        "hidden_size": 256,
        "intermediate_size": 896,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },
}


def gpt2_random_model() -> Path:
    """GPT-2 small's shape (12 layers × 12 heads, 768 wide) with random weights, saved once under .bench/."""
    directory = ROOT / ".bench" / "gpt2-random"
    if not (directory / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, GPT2Config, GPT2Model

        torch.manual_seed(0)
        GPT2Model(GPT2Config()).save_pretrained(directory)
        AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(directory)
    return directory


def shape_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape])


def describe_shape(
    shape: str, dtype: str, token_budget: int, longest: int, mean_length: float
) -> None:
    """The setup of a --shape run, from its config alone: nothing is allocated."""
    import torch

    from pipeline.config import AttendConfig
    from pipeline.models.memory import (
        GiB,
        estimate,
        forward_macs,
        lens_macs,
        resolve_lens_sample,
        shape_of,
    )

    s = shape_of(shape_config(shape))
    est = estimate(s, getattr(torch, dtype), longest, lens=True)
    share, why = resolve_lens_sample(AttendConfig(), s, 10_000, mean_length)
    print(
        f"shape {shape}: {s.layers} layers × {s.heads} heads (head width {s.head_dim}), width {s.width}, MLP "
        f"{s.intermediate}, vocabulary {s.vocab}; {s.parameters:,} parameters ({s.trunk_parameters:,} in the trunk)"
    )
    print(
        f"memory estimate in {dtype}, attend.token_budget {token_budget}, longest sentence {longest} pieces: "
        f"{est.total(token_budget) / GiB:.1f} GiB (weights {est.weights / GiB:.1f}, attention maps "
        f"{est.attention(token_budget) / GiB:.2f})"
    )
    print(
        f"logit lens per piece {lens_macs(s) / 1e6:,.1f}M multiply-adds, forward {forward_macs(s, mean_length / 2) / 1e6:,.1f}M; "
        f"for 10,000 sentences of {mean_length:.0f} pieces: {why}",
        flush=True,
    )


def random_model(shape: str, dtype: str) -> Path:
    """A model of the shape with random weights, saved once under .bench/<shape>-<dtype>/ with the GPT-2 tokenizer;
    built on the GPU when there is one (seconds for 8B parameters), written as safetensors."""
    directory = ROOT / ".bench" / f"{shape}-{dtype}"
    if not (directory / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(
                shape_config(shape), dtype=getattr(torch, dtype)
            )
        model.save_pretrained(directory)
        del model
        AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(directory)
    return directory


def prepare(config: str, sentences: int, overrides: list[str], label: str) -> Path:
    from pipeline.config import load_config
    from pipeline.run.runner import run_pipeline

    cfg = load_config(
        config,
        [f"corpus.max_sentences={sentences}", f"run_name=bench-{label}-{sentences}", *overrides],
    )
    run_pipeline(cfg, ["corpus", "annotate"], echo=lambda *a: None)
    return cfg.run_dir


def measure(
    approach: str, config: str, run_dir: Path, limit: int | None, overrides: list[str]
) -> dict:
    import numpy as np
    import torch

    from pipeline.config import load_config
    from pipeline.engine import Reduction, TokenArrays, first_passes, plan_batches, reduce_sentences
    from pipeline.models import load_adapter, resolve_device

    cfg = load_config(config, overrides)
    device = resolve_device(cfg.model.device)
    adapter = load_adapter(cfg.model, device, "sdpa" if approach == "sdpa_forward" else "eager")
    from pipeline.run.parts import scan

    arrays = TokenArrays.from_frame(
        scan(run_dir / "tokens").collect()
    )  # the bench slices the whole corpus
    order = arrays.length_order()
    if limit:  # an evenly spaced subset keeps the slice's length distribution
        order = order[np.linspace(0, len(order) - 1, limit).round().astype(int)]
    n_tokens = int(arrays.lengths[order].sum())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    from pipeline.models.memory import estimate, resolve_lens_sample, shape_of

    shape = shape_of(adapter.model.config)
    share, _ = resolve_lens_sample(
        cfg.attend, shape, len(arrays.lengths), float(arrays.lengths.mean())
    )  # attend.logit_lens_sample: auto, as the stage does
    a, written = cfg.attend.model_copy(update={"logit_lens_sample": share}), 0
    lens = approach in ("main_pass", "whole_stage") and a.logit_lens and adapter.causal
    est = estimate(shape, next(adapter.model.parameters()).dtype, int(arrays.lengths.max()), lens)
    extra = {"logit_lens_sample": share, "memory_estimate_mb": est.total(a.token_budget) / 2**20}
    row_width = int(arrays.lengths.max())
    sync()
    started = time.perf_counter()
    if approach in ("sdpa_forward", "eager_forward"):
        with torch.inference_mode():
            for rows in plan_batches(arrays.lengths[order], a.token_budget):
                b = arrays.batch(order[rows], device)
                adapter.model(
                    input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False
                )
    elif approach == "main_pass":
        main = a.model_copy(update={"variability_positions": 0})
        reduce_sentences(
            adapter,
            arrays,
            order,
            Reduction(main, len(arrays.pos_vocab), len(arrays.dep_vocab), row_width=row_width),
            a.token_budget,
        )
    elif approach == "whole_stage":
        first = {
            k: torch.from_numpy(v).to(device=device, dtype=torch.float32)
            for k, v in first_passes(adapter, arrays, a).items()
        }
        sync()
        extra["first_pass_seconds"] = time.perf_counter() - started
        sums = reduce_sentences(
            adapter,
            arrays,
            order,
            Reduction(
                a,
                len(arrays.pos_vocab),
                len(arrays.dep_vocab),
                first_pass=first,
                row_width=row_width,
            ),
            a.token_budget,
        )
        with tempfile.TemporaryDirectory() as tmp:
            sums.save(Path(tmp) / "part.npz", lambda arrays_, path: np.savez(path, **arrays_))
            written = (Path(tmp) / "part.npz").stat().st_size
    elif approach == "naive":
        written = naive(adapter.model, arrays, order, device)
    sync()
    seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {
        "approach": approach,
        "device": device.type,
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "dtype": str(next(adapter.model.parameters()).dtype).replace("torch.", ""),
        "sentences": int(len(order)),
        "tokens": n_tokens,
        "seconds": seconds,
        "sentences_per_s": len(order) / seconds,
        "tokens_per_s": n_tokens / seconds,
        "peak_memory_mb": peak,
        "bytes_written": written,
        **extra,
    }


def naive(model, arrays, order, device) -> int:
    """What analysis scripts commonly do: per sentence, maps to numpy, saved, loops over heads and rows."""
    import numpy as np
    import torch

    written = 0
    totals, pos_to = {}, {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for k, s in enumerate(order):
            ids = torch.from_numpy(
                arrays.token_id[arrays.starts[s] : arrays.starts[s] + arrays.lengths[s]]
            )[None].to(device)
            maps = np.stack(
                [
                    a[0].float().cpu().numpy()
                    for a in model(input_ids=ids, output_attentions=True).attentions
                ]
            )
            path = Path(tmp) / f"{k}.npz"
            np.savez(path, maps.astype(np.float16))
            written += path.stat().st_size
            start, n = arrays.starts[s], arrays.lengths[s]
            pos, word, head = (
                arrays.pos[start : start + n],
                arrays.word[start : start + n],
                arrays.head[start : start + n],
            )
            for layer in range(maps.shape[0]):
                for h in range(maps.shape[1]):
                    t = totals.setdefault((layer, h), np.zeros(8))
                    for i in range(1, n):
                        row = maps[layer, h, i, : i + 1]
                        rest = row[1:]
                        t[0] += row[0]
                        t[1] += rest.sum()
                        t[2] += (rest * (i - np.arange(1, i + 1))).sum()
                        rel = (
                            (word[1 : i + 1] >= 0)
                            & (word[i] >= 0)
                            & (word[1 : i + 1] != word[i])
                            & ((head[1 : i + 1] == word[i]) | (head[i] == word[1 : i + 1]))
                        )
                        t[3] += rest[rel].sum()
                        if row[0] <= 0.9 and rest.sum() > 0:
                            p = rest / rest.sum()
                            t[4] -= (p[p > 0] * np.log(p[p > 0])).sum()
                            t[5] += 1
                        pos_to[(layer, h)] = pos_to.get((layer, h), 0) + np.bincount(
                            pos[1 : i + 1], weights=rest, minlength=64
                        )
    return written


def child(
    approach: str, config: str, run_dir: Path, limit: int | None, overrides: list[str]
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--config",
        config,
        "--approach",
        approach,
        "--run-dir",
        str(run_dir),
    ]
    cmd += [f"--set={o}" for o in overrides] + (["--limit", str(limit)] if limit else [])
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{approach} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: list[dict], rounds: int, approaches=APPROACHES) -> dict:
    by = {a: [r for r in results if r["approach"] == a] for a in approaches}
    rate = {a: [r["tokens_per_s"] for r in by[a]] for a in approaches}
    summary = {
        a: {
            "tokens_per_s_median": statistics.median(rate[a]),
            "tokens_per_s_min": min(rate[a]),
            "tokens_per_s_max": max(rate[a]),
            "seconds_median": statistics.median(r["seconds"] for r in by[a]),
            "sentences": by[a][0]["sentences"],
            "tokens": by[a][0]["tokens"],
            "peak_memory_mb_median": statistics.median(r["peak_memory_mb"] for r in by[a]),
            "bytes_written": by[a][0]["bytes_written"],
        }
        for a in approaches
    }

    def ratio(x, y):  # per round, then the median: both sides measured under the same load
        return statistics.median(rate[x][k] / rate[y][k] for k in range(rounds))

    pairs = {
        "main_pass / eager_forward": ("main_pass", "eager_forward"),
        "whole_stage / eager_forward": ("whole_stage", "eager_forward"),
        "whole_stage / sdpa_forward": ("whole_stage", "sdpa_forward"),
        "whole_stage / naive (per token)": ("whole_stage", "naive"),
    }
    summary["ratios"] = {
        name: ratio(x, y) for name, (x, y) in pairs.items() if x in approaches and y in approaches
    }
    if "whole_stage" in approaches:
        firsts = [r["first_pass_seconds"] / r["seconds"] for r in by["whole_stage"]]
        summary["whole_stage_first_pass_share_median"] = statistics.median(firsts)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/offline.yaml")
    p.add_argument("--sentences", type=int, default=500)
    p.add_argument(
        "--naive-sentences",
        type=int,
        default=100,
        help="the naive approach is slow: time it on fewer",
    )
    p.add_argument("--rounds", type=int, default=None, help="default 3 (--shape: 1)")
    p.add_argument("--model", choices=("config", "gpt2-random"), default="config")
    p.add_argument(
        "--shape", choices=tuple(SHAPES), help="a random-weight model of this shape (see above)"
    )
    p.add_argument(
        "--approaches",
        nargs="+",
        choices=APPROACHES,
        help="default all (--shape: eager_forward main_pass)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="default float32 (--shape: bfloat16)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--approach", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.approach:  # child process
        print(
            json.dumps(
                measure(args.approach, args.config, Path(args.run_dir), args.limit, args.overrides)
            )
        )
        return
    args.dtype = args.dtype or ("bfloat16" if args.shape else "float32")
    overrides = list(args.overrides) + [f"model.dtype={args.dtype}"]
    approaches = tuple(
        args.approaches or (("eager_forward", "main_pass") if args.shape else APPROACHES)
    )
    rounds = args.rounds or (1 if args.shape else 3)
    label = args.shape or args.model
    if args.shape:
        import torch

        from pipeline.config import load_config

        cfg = load_config(args.config, overrides)
        describe_shape(
            args.shape, args.dtype, cfg.attend.token_budget, cfg.corpus.max_pieces + 1, 30.0
        )
        if args.shape == "llama3-8b" and not torch.cuda.is_available():
            print(
                "no CUDA device: --shape llama3-8b is meant for a GPU; --shape llama3-8b-smoke runs the same code here"
            )
            return
        dtype = args.dtype if torch.cuda.is_available() else "float32"
        overrides += [f"model.name={random_model(args.shape, dtype)}", "model.tokenizer=null"]
    elif args.model == "gpt2-random":
        overrides += [f"model.name={gpt2_random_model()}", "model.tokenizer=null"]
    run_dir = prepare(args.config, args.sentences, overrides, label)
    results = []
    for r in range(rounds):
        turn = (
            approaches[r % len(approaches) :] + approaches[: r % len(approaches)]
        )  # rotated order each round
        for approach in turn:
            out = child(
                approach,
                args.config,
                run_dir,
                args.naive_sentences if approach == "naive" else None,
                overrides,
            )
            results.append({**out, "round": r})
            print(
                f"round {r} {approach:<14}{out['sentences']:>5} sent {out['tokens']:>7} tok {out['seconds']:>8.1f} s "
                f"{out['tokens_per_s']:>9.1f} tok/s  peak {out['peak_memory_mb']:>7.0f} MB",
                flush=True,
            )
    s = summarise(results, rounds, approaches)
    first = results[0]
    print(
        f"\ndevice: {first['device']} {first['device_name'] or ''}; dtype {first['dtype']}; model {label}; "
        f"{rounds} rounds, medians [min-max]; logit lens sample {first['logit_lens_sample']:.4g}"
    )
    print(
        f"{'approach':<15}{'sentences':>10}{'tokens':>9}{'seconds':>9}{'tokens/s':>10}{'range':>20}{'peak MB':>9}{'disk B':>12}"
    )
    for a in approaches:
        x = s[a]
        spread = f"[{x['tokens_per_s_min']:.0f}-{x['tokens_per_s_max']:.0f}]"
        print(
            f"{a:<15}{x['sentences']:>10}{x['tokens']:>9}{x['seconds_median']:>9.1f}{x['tokens_per_s_median']:>10.1f}"
            f"{spread:>20}{x['peak_memory_mb_median']:>9.0f}{x['bytes_written']:>12,}"
        )
    for name, value in s["ratios"].items():
        print(f"{name:<34} {value:6.3f}  (median of per-round ratios of tokens/s)")
    for r in results:
        if r["round"] == 0 and r["device"] == "cuda":
            print(
                f"{r['approach']}: memory estimate (pipeline/models/memory.py) {r['memory_estimate_mb']:.0f} MB, "
                f"measured peak {r['peak_memory_mb']:.0f} MB"
            )
    if "whole_stage_first_pass_share_median" in s:
        print(
            f"first pass share of the whole stage: {s['whole_stage_first_pass_share_median']:.1%}"
        )
    out = ROOT / ".bench" / f"attend-{first['device']}-{label}-{first['dtype']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results, "summary": s}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
