"""What each measurement beyond the paper costs on attend's main pass, made to survive a noisy machine.

    python bench/additions_bench.py --config configs/offline.yaml [--sentences 300] [--rounds 5] [--set KEY=VALUE ...]

One model, one slice of sentences (the corpus's first N, length-sorted into batches of attend.token_budget
padded tokens), and these variants of the main pass (variability's first pass is not part of it; its cost is
the same in every variant):
  paper          the paper's metrics only: every addition switched off
  +positional    the positional profile (attend.positional_offsets)
  +dep_accuracy  Clark et al.'s dependency accuracy (attend.dependency_accuracy)
  +bootstrap     Poisson bootstrap replicates (attend.bootstrap_replicates)
  +norm          norm-weighted attention (attend.norm_weighting), where the model supports it
  +logit_lens    the logit lens at the config's attend.logit_lens_sample (bench/logit_lens_bench.py: its cost per piece)
  all            every addition on (the defaults)
Made for a noisy machine: every batch goes through every variant in turn (forward pass and reduction, as the
attend stage runs them), in an order rotated from batch to batch, so a slow spell hits all variants alike; each
round sums the batches, and the report gives each variant's median time over the rounds and its ratio to
`paper`, computed within each round and then the median. Results also go to
.bench/additions-<device>.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

OFF = {
    "positional_offsets": 0,
    "dependency_accuracy": False,
    "bootstrap_replicates": 0,
    "norm_weighting": False,
    "logit_lens": False,
}
ON = {
    "positional_offsets": 20,
    "dependency_accuracy": True,
    "bootstrap_replicates": 200,
    "norm_weighting": True,
    "logit_lens": True,
}
VARIANTS = {
    "paper": {},
    "+positional": {"positional_offsets": ON["positional_offsets"]},
    "+dep_accuracy": {"dependency_accuracy": True},
    "+bootstrap": {"bootstrap_replicates": ON["bootstrap_replicates"]},
    "+norm": {"norm_weighting": True},
    "+logit_lens": {"logit_lens": True},
    "all": ON,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/offline.yaml")
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from main_pass import prepare

    bench = prepare(args.config, args.sentences, args.overrides)
    cfg, arrays, device, order = bench.cfg, bench.arrays, bench.device, bench.order
    tokens = int(arrays.lengths.sum())
    names = list(VARIANTS)
    reductions = {n: bench.reduction(**{**OFF, **VARIANTS[n]}) for n in names}

    bench.rotated_round(reductions, 0)  # warm-up: caches, allocator, first-call overheads
    seconds = {n: [] for n in names}
    for r in range(args.rounds):
        for n, t in bench.rotated_round(reductions, r).items():
            seconds[n].append(t)
        print(
            f"round {r + 1}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names), flush=True
        )
    ratios = {
        n: statistics.median(seconds[n][k] / seconds["paper"][k] for k in range(args.rounds))
        for n in names
    }
    result = {
        "device": device.type,
        "model": cfg.model.name,
        "sentences": len(order),
        "tokens": tokens,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "variants": {
            n: {
                "seconds_median": statistics.median(seconds[n]),
                "seconds_min": min(seconds[n]),
                "seconds_max": max(seconds[n]),
                "ratio_to_paper_median": ratios[n],
                "tokens_per_s_median": tokens / statistics.median(seconds[n]),
            }
            for n in names
        },
    }
    print(
        f"\n{len(order)} sentences, {tokens} tokens, {cfg.model.name} on {device.type}, {args.rounds} rounds"
    )
    print(f"{'variant':<16}{'median s':>10}{'min–max s':>16}{'× paper':>10}{'tokens/s':>11}")
    for n in names:
        v = result["variants"][n]
        print(
            f"{n:<16}{v['seconds_median']:>10.2f}{v['seconds_min']:>8.2f}–{v['seconds_max']:<7.2f}"
            f"{v['ratio_to_paper_median']:>10.3f}{v['tokens_per_s_median']:>11.0f}"
        )
    out = ROOT / ".bench" / f"additions-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
