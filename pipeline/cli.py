"""Command line: `python -m pipeline run --config FILE [--stages a,b] [--set k=v ...] [--force]`,
`python -m pipeline status --config FILE [--set k=v ...]` (each stage up to date or stale, and why: read-only,
safe beside a running run), `python -m pipeline compare RUN_A RUN_B`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pipeline.errors import PipelineError
from stages import STAGE_NAMES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline's stages for a config")
    run.add_argument("--config", required=True, help="YAML file in configs/")
    run.add_argument("--stages", default=None, help=f"comma-separated, of: {','.join(STAGE_NAMES)}")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. corpus.max_sentences=500 (repeatable)",
    )
    run.add_argument(
        "--force", action="store_true", help="redo the selected stages even if up to date"
    )
    status = sub.add_parser(
        "status", help="say for each stage whether a run would redo it, and why (reads only)"
    )
    status.add_argument("--config", required=True, help="YAML file in configs/")
    status.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, as for run (repeatable)",
    )
    cmp = sub.add_parser(
        "compare", help="write an HTML page comparing two runs side by side, with heads matched"
    )
    cmp.add_argument("run_a", help="run name (data/runs/NAME) or run directory")
    cmp.add_argument("run_b")
    cmp.add_argument(
        "--out",
        default=None,
        help="output folder (default reports/compare-A-B): index.html, head_matches.parquet",
    )
    show = sub.add_parser("config", help="print the resolved config")
    show.add_argument("--config", required=True)
    show.add_argument("--set", dest="overrides", action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from pipeline.config import load_config

        if args.command == "run":
            from pathlib import Path

            from pipeline.run.lock import run_lock

            cfg = load_config(args.config, args.overrides)
            stages = (
                [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
            )
            # the locks first: a run directory in use is refused before seconds of imports (torch, spaCy, ...)
            with run_lock(cfg.run_dir), run_lock(Path(cfg.reports_dir) / cfg.run_name):
                from pipeline.run.runner import run_pipeline

                run_pipeline(
                    cfg, stages, force=args.force, config_file=args.config, overrides=args.overrides
                )
        elif args.command == "status":
            from pipeline.run.status import status_lines

            print("\n".join(status_lines(load_config(args.config, args.overrides))))
        elif args.command == "config":
            import yaml

            print(
                yaml.safe_dump(
                    load_config(args.config, args.overrides).model_dump(mode="json"),
                    sort_keys=False,
                )
            )
        elif args.command == "compare":
            from pipeline.report.compare import compare_runs

            print(compare_runs(args.run_a, args.run_b, args.out))
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished parts and stages are kept; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0
