"""Reading corpora: WikiText detokenisation and article grouping, bad bytes, missing files, and the
uniform sample of Parquet dumps (local files and Parquet-backed hub datasets)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.config import CorpusConfig
from pipeline.data.sources import detokenize_wikitext, read_documents
from pipeline.errors import PipelineError

from conftest import WIKITEXT


@pytest.mark.parametrize(
    "raw, clean",
    [
        (
            " The film 's success , which was a real @-@ life story . ",
            "The film's success, which was a real-life story.",
        ),
        (
            " It cost $ 3 @.@ 5 million ( about 1 @,@ 000 pounds ) ; he did n't care . ",
            "It cost $3.5 million (about 1,000 pounds); he didn't care.",
        ),
        (' He said " New York Fatty " to them : yes ! ', 'He said "New York Fatty" to them: yes!'),
        (
            " the enemy soldiers ' sleep and the ' quoted ' word ",
            "the enemy soldiers' sleep and the ' quoted ' word",
        ),
    ],
)
def test_detokenize_wikitext(raw, clean):
    assert detokenize_wikitext(raw) == clean


def test_wikitext_grouped_into_articles_without_headings(tmp_path):
    path = tmp_path / "w.raw"
    path.write_text(
        " \n = Alpha = \n \n The first paragraph . \n \n = = Early life = = \n \n Second one @-@ here . \n"
        " = Beta = \n \n Other text . \n",
        encoding="utf-8",
    )
    docs, counts = read_documents(CorpusConfig(source="wikitext_raw", path=str(path)), seed=0)
    assert [(d.title, d.paragraphs) for d in docs] == [
        ("Alpha", ["The first paragraph.", "Second one-here."]),
        ("Beta", ["Other text."]),
    ]


def test_real_wikitext_file_has_about_sixty_articles():
    docs, _ = read_documents(CorpusConfig(source="wikitext_raw", path=str(WIKITEXT)), seed=0)
    assert 55 <= len(docs) <= 70
    heading = re.compile(r"^(= )+.*( =)+$")
    assert not any("@-@" in p or heading.match(p) for d in docs for p in d.paragraphs)


def test_invalid_utf8_paragraphs_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"A good paragraph here.\n\nA bad \xff\xfe paragraph.\n\nAnother good one.\n")
    docs, counts = read_documents(CorpusConfig(source="text", path=str(path)), seed=0)
    assert counts.invalid_utf8_paragraphs == 1
    assert [p for d in docs for p in d.paragraphs] == [
        "A good paragraph here.",
        "Another good one.",
    ]


def test_missing_and_empty_corpus(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        read_documents(CorpusConfig(source="text", path=str(tmp_path / "missing.txt")), seed=0)
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(PipelineError, match="no documents"):
        read_documents(CorpusConfig(source="text", path=str(tmp_path / "empty.txt")), seed=0)


def test_jsonl_source_and_missing_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "One doc.\\nSecond para."}\n{"text": "Two."}\n', encoding="utf-8")
    docs, _ = read_documents(CorpusConfig(source="jsonl", path=str(path)), seed=0)
    assert [d.paragraphs for d in docs] == [["One doc.", "Second para."], ["Two."]]
    with pytest.raises(PipelineError, match="no field 'body'"):
        read_documents(CorpusConfig(source="jsonl", path=str(path), text_field="body"), seed=0)


def test_document_sampling_is_seeded(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("\n\n".join(f"Paragraph number {i}." for i in range(50)), encoding="utf-8")
    cfg = CorpusConfig(source="text", path=str(path), max_documents=10)
    pick = lambda seed: [d.paragraphs[0] for d in read_documents(cfg, seed)[0]]  # noqa: E731
    assert pick(1) == pick(1) and pick(1) != pick(2) and len(pick(1)) == 10


# --- Parquet dumps: a uniform, seeded sample drawn from the footers (pipeline/data/sampling.py) ---

DUMP_ROWS = [30, 70, 10, 90]  # rows per file: 200 in all
DUMP_GROUP_ROWS = [7, 20, 10, 16]  # rows per row group, per file


def write_dump(folder, rows=DUMP_ROWS, group_rows=DUMP_GROUP_ROWS, text_column="text"):
    """A local 'dump' of several Parquet files; row i of the dump has doc i, title 'Doc i' and its text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    start, paths = 0, []
    for k, (n, group) in enumerate(zip(rows, group_rows)):
        docs = list(range(start, start + n))
        table = pa.table(
            {
                "doc": docs,
                "title": [f"Doc {i}" for i in docs],
                text_column: [f"Text of document {i}.\nIts second paragraph." for i in docs],
            }
        )
        path = folder / f"train-{k:05d}-of-{len(rows):05d}.parquet"
        pq.write_table(table, path, row_group_size=group)
        paths.append(str(path))
        start += n
    return paths


