"""What the benches of attend's main pass share (additions_bench.py, logit_lens_bench.py): a slice of the corpus
annotated once, the model loaded once, and rounds in which every batch goes through every variant of the main pass
(forward pass and reduction, as the attend stage runs them) in an order rotated from batch to batch, so that a slow
spell of a noisy machine hits all variants alike."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class MainPass:
    cfg: object
    arrays: object  # engine.TokenArrays of the slice
    adapter: object
    device: object
    order: object  # the slice's sentences by length
    batches: list  # rows of arrays, one entry per batch of attend.token_budget padded pieces

    def reduction(self, **attend):
        """The main pass under these attend settings (variability's first pass left out: the same in every variant)."""
        from pipeline.engine import Reduction

        return Reduction(
            self.cfg.attend.model_copy(update={**attend, "variability_positions": 0}),
            len(self.arrays.pos_vocab),
            len(self.arrays.dep_vocab),
            row_width=int(self.arrays.lengths.max()),
        )

    def rotated_round(self, reductions: dict, r: int) -> dict[str, float]:
        """Seconds per variant over every batch, each batch through every variant in an order rotated by r + batch."""
        import torch

        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        names = list(reductions)
        spent = dict.fromkeys(names, 0.0)
        for k, rows in enumerate(self.batches):
            batch = self.arrays.batch(rows, self.device)
            turn = (r + k) % len(names)
            for n in names[turn:] + names[:turn]:  # rotated: no variant always runs first
                sync()
                started = time.perf_counter()
                reductions[n].batch(self.adapter, batch).to_numpy()
                sync()
                spent[n] += time.perf_counter() - started
        return spent


def prepare(config: str, sentences: int, overrides: list[str]) -> MainPass:
    """The config's first `sentences` sentences through corpus and annotate (reused when done), and the model."""
    from pipeline.config import load_config
    from pipeline.engine import TokenArrays, plan_batches
    from pipeline.models import load_adapter, resolve_device
    from pipeline.run.parts import read_meta, scan
    from pipeline.run.runner import run_pipeline

    cfg = load_config(
        config,
        [f"corpus.max_sentences={sentences}", f"run_name=bench-additions-{sentences}", *overrides],
    )
    run_pipeline(cfg, ["corpus", "annotate"], echo=lambda *a: None)
    vocab = read_meta(cfg.run_dir / "tokens")
    arrays = TokenArrays.from_frame(
        scan(cfg.run_dir / "tokens").collect(), vocab["pos_vocab"], vocab["dep_vocab"]
    )
    device = resolve_device(cfg.model.device)
    order = arrays.length_order()
    batches = [order[rows] for rows in plan_batches(arrays.lengths[order], cfg.attend.token_budget)]
    return MainPass(cfg, arrays, load_adapter(cfg.model, device), device, order, batches)
