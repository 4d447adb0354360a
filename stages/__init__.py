"""The pipeline's stages, one module each, in running order. This tuple is the one list of stages:
the runner, the CLI, the Makefile (`python -m stages`) and the tests read it. Each module follows
the contract of pipeline/run/stage.py (NAME, VERSION, INPUTS, OUTPUTS, CONFIG, run)."""

import importlib

STAGE_NAMES = ("corpus", "annotate", "attend", "aggregate", "patterns", "report")


def load_stages() -> tuple:
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in STAGE_NAMES)
