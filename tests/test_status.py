"""`python -m pipeline status`: each stage up to date or stale, and why, from run.json and the current config and
code, without running, locking or writing anything. One tiny run (corpus, annotate, attend) is made per module
and only read; the tests that change a run change a copy of it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml

from pipeline.config import fingerprint as content_hash
from pipeline.errors import PipelineError
from pipeline.run import io
from pipeline.run import stage as stage_module
from pipeline.run.status import OLDER, stage_statuses, status_lines

from conftest import ROOT, make_config, write_corpus
from helpers import run

RUN = ["corpus", "annotate", "attend"]
NEVER = ["aggregate", "patterns", "report"]


@pytest.fixture(scope="module")
def pinned_code():
    """Each stage's code digests as first read, for the whole module: an edit made in the working tree while the
    tests run (by someone else) changes nothing here; the tests that change code say so by patching this."""
    real, seen = stage_module.code_digests, {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            stage_module, "code_digests", lambda module: dict(seen.setdefault(module, real(module)))
        )
        yield


@pytest.fixture(scope="module")
def tiny_run(pinned_code, tiny_gpt2, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("status-run")
    corpus = write_corpus(tmp / "corpus.txt")
    cfg = make_config(tmp, tiny_gpt2, corpus)
    run(cfg, RUN)
    return cfg


def config(tiny_run, *overrides, data_dir=None):
    """The tiny run's config with overrides (the same corpus file: its path is part of the config)."""
    base = tiny_run.model_dump(mode="json")
    data = {
        "run_name": base["run_name"],
        "data_dir": str(data_dir or base["data_dir"]),
        "reports_dir": base["reports_dir"],
        "corpus": base["corpus"],
        "model": base["model"],
        "attend": base["attend"],
    }
    from pipeline.config import load_config

    return load_config(data=data, overrides=list(overrides))


def copy_of(tiny_run, tmp_path, *overrides):
    shutil.copytree(tiny_run.run_dir, tmp_path / "data" / "runs" / tiny_run.run_name)
    return config(tiny_run, *overrides, data_dir=tmp_path / "data")


def by_name(cfg) -> dict:
    return {s.name: s for s in stage_statuses(cfg)}


def snapshot(directory) -> dict:
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_after_a_run_its_stages_are_up_to_date_and_status_writes_nothing(
    tiny_run, tmp_path, capsys
):
    from pipeline.cli import main

    before = snapshot(tiny_run.run_dir.parent.parent)
    statuses = by_name(tiny_run)
    assert list(statuses) == RUN + NEVER
    for name in RUN:
        assert statuses[name].up_to_date and statuses[name].reasons == (), statuses[name]
    for name in NEVER:
        assert not statuses[name].up_to_date and statuses[name].reasons == ("never run",)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_run.model_dump(mode="json")))
    assert main(["status", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"run {tiny_run.run_name} (") and "in progress" not in lines[0]
    assert [ln.split()[:3] for ln in lines[1:]] == [[n, "up", "to"] for n in RUN] + [
        [n, "stale:", "never"] for n in NEVER
    ]
    assert snapshot(tiny_run.run_dir.parent.parent) == before  # not a byte, not an mtime


def test_the_recorded_parts_are_what_the_fingerprint_hashes(tiny_run):
    from stages import load_stages

    state = io.read_json(tiny_run.run_dir / "run.json")
    fingerprints = {}
    for stage in load_stages():
        fingerprints[stage.NAME] = stage_module.stage_fingerprint(stage, tiny_run)
        if stage.NAME in RUN:
            entry = state["stages"][stage.NAME]
            assert (
                content_hash(entry["fingerprint_parts"])
                == entry["fingerprint"]
                == fingerprints[stage.NAME]
            )
            assert set(entry["fingerprint_parts"]) >= {
                "code",
                "config",
                "inputs",
                "version",
            }


def test_a_config_key_annotate_reads_makes_it_and_what_follows_stale(tiny_run):
    old = tiny_run.annotate.dependency_distances
    statuses = by_name(config(tiny_run, f"annotate.dependency_distances={old + 1}"))
    assert statuses["corpus"].up_to_date
    assert not statuses["annotate"].up_to_date
    assert statuses["annotate"].reasons == (
        f"config annotate.dependency_distances: {old} → {old + 1}",
    )
    assert not statuses["attend"].up_to_date and statuses["attend"].reasons == (
        "after annotate (stale): reruns if it writes other contents",
    )
    assert all(not statuses[n].up_to_date for n in NEVER)


def test_a_tuning_key_changes_nothing(tiny_run):
    statuses = by_name(config(tiny_run, "annotate.batch_size=7", "attend.token_budget=64"))
    assert all(statuses[n].up_to_date for n in RUN)


def test_a_changed_module_of_a_stage_is_named(tiny_run, monkeypatch):
    real = stage_module.code_digests

    def edited(
        module: str,
    ) -> dict:  # as if pipeline/data/syntax_stats.py were edited and a module added
        digests = dict(real(module))
        if "pipeline/data/syntax_stats.py" in digests:
            digests["pipeline/data/syntax_stats.py"] = "0" * 16
            digests["pipeline/data/new_helper.py"] = "1" * 16
        return digests

    monkeypatch.setattr(stage_module, "code_digests", edited)
    statuses = by_name(tiny_run)
    assert statuses["corpus"].up_to_date  # corpus does not import it
    assert statuses["annotate"].reasons == (
        "code changed: pipeline/data/syntax_stats.py",
        "code added: pipeline/data/new_helper.py",
    )
    assert (
        "after annotate (stale): reruns if it writes other contents" in statuses["attend"].reasons
    )


def test_no_run_yet(tiny_run, tmp_path):
    cfg = config(tiny_run, data_dir=tmp_path / "data")
    assert stage_statuses(cfg) is None
    assert status_lines(cfg) == [
        f"no run yet: every stage would run ({cfg.run_dir} has no run.json)"
    ]
    assert not (tmp_path / "data").exists()
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "run.json").write_text("{", encoding="utf-8")  # the runner would start over
    assert {s.reasons for s in stage_statuses(cfg)} == {
        ("run.json is unreadable: every stage runs again",)
    }


