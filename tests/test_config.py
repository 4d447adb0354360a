"""Configs fail before any work starts, naming the key and the allowed values."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import load_config
from pipeline.errors import PipelineError

from conftest import ROOT

BASE = {"run_name": "x", "corpus": {"source": "text", "path": "a.txt"}}


def test_shipped_configs_validate():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.run_name and cfg.corpus.spacy_model
    paper = load_config(ROOT / "configs" / "paper.yaml")
    assert (
        paper.model.name,
        paper.corpus.hub_name,
        paper.corpus.max_documents,
        paper.corpus.max_sentences,
    ) == ("gpt2", "wikimedia/wikipedia", 10_000, 10_000)
    assert paper.corpus.hub_config.endswith(".en") and paper.model.bos == "never"
    # section 5.4: exemplars from all 100,000 sentences; spaCy 2's tags; the heads of Tables 1-3
    assert paper.corpus.exemplar_sentences == 100_000 and paper.annotate.tagset == "paper"
    assert paper.report.exemplar_heads == [(10, 10), (11, 2), (11, 10)]
    with pytest.raises(PipelineError, match="exemplar_sentences"):
        load_config(
            data=dict(BASE), overrides=["corpus.max_sentences=500", "corpus.exemplar_sentences=100"]
        )


def test_unknown_key_names_the_key_and_allowed_keys():
    with pytest.raises(PipelineError) as e:
        load_config(data={**BASE, "corpus": {**BASE["corpus"], "max_sentencs": 5}})
    assert "corpus.max_sentencs: unknown key" in str(e.value) and "max_sentences" in str(e.value)


def test_bad_value_names_allowed_values():
    with pytest.raises(PipelineError) as e:
        load_config(data={**BASE, "model": {"too_long": "split"}})
    assert (
        "model.too_long" in str(e.value)
        and "'truncate'" in str(e.value)
        and "'drop'" in str(e.value)
    )


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(
        data=dict(BASE),
        overrides=[
            "corpus.max_sentences=500",
            "report.exemplar_heads=[[1, 2]]",
            "model.tokenizer=null",
        ],
    )
    assert (
        cfg.corpus.max_sentences == 500
        and cfg.report.exemplar_heads == [(1, 2)]
        and cfg.model.tokenizer is None
    )
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

    from pipeline.data.nlp import processes

    cfg = load_config(data=dict(BASE), overrides=["annotate.n_process=auto", "corpus.n_process=2"])
    assert (
        processes(cfg.annotate.n_process) == len(os.sched_getaffinity(0))
        and processes(cfg.corpus.n_process) == 2
    )
    for bad in ("0", "-1", "many"):
        with pytest.raises(PipelineError, match="annotate.n_process"):
            load_config(data=dict(BASE), overrides=[f"annotate.n_process={bad}"])


# ---- strict types (issue 21 §6): every numeric field refuses non-finite numbers and booleans ----


def _numeric_fields(model=None, prefix: str = "") -> list[str]:
    """Dotted paths of every config field whose type admits an int or a float, in every section."""
    import typing

    from pydantic import BaseModel

    from pipeline.config import Config

    def leaves(annotation):
        args = typing.get_args(annotation)
        return [leaf for a in args for leaf in leaves(a)] if args else [annotation]

    out = []
    for name, field in (model or Config).model_fields.items():
        types = leaves(field.annotation)
        sections = [t for t in types if isinstance(t, type) and issubclass(t, BaseModel)]
        if sections:
            out += _numeric_fields(sections[0], f"{prefix}{name}.")
        elif any(t in (int, float) for t in types):
            out.append(prefix + name)
    return out


NUMERIC = _numeric_fields()


def _with(path: str, value) -> dict:
    return _merge(copy.deepcopy(BASE), path, value)


def test_every_numeric_field_is_found():
    assert {
        "seed",
        "corpus.max_sentences",
        "corpus.min_alpha_ratio",
        "attend.logit_lens_sample",
        "executor.connect_timeout_s",
        "executor.gpus_per_worker",
        "aggregate.roles.syntactic_ratio",
        "report.exemplar_heads",
    } <= set(NUMERIC)
    assert len(NUMERIC) >= 30


@pytest.mark.parametrize("path", NUMERIC)
def test_non_finite_numbers_and_booleans_are_refused_in_every_numeric_field(path):
    for bad in (float("inf"), float("-inf"), float("nan"), True, False):
        value = [[bad, 1]] if path == "report.exemplar_heads" else bad
        with pytest.raises(
            PipelineError, match=rf"invalid config: {path.replace('.', '[.]')}"
        ) as e:
            load_config(data=_with(path, value))
        assert "\n" not in str(e.value)


def test_a_timeout_of_infinity_from_yaml_is_refused(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "run_name: x\ncorpus: {source: text, path: a.txt, max_sentences: true}\n"
        "executor: {kind: ray, address: 'h:1', connect_timeout_s: .inf}\n"
    )
    with pytest.raises(PipelineError) as e:
        load_config(path)
    assert "corpus.max_sentences" in str(e.value) and "executor.connect_timeout_s" in str(e.value)


SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.text(max_size=4),
    st.none(),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NUMERIC), SCALARS), min_size=1, max_size=3))
def test_fuzzed_numeric_fields_are_valid_as_given_or_one_line_errors(assignments):
    from pipeline.run.stage import config_value

    data = copy.deepcopy(BASE)
    for path, value in assignments:
        _merge(data, path, value)
    try:
        cfg = load_config(data=data)
    except PipelineError as e:
        assert "\n" not in str(e) and str(e).startswith("invalid config: ")
        return
    final = dict((path, value) for path, value in assignments)  # the last assignment of a path wins
    for path, value in final.items():
        got = config_value(cfg, path)
        assert not isinstance(value, bool) and (
            not isinstance(value, float) or math.isfinite(value)
        )
        assert got == value and (
            type(got) is type(value) or (isinstance(got, float) and type(value) is int)
        )


def _merge(data: dict, path: str, value) -> dict:
    node = data
    *sections, leaf = path.split(".")
    for part in sections:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data
