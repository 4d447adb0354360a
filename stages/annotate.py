"""annotate stage: sentences/ → tokens/ (one part per sentence part) + corpus_stats.parquet.

Each sentence part is parsed with spaCy (`nlp.pipe`; the parse is cached per part and spaCy model
under data/cache/spacy/, so another tokenizer or model reuses it) and its words' features are given
to the model's pieces by character offsets (rule: pipeline/data/alignment.py). Parts are the executor's
work units: each is written atomically with its additive statistic counts, so a killed run resumes
at the first missing part, and the corpus statistics are the merged counts of all parts.

Output `tokens/part-NNNNN.parquet`, one row per model piece: sentence_id, position, token_id, piece,
char_start, char_end, word_index (-1: no word), pos (Universal POS, spaCy pos_), tag, dep,
head_word_index. A piece with no word (trailing whitespace) gets pos SPACE, tag _SP, dep "_"; the
special pieces put around a sentence (model.bos, resolved: a BOS piece at position 0 with pos/tag BOS;
model.add_special_tokens, by default for encoders: the tokenizer's own, such as BERT's [CLS] before
and [SEP] after, with the piece as pos/tag) get word_index -1 and dep "_". `tokens/meta.json` lists
the parts and the tag vocabularies, which come from the spaCy model's label sets (known before any
parsing) and the special pieces' tags, not from the corpus. The exemplar pool's parts (pool-NNNNN) are annotated alike; corpus_stats counts the
analysis sample only."""

from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import fingerprint as content_hash
from pipeline.data.alignment import align_pieces
from pipeline.data.nlp import installed_version, load_spacy, processes, spacy_identity
from pipeline.data.syntax_stats import (
    STATS_SCHEMA,
    add_counts,
    format_comparison,
    statistic_counts,
    statistics_table,
)
from pipeline.errors import PipelineError
from pipeline.models.loading import (
    SpecialPieces,
    bos_record,
    load_tokenizer,
    local_identity,
    max_positions,
    resolve_source,
    special_pieces,
    tokenizer_source,
)
from pipeline.run import io
from pipeline.run.executor import Resources, WorkUnit, make_executor, tqdm_bar
from pipeline.run.parts import PartedOutput, is_pool, part_paths, read_part
from pipeline.run.stage import Output, check_schema

NAME = "annotate"
VERSION = 2
INPUTS = ("sentences",)
TOKENS_SCHEMA = {
    "sentence_id": pl.Int64,
    "position": pl.Int64,
    "token_id": pl.Int64,
    "piece": pl.String,
    "char_start": pl.Int64,
    "char_end": pl.Int64,
    "word_index": pl.Int64,
    "pos": pl.String,
    "tag": pl.String,
    "dep": pl.String,
    "head_word_index": pl.Int64,
}
OUTPUTS = (Output("tokens", TOKENS_SCHEMA), Output("corpus_stats.parquet", STATS_SCHEMA))
CONFIG = (
    "corpus.spacy_model",
    "annotate",
    "model.name",
    "model.gguf_file",
    "model.tokenizer",
    "model.revision",
    "model.bos",
    "model.add_special_tokens",
    "model.too_long",
)
TUNING = ("annotate.batch_size", "annotate.n_process", "executor")


def external_inputs(cfg) -> dict:
    return {
        "tokenizer": local_identity(tokenizer_source(cfg.model)),
        "spacy_model": installed_version(cfg.corpus.spacy_model),
        "model_config": local_identity(resolve_source(cfg.model.name, cfg.model.gguf_file)),
    }  # max_positions


WORD_SCHEMA = {
    "sentence_id": pl.Int64,
    "word_index": pl.Int64,
    "word": pl.String,
    "char_start": pl.Int64,
    "char_end": pl.Int64,
    "pos": pl.String,
    "tag": pl.String,
    "dep": pl.String,
    "head_word_index": pl.Int64,
}


