"""Reliability: one run per run directory, crashes at random moments, damaged files, failed writes,
file modes, and fuzzed configs and corpora."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError

from conftest import PARAGRAPHS, ROOT, SPACY_MODEL, make_config, write_corpus
from helpers import ANALYSIS, run, table

ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_holder(
    tiny_gpt2, config_factory
):
    cfg = config_factory(tiny_gpt2)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pipeline.run.lock import run_lock\n"
            f"with run_lock(Path({str(cfg.run_dir)!r})):\n    print('locked', flush=True); time.sleep(120)",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(
            PipelineError,
            match=rf"run directory .* is in use by PID {holder.pid} on .+ since .+ \(-c\)",
        ):
            run(cfg, ["corpus"])
        assert time.monotonic() - started < 30  # at once, not after waiting
        other = config_factory(tiny_gpt2, run_name="beside")  # another run_name runs side by side
        assert run(other, ["corpus"]).state["stages"]["corpus"]["status"] == "done"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (
        run(cfg, ["corpus"]).state["stages"]["corpus"]["status"] == "done"
    )  # a killed holder leaves no stale lock


def _config_file(directory: Path, model: Path, corpus: Path) -> Path:
    path = directory / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "run_name": "crash",
                "data_dir": str(directory / "data"),
                "reports_dir": str(directory / "reports"),
                "corpus": {
                    "source": "text",
                    "path": str(corpus),
                    "spacy_model": SPACY_MODEL,
                    "min_words": 3,
                    "min_pieces": 3,
                    "part_sentences": 2,
                },
                "model": {"name": str(model), "device": "cpu"},
                "attend": {"token_budget": 64, "exemplars_per_head": 3},
                "report": {"formats": ["png"]},
            }
        )
    )
    return path


def _cli(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _cli_to_the_end(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def _tables(run_dir: Path) -> dict[str, bytes]:
    paths = [
        *run_dir.glob("*.parquet"),
        *run_dir.glob("sentences/part-*.parquet"),
        *run_dir.glob("tokens/part-*.parquet"),
    ]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(paths)}


@pytest.mark.slow
def test_sigkill_at_random_moments_in_every_stage_then_rerun_gives_identical_tables(
    tiny_gpt2, tmp_path
):
    from pipeline.run.io import read_json
    from stages import STAGE_NAMES

    corpus = write_corpus(tmp_path / "corpus.txt")
    (tmp_path / "ref").mkdir()
    _cli_to_the_end(_config_file(tmp_path / "ref", tiny_gpt2, corpus))
    seconds = {
        s: v["seconds"]
        for s, v in read_json(tmp_path / "ref" / "data" / "runs" / "crash" / "run.json")[
            "stages"
        ].items()
    }
    (tmp_path / "crash").mkdir()
    config = _config_file(tmp_path / "crash", tiny_gpt2, corpus)
    rng = np.random.default_rng(7)
    killed_in = []
    for stage in (
        STAGE_NAMES
    ):  # one kill at a random moment inside each stage, wherever the rerun has got to
        proc = _cli(config)
        for line in proc.stdout:
            if line.startswith(f"[{stage}] running"):
                time.sleep(rng.uniform(0, seconds[stage]))
                if proc.poll() is None:  # still running: the kill lands mid-run
                    proc.send_signal(signal.SIGKILL)
                    killed_in.append(stage)
                break
        proc.wait(timeout=600)
    assert len(killed_in) >= 3, killed_in
    _cli_to_the_end(config)
    state = read_json(tmp_path / "crash" / "data" / "runs" / "crash" / "run.json")
    assert all(state["stages"][s]["status"] == "done" for s in STAGE_NAMES)
    want, got = (
        _tables(tmp_path / "ref" / "data" / "runs" / "crash"),
        _tables(tmp_path / "crash" / "data" / "runs" / "crash"),
    )
    assert list(got) == list(want) and len(want) >= 11
    assert [name for name in want if got[name] != want[name]] == []  # byte for byte
    crash = (
        tmp_path / "crash"
    )  # the shared parse cache may keep a killed write's temporary for a day
    assert not [p for p in crash.rglob("*.tmp") if "cache" not in p.relative_to(crash).parts]


@pytest.mark.slow
def test_a_damaged_part_or_table_is_detected_and_recomputed(tiny_gpt2, config_factory):
    from pipeline.run.io import read_npz
    from pipeline.run.runner import run_pipeline

    cfg = config_factory(tiny_gpt2)
    run(cfg)
    shard = cfg.run_dir / "attend" / "part-00001.npz"
    original = read_npz(shard)
    shard.write_bytes(shard.read_bytes()[:100])  # truncated
    state = run(cfg).state
    counts = state["stages"]["attend"]["counts"]
    assert (
        counts["parts_damaged_recomputed"] == 1 and counts["parts_resumed"] == counts["parts"] - 1
    )
    assert "attend/part-00001.npz" in state["integrity"]["files_failed_checksum"]
    repaired = read_npz(shard)
    assert (
        repaired.keys() == original.keys()
    )  # the same arrays; empty candidate slots hold NaN in the same places
    assert all(
        np.array_equal(repaired[k], original[k], equal_nan=original[k].dtype.kind == "f")
        for k in original
    )
    for victim in (
        "attend/part-00002.npz",
        "attend/.part-00002.npz.sha256",
    ):  # deleted with its checksum too
        (cfg.run_dir / victim).unlink()
    assert run(cfg).state["stages"]["attend"]["counts"]["parts_resumed"] == counts["parts"] - 1
    tokens = cfg.run_dir / "tokens" / "part-00001.parquet"
    good = tokens.read_bytes()
    tokens.write_bytes(
        b"PAR1 not a parquet file"
    )  # an unreadable part: that part alone is made again
    messages = []
    annotate = run_pipeline(cfg, ANALYSIS, echo=messages.append).state["stages"]["annotate"][
        "counts"
    ]
    ran = [m.split("]")[0][1:] for m in messages if "running" in m]
    assert (
        ran == ["annotate"] and "damaged" in messages[1]
    )  # rebuilt identically: attend and aggregate stay current
    assert tokens.read_bytes() == good
    assert (
        annotate["parts_damaged_recomputed"] == 1
        and annotate["parts_resumed"] == annotate["parts"] - 1
    )
    run(cfg, ["report"])
    (cfg.run_dir / "claims.parquet").write_bytes(
        b"damaged"
    )  # the report's own output: rebuilt, never read
    assert run(cfg, ["report"]).state["stages"]["report"]["status"] == "done"
    assert pl.read_parquet(cfg.run_dir / "claims.parquet").height > 10
    (cfg.run_dir / "head_metrics.parquet").write_bytes(
        b"damaged"
    )  # an input of the report: one line
    with pytest.raises(PipelineError, match="needs 'aggregate' .*damaged"):
        run(cfg, ["report"])
    cache = next((Path(cfg.data_dir) / "cache" / "spacy").glob("*.parquet"))
    cache.write_bytes(b"garbage")  # a damaged parse cache is parsed again, never read
    again = run(cfg, ["annotate"], force=True).state["stages"]["annotate"]["counts"]
    assert again["parse_cache_hits"] == again["parts"] - 1  # that part's parse is made again


def _full_disk_for(target: str, monkeypatch):
    """The temporary file of `target` becomes a link to /dev/full: the real writer meets a real ENOSPC."""
    import pipeline.run.io

    real = tempfile.mkstemp

    def mkstemp(prefix="", suffix="", dir=None):
        fd, path = real(prefix=prefix, suffix=suffix, dir=dir)
        if prefix == f".{target}.":
            os.close(fd)
            os.unlink(path)
            os.symlink("/dev/full", path)
            fd = os.open(os.devnull, os.O_RDONLY)
        return fd, path

    monkeypatch.setattr(pipeline.run.io.tempfile, "mkstemp", mkstemp)


def _denied_rename_for(target: str, monkeypatch):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(target):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.slow
@pytest.mark.parametrize(
    "inject, target, code",
    [
        (_full_disk_for, "part-00000.parquet", errno.ENOSPC),  # polars' writer
        (_full_disk_for, "part-00000.npz", errno.ENOSPC),  # numpy's writer
        (_denied_rename_for, "index.html", errno.EACCES),
    ],
)
def test_a_failed_write_is_one_line_leaves_no_partial_file_and_a_rerun_completes(
    tiny_gpt2, config_factory, monkeypatch, capsys, inject, target, code
):
    from pipeline.cli import main

    cfg = config_factory(tiny_gpt2, "report.formats=[png]")
    config = Path(cfg.data_dir).parent / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    with monkeypatch.context() as m:
        inject(target, m)
        assert main(["run", "--config", str(config)]) == 2
    stderr = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    err = [line for line in stderr if "%|" not in line and "/s]" not in line]  # progress bars aside
    assert (
        len(err) == 1
        and err[0] == stderr[-1]
        and err[0].startswith("error: cannot write ")
        and target in err[0]
    ), err
    assert os.strerror(code) in err[0] and f"({errno.errorcode[code]})" in err[0]
    left = [
        p
        for p in Path(cfg.data_dir).parent.rglob("*")
        if p.name.endswith(target) or p.name.endswith(".tmp")
    ]
    assert left == []
    assert main(["run", "--config", str(config)]) == 0
    assert (Path(cfg.reports_dir) / cfg.run_name / "index.html").is_file()


def test_an_unwritable_output_directory_is_one_line(tiny_gpt2, tmp_path, corpus_file):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text(
        "a file where the data directory should be"
    )  # fails for root too, unlike chmod
    cfg = make_config(tmp_path, tiny_gpt2, corpus_file, f"data_dir={blocker / 'data'}")
    with pytest.raises(
        PipelineError, match=r"cannot write .*not-a-directory/data/runs/t/\.lock: Not a directory"
    ):
        run(cfg, ["corpus"])


@pytest.mark.slow
def test_outputs_have_the_ordinary_mode(tiny_gpt2, config_factory):
    old = os.umask(0o027)
    try:
        cfg = config_factory(tiny_gpt2, "report.formats=[png]")
        run(cfg, [*ANALYSIS, "report"])
    finally:
        os.umask(old)
    files = [
        p
        for d in (cfg.run_dir, Path(cfg.reports_dir), Path(cfg.data_dir) / "cache")
        for p in d.rglob("*")
        if p.is_file()
    ]
    assert (
        len(files) > 20
        and any(p.name == ".lock" for p in files)
        and any("cache" in p.parts for p in files)
    )
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert {m for m in modes.values()} == {0o640}, {
        n: oct(m) for n, m in modes.items() if m != 0o640
    }


def test_paragraphs_longer_than_spacys_limit_are_skipped_and_counted(tiny_gpt2, config_factory):
    from pipeline.data.nlp import load_spacy

    nlp = load_spacy(SPACY_MODEL, purpose="sentences")
    limit, nlp.max_length = nlp.max_length, 160
    try:
        counts = run(config_factory(tiny_gpt2), ["corpus"]).state["stages"]["corpus"]["counts"]
    finally:
        nlp.max_length = limit
    assert counts["paragraphs_too_long_skipped"] == sum(len(p) > 160 for p in PARAGRAPHS) == 3
    assert counts["sentences"] > 0


# ---- fuzzed configs and corpora ----

KEYS = [
    "run_name",
    "seed",
    "corpus.source",
    "corpus.path",
    "corpus.max_sentences",
    "corpus.min_pieces",
    "corpus.max_pieces",
    "corpus.min_alpha_ratio",
    "model.name",
    "model.device",
    "model.dtype",
    "model.too_long",
    "attend.token_budget",
    "attend.variability_positions",
    "attend.entropy_null_threshold",
    "attend.exemplars_per_head",
    "report.formats",
    "report.exemplar_heads",
    "annotate.n_process",
    "nonsense",
    "corpus.nonsense",
    "model",
    "attend",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.integers(-3, 40), max_size=3),
    st.lists(st.lists(st.integers(-3, 40), max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_fuzzed_configs_are_valid_or_one_line_errors(mutations):
    from pipeline.config import Config, load_config

    data = {"run_name": "x", "corpus": {"source": "text", "path": "a.txt"}}
    for key, value in mutations:
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[parts[-1]] = value
    try:
        assert isinstance(load_config(data=data), Config)
    except PipelineError as e:
        assert "\n" not in str(e) and str(e)


def _fuzzed_corpus(data: st.DataObject) -> bytes:
    blobs = data.draw(
        st.lists(
            st.one_of(
                st.binary(max_size=40),  # invalid UTF-8 and control bytes
                st.text(st.characters(codec="utf-8"), max_size=30).map(
                    str.encode
                ),  # any unicode, control characters included
                st.sampled_from(
                    [
                        b"",
                        b"\n\n\n",
                        b"\x00\x01\x02",
                        b"\r\n",
                        b"\xff\xfe",
                        "\u202e\u200b\ufeff".encode(),
                    ]
                ),
                st.integers(1, 3).map(
                    lambda k: (b"word " * (k * 70_000)).strip()
                ),  # extremely long lines
            ),
            min_size=1,
            max_size=4,
        )
    )
    paragraphs = [p.encode() for p in PARAGRAPHS[:3]]
    for blob in blobs:  # inside paragraphs, between them, or alone
        k = data.draw(st.integers(0, len(paragraphs)))
        if data.draw(st.booleans()) and k < len(paragraphs):
            cut = data.draw(st.integers(0, len(paragraphs[k])))
            paragraphs[k] = paragraphs[k][:cut] + blob + paragraphs[k][cut:]
        else:
            paragraphs.insert(k, blob)
    return b"\n\n".join(paragraphs) + b"\n"


@pytest.mark.slow
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_fuzzed_corpus_bytes_through_corpus_and_annotate_never_a_traceback(tiny_gpt2, data):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        corpus.write_bytes(_fuzzed_corpus(data))
        cfg = make_config(tmp, tiny_gpt2, corpus)
        try:
            state = run(cfg, ["corpus", "annotate"]).state
        except PipelineError as e:
            assert "\n" not in str(e)
            return
        c = state["stages"]["corpus"]["counts"]
        skips = (
            "paragraphs_invalid_utf8_skipped",
            "paragraphs_too_long_skipped",
            "dropped_non_prose",
            "dropped_too_few_pieces",
            "dropped_too_many_pieces",
        )
        assert all(isinstance(c[k], int) and c[k] >= 0 for k in skips)
        if b"\xff" in corpus.read_bytes():
            assert c["paragraphs_invalid_utf8_skipped"] >= 1
        tokens, sentences = table(cfg, "tokens"), table(cfg, "sentences")
        assert (
            sorted(tokens["sentence_id"].unique().to_list()) == sentences["sentence_id"].to_list()
        )
        assert (
            tokens.group_by("sentence_id").agg(ok=pl.col("position").max() + 1 == pl.len())["ok"]
        ).all()
