"""The architecture's promises: a metric is one module; a code change re-runs exactly the stages it
touches; stages read only the config and files they declare and write what they declare; sums merge
the same whatever the grouping; the model adapter hands over the same attention the model computes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.results import weighting_rows
from stages import STAGE_NAMES

from conftest import ROOT, SPACY_MODEL, write_corpus
from helpers import run, table


def toy_metric_files() -> dict[str, str]:
    """The worked example of docs/design.md ("Adding a metric"), block by block: {path: code}, so that the
    documentation is the code this test runs."""
    text = (ROOT / "docs" / "design.md").read_text()
    blocks = re.findall(r"```python\n# (pipeline/\S+\.py)\n(.*?)```", text, flags=re.S)
    assert {path for path, _ in blocks} == {
        "pipeline/metrics/previous_piece.py",
        "pipeline/analysis/previous_piece.py",
        "pipeline/report/figure_specs.py",
    }
    return dict(blocks)


def add_toy_metric(project: Path) -> None:
    """The toy metric as a contributor adds one: its device part, its analysis part and its figure."""
    for path, code in toy_metric_files().items():
        target = project / path
        target.write_text(target.read_text() + "\n" + code if target.exists() else code)


def _run_cli(project: Path, config: Path) -> list[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if line.startswith("[")]


def _ran(lines: list[str]) -> list[str]:
    return [line.split("]")[0][1:] for line in lines if "] running" in line]


@pytest.fixture(scope="module")
def finished_copy(tmp_path_factory, uniform_gpt2):
    """A copy of the project's code, and a finished run of every stage made with it (uniform attention model)."""
    base = tmp_path_factory.mktemp("project")
    corpus = write_corpus(
        tmp_path_factory.mktemp("corpus") / "corpus.txt"
    )  # outside the copies: same path for all
    for package in ("pipeline", "stages"):
        shutil.copytree(
            ROOT / package, base / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    config = base / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run_name": "copy",
                "data_dir": str(base / "data"),
                "reports_dir": str(base / "reports"),
                "corpus": {
                    "source": "text",
                    "path": str(corpus),
                    "spacy_model": SPACY_MODEL,
                    "min_words": 3,
                    "min_pieces": 3,
                },
                "model": {"name": str(uniform_gpt2), "device": "cpu"},
                "attend": {"token_budget": 128, "exemplars_per_head": 3},
                "report": {"formats": ["png"]},
            }
        )
    )
    assert _ran(_run_cli(base, config)) == list(STAGE_NAMES)
    return base, config


def _fresh_copy(finished_copy, tmp_path) -> tuple[Path, Path]:
    base, config = finished_copy
    project = tmp_path / "project"
    shutil.copytree(base, project, ignore=shutil.ignore_patterns("__pycache__"))
    text = config.read_text().replace(str(base), str(project))
    (project / "config.yaml").write_text(text)
    return project, project / "config.yaml"


@pytest.mark.slow
def test_a_metric_is_two_new_modules_and_a_figure(finished_copy, tmp_path):
    project, config = _fresh_copy(finished_copy, tmp_path)
    add_toy_metric(project)
    # The metric's code joins the engine's: attend and the stages whose inputs change re-run (patterns reads only the
    # exemplars, which are the same); corpus and annotate do not.
    assert _ran(_run_cli(project, config)) == ["attend", "aggregate", "report"]
    run_dir = project / "data" / "runs" / "copy"
    heads = weighting_rows(
        pl.read_parquet(run_dir / "head_metrics.parquet")
    )  # attention weights: the closed form's
    layers = weighting_rows(pl.read_parquet(run_dir / "layer_metrics.parquet"))
    # Uniform attention: α_i,i-1 = 1/(i+1); non-null (i - 1 ≥ 1) from row 2 on; mass Σ i/(i+1) over rows i ≥ 1.
    lengths = (
        pl.read_parquet(sorted((run_dir / "tokens").glob("part-*.parquet")))
        .group_by("sentence_id")
        .len()["len"]
        .to_list()
    )
    rows = [i for n in lengths for i in range(1, n)]
    expected = sum(1 / (i + 1) for i in rows if i >= 2) / sum(i / (i + 1) for i in rows)
    assert np.allclose(heads["previous_piece_share"].to_numpy(), expected, atol=1e-6)
    assert np.allclose(layers["previous_piece_share"].to_numpy(), expected, atol=1e-6)
    assert (project / "reports" / "copy" / "figures" / "fig90_previous_piece.png").is_file()
    assert (
        "Attention to the previous piece (toy)"
        in (project / "reports" / "copy" / "index.html").read_text()
    )