def parse_words(sentences: pl.DataFrame, nlp, batch_size: int, n_process: int) -> pl.DataFrame:
    """One row per spaCy token of every sentence; arrays come from Doc.to_array, not token loops."""
    strings = nlp.vocab.strings
    chunks = []
    texts = sentences["text"].to_list()
    docs = nlp.pipe(texts, batch_size=batch_size, n_process=n_process)
    for sid, doc in zip(sentences["sentence_id"].to_list(), docs):
        arr = doc.to_array(
            ["IDX", "LENGTH", "POS", "TAG", "DEP", "HEAD"]
        )  # uint64: hashes stay unsigned
        n = len(doc)
        chunks.append((sid, n, arr, [t.text for t in doc]))
    if not chunks:
        return pl.DataFrame(schema=WORD_SCHEMA)
    sid = np.concatenate([np.full(n, s, dtype=np.int64) for s, n, _, _ in chunks])
    arr = np.concatenate([a for _, _, a, _ in chunks])
    word_index = np.concatenate([np.arange(n) for _, n, _, _ in chunks])

    def names(ids):
        unique, inverse = np.unique(ids, return_inverse=True)
        return np.array([strings[int(u)] for u in unique], dtype=object)[inverse]

    offsets = arr[:, [0, 1, 5]].astype(np.int64)  # HEAD is a relative offset: negative values wrap
    return pl.DataFrame(
        {
            "sentence_id": sid,
            "word_index": word_index,
            "word": [w for _, _, _, words in chunks for w in words],
            "char_start": offsets[:, 0],
            "char_end": offsets[:, 0] + offsets[:, 1],
            "pos": names(arr[:, 2]),
            "tag": names(arr[:, 3]),
            "dep": names(arr[:, 4]),
            "head_word_index": word_index + offsets[:, 2],
        },
        schema=WORD_SCHEMA,
    )


def cached_parse(
    nlp, sentences: pl.DataFrame, cache_dir: Path, batch_size: int, n_process: int
) -> tuple[pl.DataFrame, bool]:
    key = content_hash(
        {
            "spacy": spacy_identity(nlp),
            "pipes": nlp.pipe_names,
            "parser_code": inspect.getsource(parse_words),
            "sentences": sentences.select("sentence_id", "text").hash_rows(seed=0).to_list(),
        }
    )
    path = cache_dir / "spacy" / f"{key}.parquet"
    if io.verify(path):  # a damaged or half-written cache file is never read: parsed again
        return pl.read_parquet(path), True
    words = parse_words(sentences, nlp, batch_size, n_process)
    io.write_parquet(words, path)
    return words, False


ALIGNMENT_COUNTS = (
    "whitespace_pieces",
    "pieces_spanning_words",
    "pieces_splitting_a_character",
    "pieces_without_word",
)


def align_corpus(sentences: pl.DataFrame, words: pl.DataFrame, tok) -> tuple[pl.DataFrame, dict]:
    texts = sentences["text"].to_list()
    encoded = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
    spans = words.group_by("sentence_id", maintain_order=True).agg("char_start", "char_end")
    spans = dict(
        zip(
            spans["sentence_id"].to_list(),
            zip(spans["char_start"].to_list(), spans["char_end"].to_list()),
        )
    )
    counts = dict.fromkeys(ALIGNMENT_COUNTS, 0)
    word_columns, ids_columns, offsets_columns, sid_columns = [], [], [], []
    for sid, text, ids, offsets in zip(
        sentences["sentence_id"].to_list(), texts, encoded["input_ids"], encoded["offset_mapping"]
    ):
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
    pieces = pl.DataFrame(
        {
            "sentence_id": np.concatenate(sid_columns),
            "position": np.concatenate([np.arange(n) for n in lengths]),
            "token_id": token_ids,
            "piece": tok.convert_ids_to_tokens(token_ids.tolist()),
            "char_start": offsets[:, 0],
            "char_end": offsets[:, 1],
            "word_index": np.concatenate(word_columns),
        }
    )
    features = words.select("sentence_id", "word_index", "pos", "tag", "dep", "head_word_index")
    pieces = pieces.join(
        features, on=["sentence_id", "word_index"], how="left", maintain_order="left"
    )
    pieces = pieces.with_columns(
        pl.col("pos").fill_null("SPACE"),
        pl.col("tag").fill_null("_SP"),
        pl.col("dep").fill_null("_"),
        pl.col("head_word_index").fill_null(-1),
    )
    return pieces, counts


