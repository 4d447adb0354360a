"""Documents from a corpus source: hub datasets and local files.

A document is a list of paragraphs; sentences never cross a paragraph. WikiText raw files are
grouped into articles by their ` = Title = ` lines and detokenised. Parquet data (local, or a
Parquet-backed hub dataset such as wikimedia/wikipedia) is sampled uniformly from its footers
(`pipeline.data.sampling`); other sources are read through `datasets`."""

from __future__ import annotations

import functools
import glob
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.config import CorpusConfig
from pipeline.data.sampling import first_line, sample_parquet
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

REPLACEMENT_CHAR = (
    "\ufffd"  # what undecodable bytes become; such paragraphs are skipped and counted
)


@dataclass
class Document:
    doc_id: int
    title: str
    paragraphs: list[str]


@dataclass
class SourceCounts:
    records: int = 0
    invalid_utf8_paragraphs: int = 0
    empty_documents: int = 0
    extra: dict = field(default_factory=dict)


_TITLE = re.compile(r"^= (?!=)(.*?) =$")
_SECTION = re.compile(r"^(= ){2,}.*( =){2,}$")
_DETOK_RULES = [
    (re.compile(r" @([-,.])@ "), r"\1"),  # 1 @,@ 000 -> 1,000 ; well @-@ known
    (re.compile(r" (['’](?:s|re|ve|ll|d|m|t)\b)"), r"\1"),  # John 's -> John's
    (re.compile(r" (n't)\b"), r"\1"),
    (re.compile(r"(?<=s) '(?= )"), "'"),  # the soldiers ' sleep -> soldiers' sleep
    (re.compile(r" ([,.;:!?%)\]}])"), r"\1"),  # space before closing punctuation
    (re.compile(r"([(\[{]) "), r"\1"),  # space after opening brackets
    (re.compile(r"\" ([^\"]*?) \""), r'"\1"'),  # " quoted " -> "quoted"
    (re.compile(r"(\d) ([.,]) (\d)"), r"\1\2\3"),
    (re.compile(r"([$£€#]) (\d)"), r"\1\2"),
    (re.compile(r" {2,}"), " "),
]


def detokenize_wikitext(text: str) -> str:
    """Undo WikiText's tokenisation (` @-@ `, spaces around punctuation) so spaCy and BPE see normal text."""
    text = text.strip()
    for pattern, repl in _DETOK_RULES:
        text = pattern.sub(repl, text)
    return text


def _require_file(path: str | None) -> Path:
    p = Path(path or "")
    if not p.is_file():
        raise PipelineError(f"corpus file not found or not a file: {path}")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise PipelineError(f"corpus file {path} is not readable: {e.strerror}") from None
    return p


def _clean_paragraphs(raw: list[str], counts: SourceCounts) -> list[str]:
    out = []
    for text in raw:
        if REPLACEMENT_CHAR in text:
            counts.invalid_utf8_paragraphs += 1
            continue
        text = text.strip()
        if text:
            out.append(text)
    return out


def _wikitext_documents(path: Path, counts: SourceCounts) -> Iterator[tuple[str, list[str]]]:
    import datasets

    lines = datasets.load_dataset(
        "text", data_files=str(path), split="train", streaming=True, encoding_errors="replace"
    )
    title, paragraphs = "", []
    for record in lines:
        counts.records += 1
        line = record["text"].strip()
        if not line:
            continue
        match = _TITLE.match(line)
        if match:
            if paragraphs or title:
                yield title, paragraphs
            title, paragraphs = match.group(1).strip(), []
        elif _SECTION.match(line):
            continue
        else:
            paragraphs.append(line)
    if paragraphs or title:
        yield title, paragraphs


