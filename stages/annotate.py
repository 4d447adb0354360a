"""annotate stage: sentences.parquet → tokens.parquet (+ corpus_stats.parquet).

Each sentence is parsed once with spaCy (`nlp.pipe`; the parse is cached per corpus and spaCy
model under data/cache/spacy/, so another tokenizer or model reuses it) and its words' features
are given to the model's pieces by character offsets (rule: pipeline/alignment.py).

Output `tokens.parquet`, one row per model piece: sentence_id, position, token_id, piece,
char_start, char_end, word_index (-1: no word), pos (Universal POS, spaCy pos_), tag, dep,
head_word_index. A piece with no word (trailing whitespace) gets pos SPACE, tag _SP, dep "_"; a
prepended BOS piece at position 0 gets pos/tag BOS, dep "_"."""

from __future__ import annotations

import inspect
import time

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from pipeline import io
from pipeline.alignment import align_pieces
from pipeline.config import fingerprint as content_hash
from pipeline.models.loading import (bos_token_id, load_tokenizer, local_identity, max_positions, resolve_source,
                                     tokenizer_source)
from pipeline.nlp import installed_version, load_spacy, processes, spacy_identity
from pipeline.stage import Output
from pipeline.syntax_stats import STATS_SCHEMA, corpus_statistics, format_comparison

NAME = "annotate"
VERSION = 1
INPUTS = ("sentences.parquet",)
TOKENS_SCHEMA = {"sentence_id": pl.Int64, "position": pl.Int64, "token_id": pl.Int64, "piece": pl.String,
                 "char_start": pl.Int64, "char_end": pl.Int64, "word_index": pl.Int64, "pos": pl.String,
                 "tag": pl.String, "dep": pl.String, "head_word_index": pl.Int64}
OUTPUTS = (Output("tokens.parquet", TOKENS_SCHEMA), Output("corpus_stats.parquet", STATS_SCHEMA))
CONFIG = ("corpus.spacy_model", "annotate", "model.name", "model.gguf_file", "model.tokenizer",
          "model.revision", "model.prepend_bos", "model.too_long")
TUNING = ("annotate.batch_size", "annotate.n_process")


def external_inputs(cfg) -> dict:
    return {"tokenizer": local_identity(tokenizer_source(cfg.model)), "spacy_model": installed_version(cfg.corpus.spacy_model),
            "model_config": local_identity(resolve_source(cfg.model.name, cfg.model.gguf_file))}  # max_positions
WORD_SCHEMA = {"sentence_id": pl.Int64, "word_index": pl.Int64, "word": pl.String, "char_start": pl.Int64,
               "char_end": pl.Int64, "pos": pl.String, "tag": pl.String, "dep": pl.String,
               "head_word_index": pl.Int64}


def parse_words(sentences: pl.DataFrame, nlp, batch_size: int, n_process: int) -> pl.DataFrame:
    """One row per spaCy token of every sentence; arrays come from Doc.to_array, not token loops."""
    strings = nlp.vocab.strings
    chunks = []
    texts = sentences["text"].to_list()
    docs = nlp.pipe(texts, batch_size=batch_size, n_process=n_process)
    for sid, doc in tqdm(zip(sentences["sentence_id"].to_list(), docs), total=len(texts),
                         desc="annotate: parsing", unit="sent"):
        arr = doc.to_array(["IDX", "LENGTH", "POS", "TAG", "DEP", "HEAD"])  # uint64: hashes stay unsigned
        n = len(doc)
        chunks.append((sid, n, arr, [t.text for t in doc]))
    sid = np.concatenate([np.full(n, s, dtype=np.int64) for s, n, _, _ in chunks])
    arr = np.concatenate([a for _, _, a, _ in chunks])
    word_index = np.concatenate([np.arange(n) for _, n, _, _ in chunks])

    def names(ids):
        unique, inverse = np.unique(ids, return_inverse=True)
        return np.array([strings[int(u)] for u in unique], dtype=object)[inverse]

    offsets = arr[:, [0, 1, 5]].astype(np.int64)  # HEAD is a relative offset: negative values wrap
    return pl.DataFrame({
        "sentence_id": sid, "word_index": word_index,
        "word": [w for _, _, _, words in chunks for w in words],
        "char_start": offsets[:, 0], "char_end": offsets[:, 0] + offsets[:, 1],
        "pos": names(arr[:, 2]), "tag": names(arr[:, 3]), "dep": names(arr[:, 4]),
        "head_word_index": word_index + offsets[:, 2],
    }, schema=WORD_SCHEMA)


def cached_parse(ctx, sentences: pl.DataFrame) -> tuple[pl.DataFrame, bool]:
    cfg = ctx.cfg
    nlp = load_spacy(cfg.corpus.spacy_model, purpose="parse")
    identity = spacy_identity(nlp)
    ctx.record("spacy", identity)
    key = content_hash({"spacy": identity, "pipes": nlp.pipe_names, "parser_code": inspect.getsource(parse_words),
                       "sentences": sentences.select("sentence_id", "text").hash_rows(seed=0).to_list()})
    path = ctx.cache_dir / "spacy" / f"{key}.parquet"
    if io.verify(path):  # a damaged or half-written cache file is never read: parsed again
        return pl.read_parquet(path), True
    words = parse_words(sentences, nlp, cfg.annotate.batch_size, processes(cfg.annotate.n_process))
    io.write_parquet(words, path)
    return words, False