def apply_length_limit(pieces: pl.DataFrame, limit: int, mode: str) -> tuple[pl.DataFrame, int]:
    lengths = pieces.group_by("sentence_id").agg(n=pl.len())
    too_long = lengths.filter(pl.col("n") > limit)["sentence_id"]
    if too_long.len() == 0:
        return pieces, 0
    if mode == "drop":
        return pieces.filter(~pl.col("sentence_id").is_in(too_long.implode())), too_long.len()
    return pieces.filter(pl.col("position") < limit), too_long.len()


def add_special_pieces(pieces: pl.DataFrame, tok, special: SpecialPieces) -> pl.DataFrame:
    """The special pieces around every sentence: `before` at positions 0.., the text's pieces shifted after them,
    `after` at the end; no word, no characters, their tag as pos and tag."""
    if not special.count or not pieces.height:
        return pieces
    ends = pieces.group_by("sentence_id").agg(
        end=pl.col("position").max() + 1 + len(special.before)
    )
    rows = []
    for ids, at in (
        (special.before, lambda k: pl.lit(k, pl.Int64)),
        (special.after, lambda k: pl.col("end") + k),
    ):
        for k, token in enumerate(ids):
            tag = special.tags[token]
            rows.append(
                ends.select(
                    "sentence_id",
                    position=at(k),
                    token_id=pl.lit(token, pl.Int64),
                    piece=pl.lit(tok.convert_ids_to_tokens(token)),
                    char_start=pl.lit(0, pl.Int64),
                    char_end=pl.lit(0, pl.Int64),
                    word_index=pl.lit(-1, pl.Int64),
                    pos=pl.lit(tag),
                    tag=pl.lit(tag),
                    dep=pl.lit("_"),
                    head_word_index=pl.lit(-1, pl.Int64),
                )
            )
    shifted = pieces.with_columns(pl.col("position") + len(special.before))
    return pl.concat([shifted, *(r.select(shifted.columns) for r in rows)]).sort(
        "sentence_id", "position"
    )


