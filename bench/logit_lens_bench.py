"""What the logit lens costs on attend's main pass, per decoded piece, and the sample that keeps it within a budget.

    python bench/logit_lens_bench.py --config configs/offline.yaml [--sentences 200] [--rounds 3] [--budget-s 210]

One model, one slice of sentences (the corpus's first N, length-sorted into batches of attend.token_budget padded
pieces), and two variants of the main pass, every other setting as the config has it: the lens off, and the lens on
every sentence (attend.logit_lens_sample = 1). Every batch goes through both in turn, in an order rotated from batch
to batch, over several rounds; the lens's cost is the median over rounds of (on − off) / decoded pieces. Projected
for the whole offline corpus (--corpus-pieces: pieces with a next piece in their sentence, measured on the full
WikiText-2 test run) at the config's sample, and the largest sample that keeps the lens within --budget-s seconds.
Results also go to .bench/logit-lens-<device>.json."""

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


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/offline.yaml")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--budget-s",
        type=float,
        default=210.0,
        help="what the lens may add to the whole run (seconds)",
    )
    p.add_argument(
        "--corpus-pieces",
        type=int,
        default=266_000,
        help="decodable pieces of the whole corpus (offline: 275k pieces less 8.8k sentences)",
    )
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from main_pass import prepare

    bench = prepare(args.config, args.sentences, args.overrides)
    cfg, arrays, device, order = bench.cfg, bench.arrays, bench.device, bench.order
    decoded = int((arrays.lengths - 1).sum())
    reductions = {
        "off": bench.reduction(logit_lens=False),
        "on": bench.reduction(logit_lens=True, logit_lens_sample=1.0),
    }

    bench.rotated_round(reductions, 0)  # warm-up
    rounds = []
    for r in range(args.rounds):
        rounds.append(bench.rotated_round(reductions, r))
        print(
            f"round {r + 1}: lens off {rounds[-1]['off']:.2f}s, on {rounds[-1]['on']:.2f}s",
            flush=True,
        )
    per_piece = statistics.median((t["on"] - t["off"]) / decoded for t in rounds)
    off = statistics.median(t["off"] for t in rounds)
    sample = cfg.attend.logit_lens_sample
    fit = min(1.0, args.budget_s / (per_piece * args.corpus_pieces))
    result = {
        "device": device.type,
        "model": cfg.model.name,
        "sentences": len(order),
        "decoded_pieces": decoded,
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "main_pass_lens_off_s": off,
        "lens_ms_per_piece": per_piece * 1e3,
        "lens_over_main_pass": per_piece * decoded / off,
        "projected_lens_s_at_config_sample": per_piece * args.corpus_pieces * sample,
        "config_sample": sample,
        "largest_sample_within_budget": fit,
        "budget_s": args.budget_s,
    }
    print(
        f"\n{len(order)} sentences, {decoded} decoded pieces, {cfg.model.name} on {device.type} "
        f"({torch.get_num_threads()} threads), {args.rounds} rounds"
    )
    print(
        f"main pass with the lens off: {off:.2f}s; the lens on every sentence adds {per_piece * 1e3:.2f} ms per piece "
        f"({result['lens_over_main_pass']:.1f}× the main pass)"
    )
    print(
        f"whole corpus ({args.corpus_pieces:,} pieces): the lens adds {per_piece * args.corpus_pieces:.0f}s at sample 1, "
        f"{result['projected_lens_s_at_config_sample']:.0f}s at the config's sample {sample}; "
        f"largest sample within {args.budget_s:.0f}s: {fit:.3f}"
    )
    out = ROOT / ".bench" / f"logit-lens-{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