@pytest.mark.slow
def test_an_edit_redoes_the_stages_whose_outputs_it_can_change(finished_copy, tmp_path):
    """The fingerprint rule (pipeline/run/stage.py): a stage reruns when its config, its code (what it imports) or
    the content of the files it reads changed."""
    project, config = _fresh_copy(finished_copy, tmp_path)
    assert _ran(_run_cli(project, config)) == []  # nothing changed: everything is current

    def edit(path: str, old: str, new: str) -> None:
        file = project / path
        text = file.read_text()
        assert text.count(old) == 1, (path, old)
        file.write_text(text.replace(old, new))

    # A claim's tolerance: the analysis part, read by aggregate (whose tables come out the same) and by the report.
    # attend and patterns (which reads only the exemplars) are skipped.
    edit("pipeline/analysis/entropy.py", "0.26,", "0.27,")
    assert _ran(_run_cli(project, config)) == ["aggregate", "report"]
    # A figure's caption: only the report draws.
    edit(
        "pipeline/report/figure_specs.py",
        "mean ᾱ_ij, scaled to [0, 1].",
        "mean ᾱ_ij, scaled to [0, 1] (edited).",
    )
    assert _ran(_run_cli(project, config)) == ["report"]
    # The figure kit: drawing code, the report only.
    figures = project / "pipeline" / "report" / "figures.py"
    figures.write_text(figures.read_text() + "\nEDITED = True\n")
    assert _ran(_run_cli(project, config)) == ["report"]
    # A comment, a docstring: nothing (a module counts by its syntax tree without docstrings).
    aggregate = project / "stages" / "aggregate.py"
    edit("stages/aggregate.py", '"""aggregate stage:', '"""The aggregate stage:')
    aggregate.write_text(aggregate.read_text() + "\n# a comment\n")
    assert _ran(_run_cli(project, config)) == []
    # A stage's own code: it reruns; its tables come out the same, so nothing after it does.
    aggregate.write_text(aggregate.read_text() + "\nEDITED = True\n")
    assert _ran(_run_cli(project, config)) == ["aggregate"]
    # A device part: the forward passes, and every stage after them whose inputs change (here all: the exemplars'
    # weights double, which the patterns stage reads).
    edit("pipeline/metrics/exemplars.py", '"ex_value": best,', '"ex_value": 2 * best,')
    assert _ran(_run_cli(project, config)) == ["attend", "aggregate", "patterns", "report"]


def test_dependency_graph_comes_from_declared_inputs():
    from pipeline.run.runner import dependency_graph

    assert dependency_graph() == {
        "corpus": [],
        "annotate": ["corpus"],
        "attend": ["annotate"],
        "aggregate": ["attend", "annotate", "corpus"],
        "patterns": ["aggregate", "annotate"],
        "report": ["aggregate", "patterns", "annotate", "attend"],
    }


