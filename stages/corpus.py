"""corpus stage: documents → sentences/ (parts of `corpus.part_sentences` sentences).

Streamed in three passes, each bounded in memory by a part: the source's documents are written in
parts of `corpus.part_documents` (corpus/documents/); each document part is split into sentences
with spaCy's statistical sentence splitter and filtered for prose and for length in pieces of the
configured tokenizer (corpus/split/, one resumable unit per part, run by the executor); then the
kept sentences are sampled with the run's seed (`corpus.max_sentences`, uniform over all of them),
numbered, and written in parts (sentences/).

Output `sentences/part-NNNNN.parquet`: sentence_id (int, 0..n-1 in corpus order), doc_id, doc_title,
sentence_index (within its document), text, n_chars, n_words, n_pieces; `sentences/meta.json` lists
the parts and the counts. With `corpus.exemplar_sentences` (the paper's 100,000), further sentences
follow in `sentences/pool-NNNNN.parquet` (ids n..): later stages annotate them and search them for
exemplars, and compute no statistic from them."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.data.nlp import installed_version, load_spacy, processes, spacy_identity
from pipeline.data.sources import SourceCounts, iter_documents, parquet_files
from pipeline.errors import PipelineError
from pipeline.models.loading import load_tokenizer, local_identity, tokenizer_source
from pipeline.run import io
from pipeline.run.executor import Resources, WorkUnit, make_executor, tqdm_bar
from pipeline.run.io import file_identity
from pipeline.run.parts import POOL, PartedOutput, read_part
from pipeline.run.stage import Output, check_schema

NAME = "corpus"
VERSION = 2
INPUTS = ()
SCHEMA = {
    "sentence_id": pl.Int64,
    "doc_id": pl.Int64,
    "doc_title": pl.String,
    "sentence_index": pl.Int64,
    "text": pl.String,
    "n_chars": pl.UInt32,
    "n_words": pl.Int64,
    "n_pieces": pl.Int64,
}
SPLIT_SCHEMA = {k: v for k, v in SCHEMA.items() if k != "sentence_id"}
DOCUMENT_SCHEMA = {"doc_id": pl.Int64, "title": pl.String, "paragraphs": pl.List(pl.String)}
OUTPUTS = (Output("corpus"), Output("sentences", SCHEMA))
# The model's tokenizer counts pieces for the length filters.
CONFIG = ("seed", "corpus", "model.name", "model.gguf_file", "model.tokenizer", "model.revision")
TUNING = (
    "corpus.batch_size",
    "corpus.n_process",
    "corpus.part_documents",
    "executor",
)  # the same sentences
SPLIT_COUNTS = (
    "documents",
    "paragraphs_too_long_skipped",
    "sentences_split",
    "dropped_non_prose",
    "dropped_too_few_pieces",
    "dropped_too_many_pieces",
    "sentences_after_filters",
)


def external_inputs(cfg) -> dict:
    if (
        cfg.corpus.source == "parquet"
    ):  # a file, a directory or a glob: every file it names (none: the stage says so)
        try:
            corpus = {
                "corpus": [(f, file_identity(Path(f))) for f in parquet_files(cfg.corpus.path)]
            }
        except PipelineError:
            corpus = {}
    else:
        corpus = (
            {"corpus": file_identity(Path(cfg.corpus.path))}
            if cfg.corpus.source != "hub" and Path(cfg.corpus.path).is_file()
            else {}
        )
    return {
        **corpus,
        "tokenizer": local_identity(tokenizer_source(cfg.model)),
        "spacy_model": installed_version(cfg.corpus.spacy_model),
    }


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


def split_sentences(
    docs: pl.DataFrame, nlp, batch_size: int, n_process: int
) -> tuple[pl.DataFrame, int]:
    """Sentences of every paragraph, and how many paragraphs were too long for spaCy (nlp.max_length
    characters; skipped and counted: no sentence of the paper's kind is that long)."""
    items = [
        (doc_id, title, p) for doc_id, title, paragraphs in docs.iter_rows() for p in paragraphs
    ]
    too_long = sum(len(p) > nlp.max_length for _, _, p in items)
    items = [item for item in items if len(item[2]) <= nlp.max_length]
    rows = {"doc_id": [], "doc_title": [], "text": [], "n_words": []}
    texts = (p for _, _, p in items)
    for (doc_id, title, _), parsed in zip(
        items, nlp.pipe(texts, batch_size=batch_size, n_process=n_process)
    ):
        for sent in parsed.sents:
            text = sent.text.strip()
            if text:
                rows["doc_id"].append(doc_id)
                rows["doc_title"].append(title)
                rows["text"].append(text)
                rows["n_words"].append(sum(1 for t in sent if not (t.is_space or t.is_punct)))
    df = pl.DataFrame(
        rows,
        schema={"doc_id": pl.Int64, "doc_title": pl.String, "text": pl.String, "n_words": pl.Int64},
    )
    return df.with_columns(sentence_index=pl.int_range(pl.len()).over("doc_id")), too_long


class SplitWorker:
    """A document part → its filtered sentences (corpus/split/): spaCy's splitter and the tokenizer, loaded once."""

    def __init__(self, cfg, n_process: int):
        self.cfg, self.n_process = cfg, n_process
        self.nlp = load_spacy(cfg.corpus.spacy_model, purpose="sentences")
        self.tok = load_tokenizer(cfg.model)

    def __call__(self, unit: WorkUnit, progress=None) -> dict:
        c = self.cfg.corpus
        docs = read_part(unit.inputs[0])
        sentences, paragraphs_too_long = split_sentences(
            docs, self.nlp, c.batch_size, self.n_process
        )
        prose = np.array(
            [is_prose(t, n, c) for t, n in zip(sentences["text"], sentences["n_words"])], dtype=bool
        )
        kept = sentences.filter(pl.Series(prose, dtype=pl.Boolean))
        texts = kept["text"].to_list()
        n_pieces = (
            [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]]
            if texts
            else []
        )
        kept = kept.with_columns(
            n_pieces=pl.Series(n_pieces, dtype=pl.Int64), n_chars=pl.col("text").str.len_chars()
        )
        too_short, too_long = kept["n_pieces"] < c.min_pieces, kept["n_pieces"] > c.max_pieces
        kept = kept.filter(~too_short & ~too_long).select(*SPLIT_SCHEMA)
        check_schema(kept, SPLIT_SCHEMA, unit.outputs[0].name)
        counts = {
            "documents": docs.height,
            "paragraphs_too_long_skipped": paragraphs_too_long,
            "sentences_split": sentences.height,
            "dropped_non_prose": int((~prose).sum()),
            "dropped_too_few_pieces": int(too_short.sum()),
            "dropped_too_many_pieces": int(too_long.sum()),
            "sentences_after_filters": kept.height,
        }
        io.write_parquet(kept, unit.outputs[0])
        io.write_json(
            counts, unit.outputs[1]
        )  # written last: with the part, it marks the unit done
        if progress:
            progress(1)
        return counts