def open_rb(path):
    return open(path, "rb")


def sampled_docs(paths, n, seed, counts=None):
    from pipeline.data.sampling import sample_parquet

    records, counts = sample_parquet(paths, open_rb, n, seed, ["text"], ["title"], counts)
    records = list(records)
    assert all(
        r["text"].startswith(f"Text of document {int(r['title'][4:])}.") for r in records
    )  # rows match
    return [int(r["title"][4:]) for r in records], counts


def test_parquet_sample_is_seeded_unique_ordered_and_sized(tmp_path):
    paths = write_dump(tmp_path / "dump")
    docs, counts = sampled_docs(paths, 25, seed=3)
    assert docs == sampled_docs(paths, 25, seed=3)[0]
    assert docs != sampled_docs(paths, 25, seed=4)[0]
    assert len(docs) == 25 and docs == sorted(
        set(docs)
    )  # the requested size, no duplicates, dump order
    assert (
        counts["sampling"] == "parquet_metadata"
        and counts["files"] == 4
        and counts["total_rows"] == 200
    )
    assert counts["row_groups"] == 5 + 4 + 1 + 6 and counts["sampled_rows"] == 25


def test_parquet_sample_is_uniform_over_files_and_rows(tmp_path):
    from scipy import stats

    paths = write_dump(tmp_path / "dump")
    total, n, seeds = sum(DUMP_ROWS), 20, 400
    included = np.zeros(total)
    for seed in range(seeds):
        docs, _ = sampled_docs(paths, n, seed)
        included[docs] += 1
    per_file = np.add.reduceat(included, np.cumsum([0] + DUMP_ROWS[:-1]))
    expected_file = seeds * n * np.array(DUMP_ROWS) / total  # proportional to the file's rows
    assert stats.chisquare(per_file, expected_file).pvalue > 1e-3
    p = n / total  # each row is included with probability n/N
    chi2 = (((included - seeds * p) ** 2) / (seeds * p * (1 - p))).sum()
    assert stats.chi2.sf(chi2, df=total - 1) > 1e-3
    assert included.min() > 0  # every row, in every file, can be drawn