def parquet_files(path: str) -> list[str]:
    """corpus.path as one file, a directory of .parquet files, or a glob; sorted, which is the dump order."""
    p = Path(path)
    if p.is_file():
        return [str(_require_file(path))]
    files = sorted(p.glob("*.parquet")) if p.is_dir() else sorted(Path(f) for f in glob.glob(path))
    files = [f for f in files if f.is_file()]
    if not files:
        raise PipelineError(
            f"corpus Parquet files not found: {path} (a file, a directory of .parquet files, or a glob)"
        )
    return [str(f) for f in files]


def _hub_data_files(cfg: CorpusConfig) -> list[str]:
    """The hub dataset's data files for the split as `datasets` resolves them (hf:// paths), without reading them."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(cfg.hub_name, cfg.hub_config)
    except Exception as e:  # the hub raises many types; all mean "could not open"
        raise PipelineError(
            f"could not open dataset {cfg.hub_name!r} ({cfg.hub_config}): {first_line(e)}"
        ) from None
    data_files = builder.config.data_files or {}
    if data_files and cfg.split not in data_files:
        raise PipelineError(
            f"dataset {cfg.hub_name!r} ({cfg.hub_config}) has no split {cfg.split!r} "
            f"(splits: {sorted(str(k) for k in data_files)})"
        )
    return [str(f) for f in data_files.get(cfg.split, [])]


def _is_parquet(files: list[str]) -> bool:
    return bool(files) and all(f.endswith(".parquet") for f in files)


def _sampled_records(
    files: list[str], opener, cfg: CorpusConfig, seed: int, counts: SourceCounts
) -> Iterator[dict]:
    """`max_documents` rows (all when unset) drawn uniformly over every row of every file."""
    records, _ = sample_parquet(
        files, opener, cfg.max_documents, seed, [cfg.text_field], ["title"], counts.extra
    )
    return records


def _streamed_hub_records(cfg: CorpusConfig, seed: int, counts: SourceCounts):
    """The fallback for hub datasets that are not Parquet: a streaming shuffle, which only mixes a
    buffer of the first rows of a few shards (not a uniform sample of the whole dataset)."""
    import datasets

    log.warning(
        "dataset %r (%s) is not Parquet-backed: sampling with a streaming shuffle (buffer %d), "
        "which is not uniform over the whole dataset",
        cfg.hub_name,
        cfg.hub_config,
        cfg.shuffle_buffer,
    )
    counts.extra["sampling"] = "streaming_shuffle"
    try:
        ds = datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.split, streaming=True)
    except Exception as e:  # the hub raises many types; all mean "could not open"
        raise PipelineError(
            f"could not open dataset {cfg.hub_name!r} ({cfg.hub_config}): {first_line(e)}"
        ) from None
    ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    return ds.take(cfg.max_documents) if cfg.max_documents else ds


def _open_url(url: str):
    """hf:// paths open through huggingface_hub's HfFileSystem (fsspec), which reads only the byte ranges asked for."""
    import fsspec

    return fsspec.open(url, "rb")


SHOWN_LINES = 5  # line numbers of skipped JSONL lines kept in the counts and shown in the warning


def _jsonl_records(path: Path, text_field: str, counts: SourceCounts, warn: bool) -> Iterator[dict]:
    """JSON Lines, streamed. A line that is not a JSON object, or whose text field is not a string (or null), is
    skipped and counted with its line number (`jsonl_lines_skipped`, the first few in `jsonl_skipped_lines`), as
    other bad input is; a record without the field at all is a config mistake: one line."""
    skipped: list[int] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw.decode(
                "utf-8", errors="replace"
            ).strip()  # undecodable bytes: the paragraph is skipped later
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and text_field not in record:
                raise PipelineError(
                    f"corpus records have no field {text_field!r} (line {number}; fields: {sorted(record)})"
                )
            if not isinstance(record, dict) or not isinstance(
                record[text_field], (str, type(None))
            ):
                skipped.append(number)
                continue
            yield record
    if skipped:
        counts.extra["jsonl_lines_skipped"] = len(skipped)
        counts.extra["jsonl_skipped_lines"] = skipped[:SHOWN_LINES]
        if warn:
            log.warning(
                "corpus file %s: %d line(s) skipped, not a JSON object with a string %r (line%s %s%s)",
                path,
                len(skipped),
                text_field,
                "s" if len(skipped) > 1 else "",
                ", ".join(map(str, skipped[:SHOWN_LINES])),
                ", ..." if len(skipped) > SHOWN_LINES else "",
            )