def write_documents(cfg, out: PartedOutput) -> dict:
    """The source streamed into document parts (the split workers' inputs); skipped when already written."""
    if out.finished:
        return out.finished
    counts = SourceCounts()
    parts, chunk = [], []

    def flush():
        df = pl.DataFrame(
            [(d.doc_id, d.title, d.paragraphs) for d in chunk], schema=DOCUMENT_SCHEMA, orient="row"
        )
        parts.append(io.write_parquet(df, out.path(len(parts))).name)
        chunk.clear()

    from tqdm.auto import tqdm

    for doc in tqdm(
        iter_documents(cfg.corpus, cfg.seed, counts), desc="corpus: reading", unit="doc"
    ):
        chunk.append(doc)
        if len(chunk) == cfg.corpus.part_documents:
            flush()
    if chunk:
        flush()
    meta = {
        "parts": parts,
        "source_records": counts.records,
        "documents_empty": counts.empty_documents,
        "paragraphs_invalid_utf8_skipped": counts.invalid_utf8_paragraphs,
        "source_sampling": counts.extra,
    }
    out.finish(meta)
    return meta


def sample_indices(
    total: int, n_analysis: int | None, n_pool: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of kept sentences (corpus order): the analysis sample, uniform over all of them, and the
    exemplar pool's further sentences, uniform over the rest. The analysis sample does not depend on the
    pool, so adding a pool leaves every statistic of a run unchanged."""
    rng = np.random.default_rng(seed)
    analysis = (
        np.sort(rng.choice(total, n_analysis, replace=False))
        if n_analysis and n_analysis < total
        else np.arange(total)
    )
    extra = min(n_pool or 0, total) - len(analysis)
    if extra <= 0:
        return analysis, np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(total), analysis, assume_unique=True)
    return analysis, np.sort(rng.choice(rest, extra, replace=False))


def select_sentences(
    cfg, split_paths: list[Path], kept_per_part: list[int], out: PartedOutput
) -> dict:
    """The kept sentences, sampled (seeded, uniform over all parts), numbered in corpus order and written in
    parts of corpus.part_sentences; one split part and one output part in memory at a time. The exemplar
    pool's sentences (if any) follow in parts of their own (pool-NNNNN), numbered after the analysis sample."""
    analysis, pool = sample_indices(
        sum(kept_per_part), cfg.corpus.max_sentences, cfg.corpus.exemplar_sentences, cfg.seed
    )
    size = cfg.corpus.part_sentences
    parts, next_id = [], 0

    def flush(df: pl.DataFrame, prefix: str, k: int):
        nonlocal next_id
        df = df.with_columns(
            sentence_id=pl.int_range(next_id, next_id + df.height, dtype=pl.Int64)
        ).select(*SCHEMA)
        check_schema(df, SCHEMA, "sentences")
        parts.append(io.write_parquet(df, out.path(k, prefix=prefix)).name)
        next_id += df.height
        return int(df["n_pieces"].sum())

    def write(keep: np.ndarray, prefix: str) -> int:
        """The sentences at `keep` in parts named prefix-NNNNN; their pieces."""
        buffer, offset, k, total = [], 0, 0, 0
        for path, n in zip(split_paths, kept_per_part):
            lo, hi = np.searchsorted(keep, [offset, offset + n])
            if hi > lo:
                buffer.append(read_part(path)[keep[lo:hi] - offset])
            offset += n
            while sum(b.height for b in buffer) >= size:
                merged = pl.concat(buffer)
                total += flush(merged.head(size), prefix, k)
                buffer, k = [merged.slice(size)], k + 1
        remainder = pl.concat(buffer) if buffer else pl.DataFrame(schema=SPLIT_SCHEMA)
        if remainder.height:
            total += flush(remainder, prefix, k)
        return total

    pieces = write(analysis, "part")
    n_analysis = next_id
    write(pool, POOL)
    meta = {
        "parts": parts,
        "sentences": n_analysis,
        "exemplar_pool_sentences": next_id,
        "mean_pieces": round(pieces / max(n_analysis, 1), 2),
    }
    out.finish(meta)
    return meta


def run(ctx) -> dict:
    cfg = ctx.cfg
    ctx.record(
        "spacy_sentences", spacy_identity(load_spacy(cfg.corpus.spacy_model, purpose="sentences"))
    )
    documents = write_documents(
        cfg, PartedOutput(ctx.output_path("corpus/documents"), ctx.fingerprint, ctx.force)
    )
    split = PartedOutput(ctx.output_path("corpus/split"), ctx.fingerprint, ctx.force)
    units = [
        WorkUnit(
            k,
            (split.directory.parent / "documents" / name,),
            (split.path(k), split.path(k, ".json")),
            size=1,
        )
        for k, name in enumerate(documents["parts"])
    ]
    executor = make_executor(cfg.executor, tqdm_bar("part"))
    n_process = (
        1 if cfg.executor.kind == "ray" else processes(cfg.corpus.n_process)
    )  # Ray: one process per actor
    report = executor.run(
        units, functools.partial(SplitWorker, cfg, n_process), Resources(), desc="corpus: splitting"
    )
    split_counts = [io.read_json(u.outputs[1]) for u in units]
    split.finish({"parts": [u.outputs[0].name for u in units]})
    totals = {k: sum(c[k] for c in split_counts) for k in SPLIT_COUNTS}
    if totals["sentences_after_filters"] == 0:
        too_long = totals["paragraphs_too_long_skipped"]
        limit = load_spacy(cfg.corpus.spacy_model, purpose="sentences").max_length
        raise PipelineError(
            f"no sentences left after filtering {totals['sentences_split']} split sentences "
            "(check corpus.min_words, min_pieces, max_pieces, require_terminal_punctuation)"
            + (
                f"; {too_long} paragraph(s) were skipped for spaCy's max_length ({limit:,} characters): "
                "break the text into paragraphs (blank lines between them in a text file, newlines "
                "inside a record's text in JSONL or Parquet)"
                if too_long
                else ""
            )
        )
    sentences = select_sentences(
        cfg,
        [u.outputs[0] for u in units],
        [c["sentences_after_filters"] for c in split_counts],
        PartedOutput(ctx.output_path("sentences"), ctx.fingerprint, ctx.force),
    )
    return {
        "source_records": documents["source_records"],
        "documents": totals["documents"],
        "documents_empty": documents["documents_empty"],
        "paragraphs_invalid_utf8_skipped": documents["paragraphs_invalid_utf8_skipped"],
        "source_sampling": documents.get(
            "source_sampling", {}
        ),  # how the documents were drawn, what was read
        **{k: totals[k] for k in SPLIT_COUNTS if k != "documents"},
        "sentences": sentences["sentences"],
        "exemplar_pool_sentences": sentences["exemplar_pool_sentences"],
        "parts": len(sentences["parts"]),
        "split_parts_resumed": report.resumed,
        "mean_pieces": sentences["mean_pieces"],
    }


def summary(counts: dict) -> str:
    return (
        f"{counts['sentences']} sentences in {counts['parts']} parts from {counts['documents']} documents "
        f"({counts['sentences_split']} split, {counts['dropped_non_prose']} non-prose, "
        f"{counts['dropped_too_few_pieces']} too short, {counts['dropped_too_many_pieces']} too long, "
        f"{counts['paragraphs_invalid_utf8_skipped']} paragraphs with invalid UTF-8 and "
        f"{counts['paragraphs_too_long_skipped']} longer than spaCy's max_length skipped); "
        f"mean {counts['mean_pieces']} pieces"
        + (
            f"; exemplar pool {counts['exemplar_pool_sentences']} sentences"
            if counts.get("exemplar_pool_sentences", 0) > counts["sentences"]
            else ""
        )
    )
