"""corpus stage: documents → sentences.parquet.

Sentences are split with spaCy's statistical sentence splitter, filtered for prose and length in
pieces of the configured tokenizer, then sampled with the run's seed.

Output `sentences.parquet`: sentence_id (int, 0..n-1 in corpus order), doc_id, doc_title,
sentence_index (within its document), text, n_chars, n_words, n_pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from pipeline.errors import PipelineError
from pipeline.models.loading import load_tokenizer, local_identity, tokenizer_source
from pipeline.nlp import installed_version, load_spacy, processes, spacy_identity
from pipeline.sources import read_documents
from pipeline.stage import Output, file_identity

NAME = "corpus"
VERSION = 1
INPUTS = ()
SCHEMA = {"sentence_id": pl.Int64, "doc_id": pl.Int64, "doc_title": pl.String, "sentence_index": pl.Int64,
          "text": pl.String, "n_chars": pl.UInt32, "n_words": pl.Int64, "n_pieces": pl.Int64}
OUTPUTS = (Output("sentences.parquet", SCHEMA),)
# The model's tokenizer counts pieces for the length filters.
CONFIG = ("seed", "corpus", "model.name", "model.gguf_file", "model.tokenizer", "model.revision")
TUNING = ("corpus.batch_size", "corpus.n_process")


def external_inputs(cfg) -> dict:
    corpus = {"corpus": file_identity(Path(cfg.corpus.path))} if cfg.corpus.source != "hub" and Path(cfg.corpus.path).is_file() else {}
    return {**corpus, "tokenizer": local_identity(tokenizer_source(cfg.model)),
            "spacy_model": installed_version(cfg.corpus.spacy_model)}
TERMINAL = (".", "!", "?", '."', '!"', '?"', ".'", ".)", ".”")


def is_prose(text: str, n_words: int, cfg) -> bool:
    """Drops headings, list items, tables and other non-sentences."""
    if n_words < cfg.min_words:
        return False
    if cfg.require_terminal_punctuation and not text.endswith(TERMINAL):
        return False
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    return letters >= cfg.min_alpha_ratio * max(len(visible), 1)


def split_sentences(docs, nlp, batch_size: int, n_process: int) -> tuple[pl.DataFrame, int]:
    """Sentences of every paragraph, and how many paragraphs were too long for spaCy (nlp.max_length
    characters; skipped and counted: no sentence of the paper's kind is that long)."""
    items = [(d.doc_id, d.title, p) for d in docs for p in d.paragraphs]
    too_long = sum(len(p) > nlp.max_length for _, _, p in items)
    items = [item for item in items if len(item[2]) <= nlp.max_length]
    rows = {"doc_id": [], "doc_title": [], "text": [], "n_words": []}
    texts = (p for _, _, p in items)
    for (doc_id, title, _), parsed in tqdm(zip(items, nlp.pipe(texts, batch_size=batch_size, n_process=n_process)),
                                           total=len(items), desc="corpus: splitting", unit="para"):
        for sent in parsed.sents:
            text = sent.text.strip()
            if text:
                rows["doc_id"].append(doc_id)
                rows["doc_title"].append(title)
                rows["text"].append(text)
                rows["n_words"].append(sum(1 for t in sent if not (t.is_space or t.is_punct)))
    df = pl.DataFrame(rows, schema={"doc_id": pl.Int64, "doc_title": pl.String, "text": pl.String, "n_words": pl.Int64})
    return df.with_columns(sentence_index=pl.int_range(pl.len()).over("doc_id")), too_long


def run(ctx) -> dict:
    cfg = ctx.cfg
    docs, source_counts = read_documents(cfg.corpus, cfg.seed)
    nlp = load_spacy(cfg.corpus.spacy_model, purpose="sentences")
    ctx.record("spacy_sentences", spacy_identity(nlp))
    sentences, paragraphs_too_long = split_sentences(docs, nlp, cfg.corpus.batch_size, processes(cfg.corpus.n_process))
    n_split = sentences.height

    prose = np.array([is_prose(t, n, cfg.corpus) for t, n in zip(sentences["text"], sentences["n_words"])], dtype=bool)
    sentences = sentences.filter(pl.Series(prose))
    tok = load_tokenizer(cfg.model)
    n_pieces = [len(ids) for ids in tok(sentences["text"].to_list(), add_special_tokens=False)["input_ids"]] if sentences.height else []
    sentences = sentences.with_columns(n_pieces=pl.Series(n_pieces, dtype=pl.Int64), n_chars=pl.col("text").str.len_chars())
    too_short = sentences["n_pieces"] < cfg.corpus.min_pieces
    too_long = sentences["n_pieces"] > cfg.corpus.max_pieces
    sentences = sentences.filter(~too_short & ~too_long)
    if sentences.height == 0:
        raise PipelineError(f"no sentences left after filtering {n_split} split sentences "
                            "(check corpus.min_words, min_pieces, max_pieces, require_terminal_punctuation)")
    n_filtered = sentences.height
    if cfg.corpus.max_sentences and cfg.corpus.max_sentences < sentences.height:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(sentences.height, cfg.corpus.max_sentences, replace=False))
        sentences = sentences[keep]
    sentences = sentences.with_columns(sentence_id=pl.int_range(pl.len(), dtype=pl.Int64)).select(
        "sentence_id", "doc_id", "doc_title", "sentence_index", "text", "n_chars", "n_words", "n_pieces")
    ctx.write_parquet(sentences, "sentences.parquet")
    return {
        "source_records": source_counts.records,
        "documents": len(docs),
        "documents_empty": source_counts.empty_documents,
        "paragraphs_invalid_utf8_skipped": source_counts.invalid_utf8_paragraphs,
        "paragraphs_too_long_skipped": paragraphs_too_long,
        "sentences_split": n_split,
        "dropped_non_prose": int((~prose).sum()),
        "dropped_too_few_pieces": int(too_short.sum()),
        "dropped_too_many_pieces": int(too_long.sum()),
        "sentences_after_filters": n_filtered,
        "sentences": sentences.height,
        "mean_pieces": round(float(sentences["n_pieces"].mean()), 2),
    }


def summary(counts: dict) -> str:
    return (f"{counts['sentences']} sentences from {counts['documents']} documents "
            f"({counts['sentences_split']} split, {counts['dropped_non_prose']} non-prose, "
            f"{counts['dropped_too_few_pieces']} too short, {counts['dropped_too_many_pieces']} too long, "
            f"{counts['paragraphs_invalid_utf8_skipped']} paragraphs with invalid UTF-8 and "
            f"{counts['paragraphs_too_long_skipped']} longer than spaCy's max_length skipped); "
            f"mean {counts['mean_pieces']} pieces")