def test_code_fingerprint_covers_imported_project_modules_only():
    from pipeline.run.stage import code_files

    names = {str(p.relative_to(ROOT)) for p in code_files("stages.attend")}
    assert {
        "stages/attend.py",
        "pipeline/engine/reduction.py",
        "pipeline/sums.py",
        "pipeline/models/adapter.py",
        "pipeline/metrics/entropy.py",
        "pipeline/metrics/variability.py",
    } <= names
    assert not names & {
        "stages/corpus.py",
        "stages/aggregate.py",
        "stages/report.py",
        "pipeline/run/runner.py",
        "pipeline/cli.py",
        "pipeline/report/figures.py",
    }  # drawing code does not redo forward passes
    assert "pipeline/report/figures.py" in {
        str(p.relative_to(ROOT)) for p in code_files("stages.report")
    }
    aggregate = {str(p.relative_to(ROOT)) for p in code_files("stages.aggregate")}
    assert "stages/attend.py" not in aggregate and not any(
        n.startswith("pipeline/engine/") for n in aggregate
    )
    # The forward pass hashes the device parts only; the analysis (claims too) is aggregate's; figures, the report's.
    assert not any(n.startswith("pipeline/analysis/") for n in names)
    assert {
        "pipeline/analysis/entropy.py",
        "pipeline/analysis/base.py",
        "pipeline/metrics/entropy.py",
    } <= aggregate
    assert "pipeline/report/figure_specs.py" not in aggregate
    # How stages run (runner, executors, lock, I/O), the config's schema and the error type change no output: in no
    # stage's code. The parts (which hold the exemplar pool) are.
    machinery = {
        f"pipeline/run/{m}.py"
        for m in ("runner", "status", "stage", "executor", "ray_executor", "lock", "io")
    }
    for stage in STAGE_NAMES:
        files = {str(p.relative_to(ROOT)) for p in code_files(f"stages.{stage}")}
        assert not files & (machinery | {"pipeline/config.py", "pipeline/errors.py"}), stage
    assert "pipeline/run/parts.py" in aggregate


def test_a_comment_a_docstring_or_the_layout_changes_no_code_digest(tmp_path):
    from pipeline.run.stage import code_digest

    def digest(source: str) -> str:
        (tmp_path / "m.py").write_text(source)
        return code_digest(tmp_path / "m.py")

    base = digest('"""A module."""\n\ndef f(x):\n    """Why."""\n    return x + 1\n')
    assert digest('"""Another text."""\n\n\ndef f( x ):  # a comment\n    return (x + 1)\n') == base
    assert digest('"""A module."""\n\ndef f(x):\n    """Why."""\n    return x + 2\n') != base
    assert (
        digest(
            '"""A module."""\n\ndef f(x):\n    """Why."""\n    s = "a string"\n    return x + 1\n'
        )
        != base
    )


def test_stages_read_only_declared_config_and_write_only_declared_outputs(
    tiny_gpt2, config_factory
):
    from pipeline.run.runner import Run
    from stages import annotate, corpus

    cfg = config_factory(tiny_gpt2)
    ctx = Run(cfg, {}).context(corpus, "x", False)
    assert ctx.cfg.corpus.min_words == 3 and ctx.cfg.model.name == str(tiny_gpt2)
    with pytest.raises(
        PipelineError, match="stage 'corpus' reads config 'attend' without declaring it"
    ):
        ctx.cfg.attend
    with pytest.raises(PipelineError, match="reads config 'model.device'"):
        ctx.cfg.model.device
    with pytest.raises(
        PipelineError, match="writes 'tokens/part-00000.parquet' without declaring it"
    ):
        ctx.write_parquet(pl.DataFrame({"a": [1]}), "tokens/part-00000.parquet")
    with pytest.raises(
        PipelineError, match="part-00000.parquet does not match its declared schema: .*n_pieces"
    ):
        ctx.write_parquet(pl.DataFrame({"sentence_id": [1]}), "sentences/part-00000.parquet")
    with pytest.raises(PipelineError, match="reads 'head_metrics.parquet' without declaring it"):
        Run(cfg, {}).context(annotate, "x", False).read_parquet("head_metrics.parquet")


@pytest.mark.slow
def test_config_change_reruns_from_the_stage_that_reads_it(tiny_gpt2, config_factory):
    cfg = config_factory(tiny_gpt2, "report.formats=[png]")
    run(cfg, list(STAGE_NAMES))
    messages = []
    from pipeline.run.runner import run_pipeline

    changed = config_factory(tiny_gpt2, "report.formats=[png]", "attend.exemplars_per_head=2")
    run_pipeline(changed, echo=messages.append)
    assert [m.split("]")[0][1:] for m in messages if "running" in m] == [
        "attend",
        "aggregate",
        "patterns",
        "report",
    ]
    assert table(changed, "exemplars")["rank"].max() == 1


