"""Peak memory of each stage as the corpus grows: flat peak RSS means the stage streams.

A stage that holds the whole corpus (every sentence, token row or part of sums) in memory at once grows
with N; a stage that streams in parts keeps a peak set by its part size and its model. This bench
runs every stage, each in its own child process, on synthetic corpora of N sentences and compares
the child's peak RSS across N. Target: the largest N within 15% of the smallest.

    .venv/bin/python bench/memory_bench.py [--sizes 10000 100000] [--scratch /tmp/memory_bench]
        [--seed 0] [--stages corpus annotate attend aggregate report]

How: the corpus stage runs once on configs/offline.yaml (the WikiText-2 test file, ~9k sentences)
to give a pool of real sentences; for each N the pool is repeated and shuffled with
numpy default_rng(seed) into N sentences, written as JSON lines of 20 sentences a document, one
sentence a line of "text" (the jsonl source splits a record's text on "\\n" into paragraphs, so spaCy
sees each sentence alone and gives it back; the count after re-splitting and filtering is printed).
The attend side uses a tiny random GPT-2 (2 layers x 3 heads, as tests/conftest.py builds) on the
CPU, so the model adds little to the peak and the corpus-dependent part is what shows.
Each stage runs as `python -m pipeline run --stages STAGE --force ...`; its peak RSS is ru_maxrss
from os.wait4 on that child (KiB on Linux; it covers the child's own waited-for children too,
e.g. spaCy workers), with its wall time. SCRATCH/data/cache (spaCy parses) is emptied before each
stage so a rerun does the same work. Logs: SCRATCH/logs/. The ~430 MB every stage needs for its
imports (torch, spaCy, polars) dilutes the ratio: read the growth column beside it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/offline.yaml"
TOKENIZER = "../shared/models/gpt2-tokenizer"  # relative to ROOT, as in the config
STAGES = ("corpus", "annotate", "attend", "aggregate", "report")
DOC_SENTENCES = 20
TOLERANCE = 0.15


def tiny_gpt2(directory: Path) -> Path:
    """The tests' tiny GPT-2 (tests/conftest.py `_save_tiny_gpt2`), saved once with its tokenizer."""
    if not (directory / "config.json").is_file():
        import torch
        from transformers import AutoTokenizer, GPT2Config, GPT2Model

        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=2,
            n_head=3,
            n_embd=24,
            n_positions=256,
            vocab_size=50257,
            initializer_range=0.35,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
        )
        GPT2Model(config).save_pretrained(directory)
        AutoTokenizer.from_pretrained(str(ROOT / TOKENIZER)).save_pretrained(directory)
    return directory


def run_stage(
    stage: str, run_name: str, scratch: Path, model: Path, extra: list[str]
) -> tuple[float, float, str]:
    """One stage in a child process: (peak RSS MB, wall seconds, command). Exits on failure."""
    sets = [
        f"run_name={run_name}",
        f"data_dir={scratch / 'data'}",
        f"reports_dir={scratch / 'reports'}",
        f"model.name={model}",
        f"model.tokenizer={TOKENIZER}",
        "model.device=cpu",
        "model.dtype=float32",
        *extra,
    ]
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--config",
        CONFIG,
        "--stages",
        stage,
        "--force",
    ]
    for s in sets:
        cmd += ["--set", s]
    log = scratch / "logs" / f"{run_name}-{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    shutil.rmtree(
        scratch / "data" / "cache", ignore_errors=True
    )  # a cached spaCy parse would skip the work
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(
        status
    )  # reaped here, so Popen must not wait again
    command = shlex.join(cmd)
    if child.returncode != 0:
        sys.exit(
            f"{stage} failed (exit {child.returncode}) for {run_name}:\n  {command}\n"
            + "".join(log.read_text(errors="replace").splitlines(True)[-20:])
        )
    return usage.ru_maxrss / 1024, seconds, command


def read_sentences(run_dir: Path) -> pl.DataFrame:
    """The corpus stage's sentences: parts (`sentences/part-*.parquet`) or one table."""
    parts = run_dir / "sentences"
    source = str(parts / "part-*.parquet") if parts.is_dir() else str(run_dir / "sentences.parquet")
    return pl.scan_parquet(source).select("sentence_id", "text").sort("sentence_id").collect()


def write_corpus(pool: list[str], n: int, seed: int, path: Path) -> None:
    """N sentences: the pool repeated enough times, shuffled with the seed, in documents of 20."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.tile(np.arange(len(pool)), -(-n // len(pool))))[:n]
    with open(path, "w", encoding="utf-8") as f:
        for d, first in enumerate(range(0, n, DOC_SENTENCES)):
            text = "\n".join(pool[i] for i in order[first : first + DOC_SENTENCES])
            f.write(json.dumps({"title": f"synthetic {d}", "text": text}) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--scratch", type=Path, default=Path("/tmp/memory_bench"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = p.parse_args()
    scratch, sizes = args.scratch.resolve(), sorted(args.sizes)
    stages = [s for s in STAGES if s in args.stages]
    scratch.mkdir(parents=True, exist_ok=True)
    model = tiny_gpt2(scratch / "tiny-gpt2")

    print("pool: corpus stage on", CONFIG, flush=True)
    *_, seed_cmd = run_stage("corpus", "mempool", scratch, model, [])
    pool = read_sentences(scratch / "data" / "runs" / "mempool")["text"].to_list()
    print(f"  {len(pool)} sentences\n  {seed_cmd}", flush=True)

    rss: dict[str, dict[int, float]] = {s: {} for s in stages}
    wall: dict[str, dict[int, float]] = {s: {} for s in stages}
    actual: dict[int, int] = {}
    for n in sizes:
        corpus = scratch / f"corpus-{n}.jsonl"
        write_corpus(pool, n, args.seed, corpus)
        extra = [
            "corpus.source=jsonl",
            f"corpus.path={corpus}",
            "corpus.max_sentences=null",
            "corpus.max_documents=null",
        ]
        for stage in stages:
            rss[stage][n], wall[stage][n], command = run_stage(
                stage, f"mem{n}", scratch, model, extra
            )
            print(
                f"N={n:>7} {stage:<9} peak {rss[stage][n]:8.1f} MB  {wall[stage][n]:7.1f} s\n  {command}",
                flush=True,
            )
        if "corpus" in stages:
            actual[n] = read_sentences(scratch / "data" / "runs" / f"mem{n}").height

    lo, hi = sizes[0], sizes[-1]
    print(
        "\nsentences after the corpus stage: "
        + ", ".join(f"N={n}: {actual.get(n, '?')}" for n in sizes)
    )
    head = " | ".join(f"N={n} MB" for n in sizes) + " | " + " | ".join(f"N={n} s" for n in sizes)
    print(f"\n| stage | {head} | growth MB | ratio {hi}/{lo} | within {TOLERANCE:.0%} |")
    print("|---" * (4 + 2 * len(sizes)) + "|")
    for s in stages:
        ratio = rss[s][hi] / rss[s][lo]
        cells = (
            " | ".join(f"{rss[s][n]:,.0f}" for n in sizes)
            + " | "
            + " | ".join(f"{wall[s][n]:,.1f}" for n in sizes)
        )
        print(
            f"| {s} | {cells} | {rss[s][hi] - rss[s][lo]:+,.0f} | {ratio:.2f} | {'yes' if ratio <= 1 + TOLERANCE else 'NO'} |"
        )


if __name__ == "__main__":
    main()
