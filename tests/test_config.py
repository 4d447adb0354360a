"""Configs fail before any work starts, naming the key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.config import load_config
from pipeline.errors import PipelineError

BASE = {"run_name": "x", "corpus": {"source": "text", "path": "a.txt"}}


def test_shipped_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.run_name and cfg.corpus.spacy_model
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert (paper.model.name, paper.corpus.hub_name, paper.corpus.max_documents, paper.corpus.max_sentences) == (
        "gpt2", "wikimedia/wikipedia", 10_000, 10_000)
    assert paper.corpus.hub_config.endswith(".en") and not paper.model.prepend_bos
    # section 5.4: exemplars from all 100,000 sentences; spaCy 2's tags; the heads of Tables 1-3
    assert paper.corpus.exemplar_sentences == 100_000 and paper.annotate.tagset == "paper"
    assert paper.report.exemplar_heads == [(10, 10), (11, 2), (11, 10)]
    with pytest.raises(PipelineError, match="exemplar_sentences"):
        load_config(data=dict(BASE), overrides=["corpus.max_sentences=500", "corpus.exemplar_sentences=100"])


def test_unknown_key_names_the_key_and_allowed_keys():
    with pytest.raises(PipelineError) as e:
        load_config(data={**BASE, "corpus": {**BASE["corpus"], "max_sentencs": 5}})
    assert "corpus.max_sentencs: unknown key" in str(e.value) and "max_sentences" in str(e.value)


def test_bad_value_names_allowed_values():
    with pytest.raises(PipelineError) as e:
        load_config(data={**BASE, "model": {"too_long": "split"}})
    assert "model.too_long" in str(e.value) and "'truncate'" in str(e.value) and "'drop'" in str(e.value)


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(data=dict(BASE), overrides=["corpus.max_sentences=500", "report.exemplar_heads=[[1, 2]]",
                                                  "model.tokenizer=null"])
    assert cfg.corpus.max_sentences == 500 and cfg.report.exemplar_heads == [(1, 2)] and cfg.model.tokenizer is None
    with pytest.raises(PipelineError, match="corpus.max_sentences"):
        load_config(data=dict(BASE), overrides=["corpus.max_sentences=-3"])
    with pytest.raises(PipelineError, match="KEY=VALUE"):
        load_config(data=dict(BASE), overrides=["corpus.max_sentences"])


def test_missing_config_file_and_cross_field_checks(tmp_path: Path):
    with pytest.raises(PipelineError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(PipelineError, match="hub_name is required"):
        load_config(data={"run_name": "x", "corpus": {"source": "hub"}})
    with pytest.raises(PipelineError, match="min_pieces must not exceed"):
        load_config(data={**BASE, "corpus": {**BASE["corpus"], "min_pieces": 50, "max_pieces": 10}})


def test_spacy_processes_are_a_positive_number_or_auto():
    import os

    from pipeline.nlp import processes

    cfg = load_config(data=dict(BASE), overrides=["annotate.n_process=auto", "corpus.n_process=2"])
    assert processes(cfg.annotate.n_process) == len(os.sched_getaffinity(0)) and processes(cfg.corpus.n_process) == 2
    for bad in ("0", "-1", "many"):
        with pytest.raises(PipelineError, match="annotate.n_process"):
            load_config(data=dict(BASE), overrides=[f"annotate.n_process={bad}"])