def test_sums_merge_is_independent_of_grouping_and_order():
    from pipeline.sums import Sums

    rng = np.random.default_rng(0)

    def part(n):
        ids = rng.choice(10_000, size=n, replace=False)
        value = rng.random((2, 3, n))
        return Sums(
            {"mass": rng.random((2, 3)), "pairs": rng.random(1)},
            {
                "value": value,
                "sentence_id": np.broadcast_to(ids, (2, 3, n)),
                "i": rng.integers(0, 9, (2, 3, n)),
                "j": rng.integers(0, 9, (2, 3, n)),
                "row": rng.random((2, 3, n, 4)),
            },
            k=4,
        )

    parts = [part(n) for n in (3, 7, 1, 5)]
    a = (parts[0] + parts[1]) + (parts[2] + parts[3])
    b = Sums.merge(parts[::-1])
    c = parts[0] + (parts[1] + (parts[2] + parts[3]))
    for other in (b, c):
        assert np.allclose(a["mass"], other["mass"]) and np.allclose(a["pairs"], other["pairs"])
        for name in ("value", "sentence_id", "i", "j", "row"):
            assert np.array_equal(a.exemplars[name], other.exemplars[name]), name
    everything = np.concatenate([p.exemplars["value"] for p in parts], axis=-1)
    assert np.allclose(a.exemplars["value"], -np.sort(-everything, axis=-1)[..., :4])
    tie = Sums(
        exemplars={
            "value": np.ones((1, 1, 3)),
            "sentence_id": np.array([[[9, 4, 7]]]),
            "i": np.zeros((1, 1, 3)),
            "j": np.zeros((1, 1, 3)),
        },
        k=2,
    )
    other = Sums(
        exemplars={
            "value": np.ones((1, 1, 1)),
            "sentence_id": np.array([[[5]]]),
            "i": np.zeros((1, 1, 1)),
            "j": np.zeros((1, 1, 1)),
        },
        k=2,
    )
    assert (
        (tie + other).exemplars["sentence_id"].ravel().tolist()
        == [4, 5]
        == (other + tie).exemplars["sentence_id"].ravel().tolist()
    )
    restored = Sums.from_arrays(
        {
            **{k: v for k, v in a.additive.items()},
            **{f"ex_{k}": v for k, v in a.exemplars.items()},
            "_exemplars_k": np.array(4),
        }
    )
    assert restored.k == 4 and np.array_equal(restored.exemplars["row"], a.exemplars["row"])


def test_adapter_hands_over_the_models_own_attention_and_unembedding(tiny_gpt2):
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.config import ModelConfig
    from pipeline.models import load_adapter

    adapter = load_adapter(ModelConfig(name=str(tiny_gpt2), device="cpu"), torch.device("cpu"))
    assert (adapter.causal, adapter.family.name, adapter.num_layers, adapter.num_heads) == (
        True,
        "gpt2",
        2,
        3,
    )
    ids = torch.tensor([[464, 3290, 3332, 319, 262, 2603], [464, 3797, 13, 0, 0, 0]])
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    hooked = adapter.map_attention(ids, mask, lambda index, att: att.clone())
    with torch.inference_mode():
        reference = adapter.model(
            input_ids=ids, attention_mask=mask, output_attentions=True
        ).attentions
    assert len(hooked) == 2 and all(torch.equal(h, r) for h, r in zip(hooked, reference))
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2), attn_implementation="eager").eval()
    with torch.inference_mode():
        logits = lm(input_ids=ids[:1]).logits
    residual = adapter.residual_stream(ids[:1], mask[:1])
    assert len(residual) == 2 and residual[-1].shape == (1, 6, 24)
    assert torch.allclose(adapter.unembed(residual[-1]), logits, atol=1e-5)