def _records(cfg: CorpusConfig, counts: SourceCounts, seed: int, warn: bool = True):
    """The source's records (dicts with the text field and maybe a title)."""
    import datasets

    if cfg.source == "hub":
        files = _hub_data_files(cfg)
        if _is_parquet(files):
            return _sampled_records(files, _open_url, cfg, seed, counts)
        return _streamed_hub_records(cfg, seed, counts)
    if cfg.source == "parquet":
        return _sampled_records(
            parquet_files(cfg.path), functools.partial(open, mode="rb"), cfg, seed, counts
        )
    path = _require_file(cfg.path)
    if cfg.source == "jsonl":
        return _jsonl_records(path, cfg.text_field, counts, warn)
    return datasets.load_dataset(
        "text",
        data_files=str(path),
        split="train",
        streaming=True,
        sample_by="paragraph",
        encoding_errors="replace",
    )


def _record_documents(
    cfg: CorpusConfig, counts: SourceCounts, seed: int, warn: bool = True
) -> Iterator[tuple[str, list[str]]]:
    for record in _records(cfg, counts, seed, warn):
        counts.records += 1
        if cfg.text_field not in record:
            raise PipelineError(
                f"corpus records have no field {cfg.text_field!r} (fields: {sorted(record)})"
            )
        text = record[cfg.text_field] or ""
        yield str(record.get("title", "") or ""), text.split("\n")


def _documents(
    cfg: CorpusConfig, seed: int, counts: SourceCounts, warn: bool = True
) -> Iterator[Document]:
    """The source's documents with text, numbered in source order (warn: say what was skipped; the counting pass
    of a sample does not)."""
    if cfg.source == "wikitext_raw":
        raw = (
            (t, [detokenize_wikitext(p) for p in ps])
            for t, ps in _wikitext_documents(_require_file(cfg.path), counts)
        )
    else:
        raw = _record_documents(cfg, counts, seed, warn)
    doc_id = 0
    try:
        for title, paragraphs in raw:
            paragraphs = _clean_paragraphs(paragraphs, counts)
            if not paragraphs:
                counts.empty_documents += 1
                continue
            yield Document(doc_id, title, paragraphs)
            doc_id += 1
    except UnicodeDecodeError as e:
        raise PipelineError(
            f"corpus file {cfg.path} is not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
    if doc_id == 0:
        raise PipelineError(f"the corpus ({cfg.path or cfg.hub_name}) has no documents with text")


def iter_documents(cfg: CorpusConfig, seed: int, counts: SourceCounts) -> Iterator[Document]:
    """The documents of the source, streamed (never all in memory), or a seeded sample of `max_documents`:
    Parquet data (local or hub) is sampled uniformly from its footers, reading only the chosen row
    groups; other hub datasets are shuffled in a stream; other local files are read twice, once to
    count their documents so that the sample is uniform over the whole file."""
    keep = None
    if cfg.source not in ("hub", "parquet") and cfg.max_documents:
        n = sum(1 for _ in _documents(cfg, seed, SourceCounts(), warn=False))
        if cfg.max_documents < n:
            keep = set(
                np.random.default_rng(seed).choice(n, cfg.max_documents, replace=False).tolist()
            )
    for doc in _documents(cfg, seed, counts):
        if keep is None or doc.doc_id in keep:
            yield doc


def read_documents(cfg: CorpusConfig, seed: int) -> tuple[list[Document], SourceCounts]:
    """All documents in memory: for tests and notebooks; the corpus stage streams `iter_documents`."""
    counts = SourceCounts()
    return list(iter_documents(cfg, seed, counts)), counts