def test_missing_or_changed_outputs_are_named_and_nothing_is_recorded(tiny_run, tmp_path):
    cfg = copy_of(tiny_run, tmp_path)
    part = sorted((cfg.run_dir / "tokens").glob("part-*.parquet"))[0]
    part.unlink()
    before = snapshot(cfg.run_dir)
    statuses = by_name(cfg)
    assert statuses["corpus"].up_to_date
    assert statuses["annotate"].reasons == (
        f"1 output file(s) missing, changed or damaged since written (tokens/{part.name})",
    )
    assert not statuses["attend"].up_to_date and statuses["attend"].reasons == (
        "after annotate (stale): reruns if it writes other contents",
    )
    assert snapshot(cfg.run_dir) == before  # the runner's check, without its record in run.json


def test_a_run_json_of_an_older_version_is_said_not_a_crash(tiny_run, tmp_path):
    cfg = copy_of(tiny_run, tmp_path)
    state = io.read_json(cfg.run_dir / "run.json")
    for entry in state["stages"].values():
        del entry["fingerprint_parts"]
    io.write_json(state, cfg.run_dir / "run.json", checksum=False)
    assert all(by_name(cfg)[n].up_to_date for n in RUN)  # same fingerprints: nothing to diff
    changed = config(tiny_run, "annotate.dependency_distances=3", data_dir=tmp_path / "data")
    assert by_name(changed)["annotate"].reasons == (OLDER,)
    run(cfg, ["corpus", "annotate"])  # up to date: skipped, and the parts filled in
    state = io.read_json(cfg.run_dir / "run.json")
    assert all("fingerprint_parts" in state["stages"][n] for n in ("corpus", "annotate"))
    assert "fingerprint_parts" not in state["stages"]["attend"]


def test_a_stage_left_running_is_interrupted_or_running_now(tiny_run, tmp_path):
    from pipeline.run.lock import run_lock

    cfg = copy_of(tiny_run, tmp_path)
    state = io.read_json(cfg.run_dir / "run.json")
    state["stages"]["attend"]["status"] = "running"
    io.write_json(state, cfg.run_dir / "run.json", checksum=False)
    assert by_name(cfg)["attend"].reasons == ("interrupted while running: a rerun resumes it",)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from pipeline.run.lock import run_lock\n"
            f"with run_lock(Path({str(cfg.run_dir)!r})):\n    print('locked', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        reason = by_name(cfg)["attend"].reasons[0]
        assert reason.startswith(f"running now (PID {holder.pid} on ")
        assert f"a run is in progress, PID {holder.pid}" in status_lines(cfg)[0]
        with pytest.raises(
            PipelineError, match=f"in use by PID {holder.pid}"
        ):  # status left the lock to its holder
            with run_lock(cfg.run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_bumped_version_is_named(tiny_run, monkeypatch):
    import stages.annotate as annotate

    monkeypatch.setattr(annotate, "VERSION", annotate.VERSION + 1)
    statuses = by_name(tiny_run)
    assert statuses["annotate"].reasons == (
        f"version bumped {annotate.VERSION - 1} → {annotate.VERSION}",
    )
    assert statuses["corpus"].up_to_date and not statuses["attend"].up_to_date


def test_an_upstream_stage_run_again_alone_is_named(tiny_run, tmp_path):
    cfg = copy_of(tiny_run, tmp_path, "corpus.min_words=4")  # read by corpus only
    run(cfg, ["corpus"])
    statuses = by_name(cfg)
    assert statuses["corpus"].up_to_date
    assert statuses["annotate"].reasons == (
        "its inputs were written again since it ran, with other contents",
    )
    assert statuses["attend"].reasons == (
        "after annotate (stale): reruns if it writes other contents",
    )
