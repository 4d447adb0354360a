"""Reading corpora: WikiText detokenisation and article grouping, bad bytes, missing files."""

from __future__ import annotations

import re

import pytest

from conftest import WIKITEXT
from pipeline.config import CorpusConfig
from pipeline.errors import PipelineError
from pipeline.sources import detokenize_wikitext, read_documents


@pytest.mark.parametrize("raw, clean", [
    (" The film 's success , which was a real @-@ life story . ", "The film's success, which was a real-life story."),
    (" It cost $ 3 @.@ 5 million ( about 1 @,@ 000 pounds ) ; he did n't care . ", "It cost $3.5 million (about 1,000 pounds); he didn't care."),
    (' He said " New York Fatty " to them : yes ! ', 'He said "New York Fatty" to them: yes!'),
    (" the enemy soldiers ' sleep and the ' quoted ' word ", "the enemy soldiers' sleep and the ' quoted ' word"),
])
def test_detokenize_wikitext(raw, clean):
    assert detokenize_wikitext(raw) == clean


def test_wikitext_grouped_into_articles_without_headings(tmp_path):
    path = tmp_path / "w.raw"
    path.write_text(" \n = Alpha = \n \n The first paragraph . \n \n = = Early life = = \n \n Second one @-@ here . \n"
                    " = Beta = \n \n Other text . \n", encoding="utf-8")
    docs, counts = read_documents(CorpusConfig(source="wikitext_raw", path=str(path)), seed=0)
    assert [(d.title, d.paragraphs) for d in docs] == [("Alpha", ["The first paragraph.", "Second one-here."]),
                                                       ("Beta", ["Other text."])]


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
    assert [p for d in docs for p in d.paragraphs] == ["A good paragraph here.", "Another good one."]


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