# spaCy 2's English coarse tags, which the paper used: a fixed function of the fine-grained (Penn Treebank) tag,
# where spaCy 3 decides AUX and SCONJ from context. Every verb tag is VERB (auxiliaries and, as in spaCy 2.0,
# modals included: spaCy 3 has AUX), every IN is ADP (spaCy 3 has SCONJ for subordinators), RP is ADP.
# The 16 tags: ADJ ADP ADV CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SPACE SYM VERB X.
PAPER_TAGS = {
    **dict.fromkeys([".", ",", ":", "-LRB-", "-RRB-", "``", "''", '""', "HYPH", "NFP"], "PUNCT"),
    **dict.fromkeys(["$", "#", "SYM"], "SYM"),
    **dict.fromkeys(["AFX", "JJ", "JJR", "JJS"], "ADJ"),
    "CC": "CCONJ",
    "CD": "NUM",
    **dict.fromkeys(["DT", "PDT"], "DET"),
    **dict.fromkeys(["EX", "PRP", "PRP$", "WDT", "WP", "WP$"], "PRON"),
    **dict.fromkeys(["FW", "LS", "ADD", "GW", "XX"], "X"),
    **dict.fromkeys(["IN", "RP"], "ADP"),
    **dict.fromkeys(["MD", "VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "BES", "HVS"], "VERB"),
    **dict.fromkeys(["NN", "NNS"], "NOUN"),
    **dict.fromkeys(["NNP", "NNPS"], "PROPN"),
    **dict.fromkeys(["POS", "TO"], "PART"),
    **dict.fromkeys(["RB", "RBR", "RBS", "WRB"], "ADV"),
    "UH": "INTJ",
    **dict.fromkeys(["SP", "_SP"], "SPACE"),
}


def paper_tags(pieces: pl.DataFrame) -> pl.DataFrame:
    """pos from the fine-grained tag as spaCy 2 gave it; a tag outside the table keeps spaCy 3's pos."""
    return pieces.with_columns(
        pos=pl.col("tag").replace_strict(PAPER_TAGS, default=pl.col("pos"), return_dtype=pl.String)
    )


def label_sets(nlp, special: SpecialPieces) -> dict[str, list[str]]:
    """The tag vocabularies from the spaCy model (before any parsing): every Universal POS tag spaCy knows
    (the paper's 16 among them), the parser's dependency labels, and our own labels for pieces without a
    word ("_") and the special pieces (BOS, [CLS], [SEP], ...)."""
    from spacy.parts_of_speech import IDS

    pos = set(IDS) | set(special.tag_set())  # "" included: a pipeline without a tagger gives it
    dep = set(nlp.get_pipe("parser").labels) | {"_", ""}
    return {"pos_vocab": sorted(pos), "dep_vocab": sorted(dep)}


def check_labels(pieces: pl.DataFrame, vocab: dict, part: str) -> None:
    for column, name in (("pos", "pos_vocab"), ("dep", "dep_vocab")):
        unknown = sorted(set(pieces[column].unique().to_list()) - set(vocab[name]))
        if unknown:
            raise PipelineError(
                f"{part}: spaCy gave {column} label(s) {unknown} that are not in its label set "
                f"({len(vocab[name])} labels); the spaCy model is inconsistent"
            )


class AnnotateWorker:
    """A sentence part → its tokens part and statistic counts; spaCy's parser and the tokenizer, loaded once."""

    def __init__(self, cfg, cache_dir: Path, n_process: int):
        self.cfg, self.cache_dir, self.n_process = cfg, cache_dir, n_process
        self.nlp = load_spacy(cfg.corpus.spacy_model, purpose="parse")
        self.tok = load_tokenizer(cfg.model)
        self.special = special_pieces(cfg.model, self.tok)
        self.limit = max_positions(cfg.model) - self.special.count
        self.vocab = label_sets(self.nlp, self.special)

    def __call__(self, unit: WorkUnit, progress=None) -> dict:
        cfg = self.cfg
        sentences = read_part(unit.inputs[0])
        if sentences.height == 0:  # an empty part gives an empty part: counted, never an error
            return self.write(
                unit,
                sentences,
                pl.DataFrame(schema=WORD_SCHEMA),
                pl.DataFrame(schema=TOKENS_SCHEMA),
                dict.fromkeys(ALIGNMENT_COUNTS, 0),
                False,
                0,
                progress,
            )
        words, cache_hit = cached_parse(
            self.nlp, sentences, self.cache_dir, cfg.annotate.batch_size, self.n_process
        )
        pieces, counts = align_corpus(sentences, words, self.tok)
        pieces, n_too_long = apply_length_limit(pieces, self.limit, cfg.model.too_long)
        if cfg.annotate.tagset == "paper":
            pieces = paper_tags(pieces)
        pieces = add_special_pieces(pieces, self.tok, self.special)
        return self.write(
            unit,
            sentences,
            words,
            pieces.sort("sentence_id", "position"),
            counts,
            cache_hit,
            n_too_long,
            progress,
        )

    def write(
        self, unit, sentences, words, pieces, counts, cache_hit, n_too_long, progress
    ) -> dict:
        check_labels(pieces, self.vocab, unit.inputs[0].name)
        check_schema(pieces, TOKENS_SCHEMA, unit.outputs[0].name)
        counts = {
            "sentences_in": sentences.height,
            "sentences": int(pieces["sentence_id"].n_unique()),
            "pieces": pieces.height,
            "words": words.height,
            "sentences_too_long": n_too_long,
            **counts,
            "statistics": statistic_counts(
                pieces.filter(~pl.col("pos").is_in(self.special.tag_set()))
            ),
        }
        io.write_parquet(pieces, unit.outputs[0])
        io.write_json(
            counts, unit.outputs[1]
        )  # written last: with the part, it marks the unit done
        if progress:
            progress(sentences.height)
        return {
            **counts,
            "parse_cache_hits": int(cache_hit),
        }  # not in the part's file: the same part, the same bytes


def run(ctx) -> dict:
    started = time.perf_counter()
    cfg = ctx.cfg
    nlp = load_spacy(cfg.corpus.spacy_model, purpose="parse")
    ctx.record("spacy", spacy_identity(nlp))
    tok = load_tokenizer(cfg.model)
    special = special_pieces(cfg.model, tok)
    ctx.record(
        "bos", bos_record(cfg.model, tok, special)
    )  # what position 0 is: compare warns when two runs differ
    ctx.record(
        "special_pieces",
        {"before": list(special.before), "after": list(special.after), "tags": special.tag_set()},
    )
    vocab = label_sets(nlp, special)
    inputs = part_paths(ctx.input_path("sentences"))
    out = PartedOutput(ctx.output_path("tokens"), ctx.fingerprint, ctx.force)
    sizes = [
        int(pl.scan_parquet(p).select(pl.len()).collect(engine="streaming").item()) for p in inputs
    ]
    units = [
        WorkUnit(
            k, (p,), (out.directory / p.name, out.directory / p.with_suffix(".json").name), size=n
        )
        for k, (p, n) in enumerate(zip(inputs, sizes))
    ]  # each tokens part named as its sentences part
    executor = make_executor(cfg.executor, tqdm_bar("sent"))
    n_process = 1 if cfg.executor.kind == "ray" else processes(cfg.annotate.n_process)
    report = executor.run(
        units,
        functools.partial(AnnotateWorker, cfg, ctx.cache_dir, n_process),
        Resources(),
        desc="annotate: parsing",
    )
    parts = [
        io.read_json(u.outputs[1]) for u in units if not is_pool(u.outputs[0])
    ]  # statistics: the analysis sample
    pool_sentences = sum(
        io.read_json(u.outputs[1])["sentences"] for u in units if is_pool(u.outputs[0])
    )
    totals = functools.reduce(add_counts, parts)
    too_long = totals.pop("sentences_too_long")
    out.finish({"parts": [u.outputs[0].name for u in units], **vocab})
    stats = statistics_table(totals.pop("statistics"), cfg.annotate.dependency_distances)
    ctx.write_parquet(stats, "corpus_stats.parquet")
    seconds = time.perf_counter() - started
    sentences_parsed = sum(c["sentences_in"] for c in report.counts.values())
    totals["parse_cache_hits"] = sum(c["parse_cache_hits"] for c in report.counts.values())
    return {
        **{k: v for k, v in totals.items() if k != "sentences_in"},
        "exemplar_pool_sentences_only": pool_sentences,
        "parts": len(units),
        "parts_resumed": report.resumed,
        "parts_damaged_recomputed": report.damaged,
        "parts_empty": sum(n == 0 for n in sizes),
        f"sentences_too_long_{cfg.model.too_long}": too_long,
        "max_positions": max_positions(cfg.model) - special.count,
        "sentences_per_second": round(sentences_parsed / seconds, 1) if sentences_parsed else None,
        "comparison": format_comparison(stats),
    }


def summary(counts: dict) -> str:
    return (
        f"{counts['pieces']} pieces in {counts['sentences']} sentences, {counts['parts']} parts "
        f"({counts['parts_resumed']} resumed, {counts['parse_cache_hits']} parse cache hits); whitespace-only pieces "
        f"given to the next word {counts['whitespace_pieces']}, spanning two words {counts['pieces_spanning_words']}, "
        f"splitting a character {counts['pieces_splitting_a_character']}; "
        f"{counts['sentences_per_second']} sentences/s\n" + counts["comparison"]
    )
