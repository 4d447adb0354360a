"""The architecture matrix as a table: every tiny architecture of tests/tiny_architectures.py (and, with --real, the
offline configs' real checkpoints) loaded through pipeline.models.load_adapter, with what the adapter found (the
attention module, the value source and output projection) and the result of each invariant
(pipeline/models/invariants.py). Prints Markdown: the full table, then the README's grouped form; --write puts the
full table into docs/architectures.md between its markers.

    .venv/bin/python bench/architecture_table.py [--real] [--write]"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BEGIN, END = "<!-- architecture table: begin -->", "<!-- architecture table: end -->"
REFERENCE_TESTED = {"gpt2": "tests/test_attention_metrics.py", "bert": "tests/test_encoder.py"}


def short(result: str) -> str:
    if result == "passed":
        return "✓"
    if result.startswith("not applicable"):
        return "— (" + result.split(": ", 1)[1] + ")"
    return "✗ " + result


def module_name(root, module) -> str:
    return next((name for name, m in root.named_modules() if m is module), "?")


def row(label: str, adapter, seconds: float, reference: str) -> str:
    cert = adapter.certificate
    block = adapter.blocks[0]
    if adapter.value_paths:
        path = adapter.value_paths[0]
        columns = path.columns.reshape(path.num_heads, path.head_dim)[:, 0].tolist()
        values = f"`{module_name(block, path.projection)}` cols {columns} → `{module_name(block, path.output)}`"
    else:
        values = "—"
    norm = type(adapter.final_norm).__name__ if adapter.final_norm is not None else "—"
    return (
        f"| {label} | `{adapter.family.blocks}.N.{adapter.family.attention}` | {values} | {norm} | "
        f"{short(cert['attention'])} | {short(cert['norm_weighting'])} | {short(cert['logit_lens'])} | "
        f"{reference} | {seconds:.1f} |"
    )


HEADER = (
    "| architecture | attention module | value source (head h's first column) → output projection, layer 0 | "
    "final norm | attention | norm weighting | logit lens | metrics = slow reference | load + certify (s) |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def grouped(rows: list[str]) -> str:
    """The README's form: architectures with the same three results on one row."""
    groups: dict[tuple, list[str]] = {}
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        groups.setdefault(tuple(cells[4:7]), []).append(cells[0])
    return (
        "| architectures | attention | norm weighting | logit lens |\n|---|---|---|---|\n"
        + "\n".join(
            f"| {', '.join(names)} | {' | '.join(result)} |" for result, names in groups.items()
        )
    )


def table(real: bool) -> list[str]:
    import torch
    from test_architectures import REFERENCE

    from pipeline.config import ModelConfig, load_config
    from pipeline.errors import PipelineError
    from pipeline.models import load_adapter

    from tiny_architectures import ARCHITECTURES, save_tiny

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_type in ARCHITECTURES:
            directory = save_tiny(model_type, Path(tmp) / model_type)
            started = time.perf_counter()
            try:
                adapter = load_adapter(
                    ModelConfig(name=str(directory), device="cpu"), torch.device("cpu")
                )
            except (
                PipelineError
            ) as error:  # a refused architecture is a row with its one-line reason, not a crash
                rows.append(f"| {model_type} | ✗ refused: {error} | | | | | | | |")
                continue
            seconds = time.perf_counter() - started
            reference = (
                "tests/test_architectures.py"
                if model_type in REFERENCE
                else REFERENCE_TESTED.get(model_type, "—")
            )
            rows.append(row(model_type, adapter, seconds, reference))
    if real:
        for config, test in (
            ("configs/offline.yaml", "tests/test_real_model.py"),
            ("configs/encoder.yaml", "—"),
        ):
            cfg = load_config(ROOT / config)
            started = time.perf_counter()
            adapter = load_adapter(cfg.model, torch.device("cpu"))
            rows.append(
                row(f"{cfg.model.name} ({config})", adapter, time.perf_counter() - started, test)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--real", action="store_true", help="also the offline configs' real checkpoints"
    )
    parser.add_argument(
        "--write", action="store_true", help="write the table into docs/architectures.md"
    )
    args = parser.parse_args()
    rows = table(args.real)
    text = HEADER + "\n" + "\n".join(rows)
    print(text, grouped(rows), sep="\n\n")
    if args.write:
        doc = ROOT / "docs" / "architectures.md"
        before, rest = doc.read_text().split(BEGIN)
        _, after = rest.split(END)
        doc.write_text(f"{before}{BEGIN}\n{text}\n{END}{after}")


if __name__ == "__main__":
    main()
