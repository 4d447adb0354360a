"""The annotate stage (spaCy parse + alignment, part by part) through the local executor and through the
Ray executor, alternating over rounds on the same sentences: sentences/s of each, and the same-round
ratio. Locally one process parses (`annotate.n_process: 1`); on Ray, one actor per CPU
(`executor.cpu_workers: auto`), each holding its own spaCy. The parse cache is emptied before every
run, so each parses everything.

    .venv/bin/python bench/executor_bench.py [--config configs/offline.yaml] [--rounds 3] [--scratch DIR]

Each run is `python -m pipeline run --stages annotate --force` in its own process: the Ray figure
includes starting Ray and its actors (seconds, a fixed cost per stage), which a long run amortises."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pipeline(config: str, scratch: Path, *args: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--config",
        config,
        "--set",
        "run_name=executor-bench",
        "--set",
        f"data_dir={scratch}",
        "--set",
        f"reports_dir={scratch}/reports",
        *args,
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")


def annotate_rate(config: str, scratch: Path, kind: str) -> float:
    shutil.rmtree(scratch / "cache", ignore_errors=True)
    pipeline(config, scratch, "--stages", "annotate", "--force", "--set", f"executor.kind={kind}")
    stage = json.loads((scratch / "runs" / "executor-bench" / "run.json").read_text())["stages"][
        "annotate"
    ]
    return stage["counts"]["sentences"] / stage["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default="configs/offline.yaml")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scratch", type=Path, default=Path("/tmp/executor_bench"))
    args = p.parse_args()
    pipeline(args.config, args.scratch, "--stages", "corpus")
    kinds, rates, ratios = ["local", "ray"], {"local": [], "ray": []}, []
    for r in range(args.rounds):
        this_round = {}
        for kind in kinds[r % 2 :] + kinds[: r % 2]:  # rotated order
            this_round[kind] = annotate_rate(args.config, args.scratch, kind)
            rates[kind].append(this_round[kind])
            print(f"round {r + 1}: {kind:<5} {this_round[kind]:7.1f} sentences/s", flush=True)
        ratios.append(this_round["ray"] / this_round["local"])
    for kind in kinds:
        print(
            f"{kind:<5} median {statistics.median(rates[kind]):7.1f} sentences/s "
            f"[{min(rates[kind]):.1f}-{max(rates[kind]):.1f}]"
        )
    print(f"ray / local (same-round ratios, median): {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
