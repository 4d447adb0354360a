"""Right bytes, wrong place: a valid part (intact, with its own checksum sidecar) copied over another part,
or from another run, is recomputed and counted on resume and refused on read, never read as data (issue 21 §1);
the notebook API refuses damaged or foreign tables (§3)."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from pipeline.errors import PipelineError
from pipeline.run import io

from helpers import run


def _interrupted(cfg, stage: str) -> None:
    """run.json as a run killed inside `stage` leaves it: the stage is not recorded as done, its meta.json not written."""
    state = io.read_json(cfg.run_dir / "run.json")
    state["stages"][stage] = {
        "fingerprint": state["stages"][stage]["fingerprint"],
        "status": "running",
    }
    io.write_json(state, cfg.run_dir / "run.json", checksum=False)
    directory = {"annotate": "tokens", "attend": "attend"}[stage]
    (cfg.run_dir / directory / "meta.json").unlink()


def _copy_part(src_dir, src: str, dst_dir, dst: str, stamp: bool = False) -> None:
    """A part copied over another together with its checksum sidecar (and, with stamp, the unit's stamp too)."""
    names = [(src, dst), (f".{src}.sha256", f".{dst}.sha256")] + (
        [(f".{src}.inputs", f".{dst}.inputs")] if stamp else []
    )
    for a, b in names:
        shutil.copyfile(src_dir / a, dst_dir / b)


@pytest.mark.slow
@pytest.mark.parametrize("stamp", [False, True])
def test_a_tokens_part_copied_over_another_with_its_sidecar_is_recomputed_on_resume(
    tiny_gpt2, config_factory, stamp
):
    cfg = config_factory(tiny_gpt2)
    run(cfg, ["corpus", "annotate"])
    tokens = cfg.run_dir / "tokens"
    want = {p.name: p.read_bytes() for p in sorted(tokens.glob("part-*"))}
    assert len([n for n in want if n.endswith(".parquet")]) >= 3
    _interrupted(cfg, "annotate")
    _copy_part(tokens, "part-00002.parquet", tokens, "part-00001.parquet", stamp)
    if stamp:  # the whole unit: its counts file too
        _copy_part(tokens, "part-00002.json", tokens, "part-00001.json")
    counts = run(cfg, ["annotate"]).state["stages"]["annotate"]["counts"]
    assert (
        counts["parts_damaged_recomputed"] == 1 and counts["parts_resumed"] == counts["parts"] - 1
    )
    assert {p.name: p.read_bytes() for p in sorted(tokens.glob("part-*"))} == want


@pytest.mark.slow
def test_attend_sums_copied_over_another_part_are_recomputed_on_resume(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2)
    run(cfg, ["corpus", "annotate", "attend"])
    attend = cfg.run_dir / "attend"
    want = {p.name: p.read_bytes() for p in sorted(attend.glob("part-*.npz"))}
    _interrupted(cfg, "attend")
    _copy_part(attend, "part-00000.npz", attend, "part-00001.npz")
    counts = run(cfg, ["attend"]).state["stages"]["attend"]["counts"]
    assert (
        counts["parts_damaged_recomputed"] == 1 and counts["parts_resumed"] == counts["parts"] - 1
    )
    assert {p.name: p.read_bytes() for p in sorted(attend.glob("part-*.npz"))} == want


@pytest.mark.slow
def test_a_part_from_another_run_is_recomputed_and_counted(tiny_gpt2, config_factory):
    """Same config, same bytes even: a part of another run directory is not this run's, and is made again."""
    ours, theirs = config_factory(tiny_gpt2), config_factory(tiny_gpt2, run_name="other")
    run(theirs, ["corpus", "annotate"])
    run(ours, ["corpus", "annotate"])
    _interrupted(ours, "annotate")
    _copy_part(
        theirs.run_dir / "tokens",
        "part-00001.parquet",
        ours.run_dir / "tokens",
        "part-00001.parquet",
        stamp=True,
    )
    counts = run(ours, ["annotate"]).state["stages"]["annotate"]["counts"]
    assert (
        counts["parts_damaged_recomputed"] == 1 and counts["parts_resumed"] == counts["parts"] - 1
    )


@pytest.mark.slow
def test_a_finished_part_swapped_with_its_sidecar_is_refused_on_read(full_run, tmp_path):
    from pipeline import results

    run_dir = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, run_dir)
    assert results.scan(run_dir, "tokens").collect().height > 0
    _copy_part(run_dir / "tokens", "part-00002.parquet", run_dir / "tokens", "part-00001.parquet")
    with pytest.raises(PipelineError, match=r"part-00001.parquet .*not the part written there"):
        results.scan(run_dir, "tokens")


@pytest.mark.slow
def test_a_meta_json_from_another_run_is_refused_on_read(full_run, tiny_gpt2, config_factory):
    from pipeline import results

    other = config_factory(tiny_gpt2, run_name="other")
    run(other, ["corpus"])
    for name in (
        "meta.json",
        ".meta.json.sha256",
    ):  # another run's complete listing, with its checksum
        shutil.copyfile(full_run.run_dir / "sentences" / name, other.run_dir / "sentences" / name)
    with pytest.raises(PipelineError, match="does not belong to this output's plan"):
        results.scan(other.run_dir, "sentences")


# ---- §3: the notebook API checks what it loads ----


@pytest.mark.slow
def test_load_refuses_a_damaged_table_naming_the_file_and_its_stage(full_run, tmp_path):
    from pipeline import results

    run_dir = tmp_path / "copy"
    shutil.copytree(full_run.run_dir, run_dir)
    assert results.load(run_dir)["head_metrics"].height > 0
    path = run_dir / "head_metrics.parquet"
    df = pl.read_parquet(path)
    df.with_columns(pl.col(df.columns[-1]).shift(1)).write_parquet(
        path
    )  # a readable table with other contents
    with pytest.raises(
        PipelineError, match=r"head_metrics.parquet .*damaged.*stage 'aggregate'"
    ) as e:
        results.load(run_dir)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_load_refuses_a_table_of_another_run_copied_with_its_sidecar(
    full_run, tiny_gpt2, config_factory
):
    from pipeline import results

    other = config_factory(tiny_gpt2, "corpus.max_sentences=6", run_name="other")
    run(other)
    for name in ("head_metrics.parquet", ".head_metrics.parquet.sha256"):
        shutil.copyfile(full_run.run_dir / name, other.run_dir / name)
    with pytest.raises(
        PipelineError, match=r"head_metrics.parquet is not the table stage 'aggregate' wrote"
    ):
        results.load(other.run_dir)