def test_parquet_sample_reads_only_the_chosen_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    paths = write_dump(tmp_path / "dump")
    reads, opened = [], []
    real_read = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, *a, **k: reads.append(i) or real_read(self, i, *a, **k),
    )

    def spy_open(path):
        opened.append(path)
        return open(path, "rb")

    from pipeline.data.sampling import sample_parquet

    for seed in range(5):
        reads.clear(), opened.clear()
        records, counts = sample_parquet(paths, spy_open, 1, seed, ["text"])
        assert len(list(records)) == 1
        assert len(reads) == 1 and counts["row_groups_read"] == counts["row_groups_to_read"] == 1
        assert len(opened) == len(paths) + 1  # every footer, then the one file with the chosen row

    # a larger sample: exactly the row groups that hold chosen rows, computed here from the layout
    reads.clear()
    docs, counts = sampled_docs(paths, 12, seed=7)
    starts = np.cumsum([0] + DUMP_ROWS[:-1])
    holding = {
        (f, (d - starts[f]) // DUMP_GROUP_ROWS[f])
        for d in docs
        for f in [np.searchsorted(starts, d, "right") - 1]
    }
    assert counts["row_groups_read"] == len(reads) == len(holding) < counts["row_groups"]


def test_parquet_sample_of_at_least_the_dump_is_the_dump(tmp_path):
    paths = write_dump(tmp_path / "dump")
    assert sampled_docs(paths, 200, seed=1)[0] == list(range(200))
    assert sampled_docs(paths, 10_000, seed=1)[0] == list(range(200))
    assert sampled_docs(paths, None, seed=1)[0] == list(range(200))


@pytest.mark.parametrize("where", ["file", "directory", "glob"])
def test_parquet_source_takes_a_file_a_directory_or_a_glob(tmp_path, where):
    paths = write_dump(tmp_path / "dump")
    path = {
        "file": paths[1],
        "directory": str(tmp_path / "dump"),
        "glob": str(tmp_path / "dump" / "train-*.parquet"),
    }[where]
    docs, counts = read_documents(
        CorpusConfig(source="parquet", path=path, max_documents=15), seed=2
    )
    rows = 70 if where == "file" else 200
    assert len(docs) == 15 and counts.extra["total_rows"] == rows and counts.records == 15
    assert docs[0].paragraphs[1] == "Its second paragraph." and docs[0].title.startswith("Doc ")
    if where != "file":
        assert [d.title for d in docs] == [f"Doc {i}" for i in sampled_docs(paths, 15, seed=2)[0]]


def test_parquet_source_errors_are_one_line(tmp_path):
    paths = write_dump(tmp_path / "dump", rows=[5, 5], group_rows=[5, 5], text_column="body")
    with pytest.raises(PipelineError, match="has no field 'text'") as e:
        read_documents(
            CorpusConfig(source="parquet", path=str(tmp_path / "dump"), max_documents=3), seed=0
        )
    assert "\n" not in str(e.value) and paths[0] in str(e.value)
    (tmp_path / "bad.parquet").write_text("not parquet", encoding="utf-8")
    with pytest.raises(PipelineError, match="Parquet footer of .*bad.parquet") as e:
        read_documents(CorpusConfig(source="parquet", path=str(tmp_path / "bad.parquet")), seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(PipelineError, match="not found"):
        read_documents(
            CorpusConfig(source="parquet", path=str(tmp_path / "none-*.parquet")), seed=0
        )


def hub_cfg(**kw):
    return CorpusConfig(
        source="hub", hub_name="wikimedia/wikipedia", hub_config="20231101.en", **kw
    )


def test_hub_parquet_dataset_uses_the_parquet_sampler(tmp_path, monkeypatch):
    import datasets

    from pipeline.data import sources

    paths = write_dump(tmp_path / "dump")
    monkeypatch.setattr(
        sources, "_hub_data_files", lambda cfg: paths
    )  # as hf:// paths would be, but local
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **k: pytest.fail("the streaming path was used")
    )
    docs, counts = read_documents(hub_cfg(max_documents=10), seed=5)
    assert counts.extra["sampling"] == "parquet_metadata" and counts.extra["total_rows"] == 200
    assert [d.title for d in docs] == [f"Doc {i}" for i in sampled_docs(paths, 10, seed=5)[0]]


def test_hub_data_files_resolved_through_datasets(tmp_path):
    """The real resolution (load_dataset_builder's data files) on a local dataset folder, no network."""
    paths = write_dump(tmp_path / "dump")
    cfg = CorpusConfig(source="hub", hub_name=str(tmp_path / "dump"), max_documents=10)
    docs, counts = read_documents(cfg, seed=5)
    assert counts.extra["sampling"] == "parquet_metadata" and counts.extra["files"] == 4
    assert [d.title for d in docs] == [f"Doc {i}" for i in sampled_docs(paths, 10, seed=5)[0]]
    with pytest.raises(PipelineError, match="no split 'validation'"):
        read_documents(
            CorpusConfig(source="hub", hub_name=str(tmp_path / "dump"), split="validation"), seed=0
        )


def test_hub_dataset_not_in_parquet_falls_back_to_a_streaming_shuffle(
    tmp_path, monkeypatch, caplog
):
    import datasets

    from pipeline.data import sources

    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(f'{{"title": "Doc {i}", "text": "Text {i}."}}\n' for i in range(30)),
        encoding="utf-8",
    )
    local = datasets.load_dataset
    monkeypatch.setattr(sources, "_hub_data_files", lambda cfg: ["hf://datasets/x/y/train.jsonl"])
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **k: local("json", data_files=str(path), split="train", streaming=True),
    )
    with caplog.at_level("WARNING", logger="pipeline.data.sources"):
        docs, counts = read_documents(hub_cfg(max_documents=5, shuffle_buffer=10), seed=0)
    assert counts.extra == {"sampling": "streaming_shuffle"} and len(docs) == 5
    assert "not Parquet-backed" in caplog.text


def test_bad_jsonl_lines_are_skipped_and_counted_with_their_line_numbers(tmp_path, caplog):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        '{"text": "One doc."}\nnot json at all\n{"text": 5}\n\n[1, 2]\n{"text": null}\n{"text": "Two."}\n'
        '{"text": "Three.", "title": "T"}\n{"text": ["a"]}\n{"text": {"x": 1}}\n{"text": true}\n{"text": 7}\n',
        encoding="utf-8",
    )
    with caplog.at_level("WARNING", logger="pipeline.data.sources"):
        docs, counts = read_documents(CorpusConfig(source="jsonl", path=str(path)), seed=0)
    assert [d.paragraphs for d in docs] == [["One doc."], ["Two."], ["Three."]] and docs[
        2
    ].title == "T"
    assert counts.extra["jsonl_lines_skipped"] == 7 and counts.extra["jsonl_skipped_lines"] == [
        2,
        3,
        5,
        9,
        10,
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        len(warnings) == 1
        and "7 line(s) skipped" in warnings[0]
        and "lines 2, 3, 5, 9, 10, ..." in warnings[0]
    )


def test_a_jsonl_corpus_with_only_bad_lines_is_one_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": 5}\n{oops\n', encoding="utf-8")
    with pytest.raises(PipelineError, match="no documents with text"):
        read_documents(CorpusConfig(source="jsonl", path=str(path)), seed=0)