def align_corpus(sentences: pl.DataFrame, words: pl.DataFrame, tok) -> tuple[pl.DataFrame, dict]:
    texts = sentences["text"].to_list()
    encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    spans = words.group_by("sentence_id", maintain_order=True).agg("char_start", "char_end")
    spans = dict(zip(spans["sentence_id"].to_list(), zip(spans["char_start"].to_list(), spans["char_end"].to_list())))
    counts = {"whitespace_pieces": 0, "pieces_spanning_words": 0, "pieces_splitting_a_character": 0,
              "pieces_without_word": 0}
    word_columns, ids_columns, offsets_columns, sid_columns = [], [], [], []
    for sid, text, ids, offsets in zip(sentences["sentence_id"].to_list(), texts, encoded["input_ids"],
                                       encoded["offset_mapping"]):
        starts, ends = spans.get(sid, ([], []))
        word, c = align_pieces(text, np.asarray(offsets), np.asarray(starts), np.asarray(ends))
        for k in counts:
            counts[k] += c[k]
        word_columns.append(word)
        ids_columns.append(np.asarray(ids, dtype=np.int64))
        offsets_columns.append(np.asarray(offsets, dtype=np.int64).reshape(-1, 2))
        sid_columns.append(np.full(len(ids), sid, dtype=np.int64))
    lengths = np.array([len(w) for w in word_columns])
    token_ids = np.concatenate(ids_columns)
    offsets = np.concatenate(offsets_columns)
    pieces = pl.DataFrame({
        "sentence_id": np.concatenate(sid_columns),
        "position": np.concatenate([np.arange(n) for n in lengths]),
        "token_id": token_ids,
        "piece": tok.convert_ids_to_tokens(token_ids.tolist()),
        "char_start": offsets[:, 0], "char_end": offsets[:, 1],
        "word_index": np.concatenate(word_columns),
    })
    features = words.select("sentence_id", "word_index", "pos", "tag", "dep", "head_word_index")
    pieces = pieces.join(features, on=["sentence_id", "word_index"], how="left", maintain_order="left")
    pieces = pieces.with_columns(
        pl.col("pos").fill_null("SPACE"), pl.col("tag").fill_null("_SP"), pl.col("dep").fill_null("_"),
        pl.col("head_word_index").fill_null(-1))
    return pieces, counts


def apply_length_limit(pieces: pl.DataFrame, limit: int, mode: str) -> tuple[pl.DataFrame, int]:
    lengths = pieces.group_by("sentence_id").agg(n=pl.len())
    too_long = lengths.filter(pl.col("n") > limit)["sentence_id"]
    if too_long.len() == 0:
        return pieces, 0
    if mode == "drop":
        return pieces.filter(~pl.col("sentence_id").is_in(too_long.implode())), too_long.len()
    return pieces.filter(pl.col("position") < limit), too_long.len()


def prepend_bos(pieces: pl.DataFrame, tok) -> pl.DataFrame:
    bos = bos_token_id(tok)
    first = pieces.filter(pl.col("position") == 0).with_columns(
        position=pl.lit(-1, pl.Int64), token_id=pl.lit(bos, pl.Int64),
        piece=pl.lit(tok.convert_ids_to_tokens(bos)), char_start=pl.lit(0, pl.Int64), char_end=pl.lit(0, pl.Int64),
        word_index=pl.lit(-1, pl.Int64), pos=pl.lit("BOS"), tag=pl.lit("BOS"), dep=pl.lit("_"),
        head_word_index=pl.lit(-1, pl.Int64))
    return pl.concat([first, pieces]).with_columns(pl.col("position") + 1).sort("sentence_id", "position")


def run(ctx) -> dict:
    started = time.perf_counter()
    cfg = ctx.cfg
    sentences = ctx.read_parquet("sentences.parquet")
    words, cache_hit = cached_parse(ctx, sentences)
    tok = load_tokenizer(cfg.model)
    pieces, counts = align_corpus(sentences, words, tok)
    limit = max_positions(cfg.model) - int(cfg.model.prepend_bos)
    pieces, n_too_long = apply_length_limit(pieces, limit, cfg.model.too_long)
    if cfg.model.prepend_bos:
        pieces = prepend_bos(pieces, tok)
    pieces = pieces.sort("sentence_id", "position")
    ctx.write_parquet(pieces, "tokens.parquet")
    real = pieces.filter(pl.col("pos") != "BOS")
    stats = corpus_statistics(real, cfg.annotate.dependency_distances)
    ctx.write_parquet(stats, "corpus_stats.parquet")
    return {
        "sentences": int(pieces["sentence_id"].n_unique()),
        "pieces": pieces.height,
        "words": words.height,
        "parse_cache_hit": cache_hit,
        f"sentences_too_long_{cfg.model.too_long}": n_too_long,
        "max_positions": limit,
        **counts,
        "sentences_per_second": round(sentences.height / (time.perf_counter() - started), 1),
        "comparison": format_comparison(stats),
    }


def summary(counts: dict) -> str:
    return (f"{counts['pieces']} pieces in {counts['sentences']} sentences "
            f"(parse cache {'hit' if counts['parse_cache_hit'] else 'miss'}; whitespace-only pieces given to the next word "
            f"{counts['whitespace_pieces']}, spanning two words {counts['pieces_spanning_words']}, "
            f"splitting a character {counts['pieces_splitting_a_character']}); "
            f"{counts['sentences_per_second']} sentences/s\n" + counts["comparison"])
