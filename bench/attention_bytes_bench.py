"""Bytes of peak memory per attention element in the attend stage's main pass: the factor ATTENTION_BYTES of the memory
estimate (pipeline/models/memory.py), which multiplies batch × heads × T² of the largest batch.

    .venv/bin/python bench/attention_bytes_bench.py [--heads 16] [--length 384] [--batches 4 8] [--dtype float32]

A one-layer random GPT-2 (H heads, 4 wide each, vocabulary 1,000, so that weights and activations are small beside
the maps) reduces B random sentences of T pieces in one batch with the default measurements (norm weighting on, the
logit lens off), each B in its own process; the peak (CUDA: max_memory_allocated; CPU: peak RSS) grows with B·H·T²,
and the growth between two B over the growth in elements is the bytes per element."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(batch: int, heads: int, length: int, dtype: str, directory: str) -> dict:
    import numpy as np
    import polars as pl
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from pipeline.config import AttendConfig, ModelConfig
    from pipeline.engine import Reduction, TokenArrays, reduce_sentences
    from pipeline.models import load_adapter, resolve_device

    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            n_layer=1,
            n_head=heads,
            n_embd=4 * heads,
            n_positions=max(1024, length),
            vocab_size=1000,
        )
    ).save_pretrained(directory)
    device = resolve_device("auto")
    adapter = load_adapter(
        ModelConfig(name=directory, device=device.type, dtype=dtype, tokenizer=directory), device
    )
    rng = np.random.default_rng(0)
    n = batch * length
    tokens = pl.DataFrame(
        {
            "sentence_id": np.repeat(np.arange(batch), length),
            "position": np.tile(np.arange(length), batch),
            "token_id": rng.integers(0, 1000, n),
            "pos": ["NOUN"] * n,
            "dep": ["dep"] * n,
            "word_index": np.tile(np.arange(length), batch),
            "head_word_index": np.zeros(n, dtype=np.int64),
        }
    )
    arrays = TokenArrays.from_frame(tokens)
    reduction = Reduction(
        AttendConfig(variability_positions=0, bootstrap_replicates=0, logit_lens=False),
        len(arrays.pos_vocab),
        len(arrays.dep_vocab),
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    reduce_sentences(adapter, arrays, arrays.length_order(), reduction, batch * length)
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "batch": batch,
        "elements": batch * heads * length**2,
        "peak_bytes": peak,
        "device": device.type,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--length", type=int, default=384)
    p.add_argument("--batches", type=int, nargs=2, default=(4, 8))
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(
                str(ROOT.parent / "shared" / "models" / "gpt2-tokenizer")
            ).save_pretrained(tmp)
            print(json.dumps(measure(args.child, args.heads, args.length, args.dtype, tmp)))
        return
    results = []
    for batch in args.batches:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(batch),
            "--heads",
            str(args.heads),
            "--length",
            str(args.length),
            "--dtype",
            args.dtype,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(
            f"B={batch} H={args.heads} T={args.length}: {r['elements'] / 1e6:.1f}M elements, peak {r['peak_bytes'] / 2**20:.0f} MB "
            f"({r['device']}, {args.dtype})"
        )
    a, b = results
    print(
        f"bytes per attention element: {(b['peak_bytes'] - a['peak_bytes']) / (b['elements'] - a['elements']):.1f} "
        f"(pipeline/models/memory.py: ATTENTION_BYTES)"
    )


if __name__ == "__main__":
    main()
