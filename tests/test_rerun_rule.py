"""The rerun rule's other half (pipeline/run/runner.py): a stage after a rerun stage reruns when the files it reads
changed, and its parts made from other inputs are never resumed, since a part may depend on values over all its
inputs (attend's row width for the exemplars' rows, the logit lens's sample share, the vocabularies)."""

from __future__ import annotations

import pytest

from helpers import run, table

STAGES = ["corpus", "annotate", "attend", "aggregate"]


@pytest.mark.slow
def test_a_larger_exemplar_pool_gives_the_tables_of_a_fresh_run(
    tiny_gpt2, config_factory, tmp_path
):
    """The analysis sample stays the same (its token parts are byte for byte the same) while the pool grows: attend
    must not resume its parts made for the smaller pool."""
    small = config_factory(tiny_gpt2, "corpus.max_sentences=8", "corpus.exemplar_sentences=10")
    run(small, STAGES)
    grown = config_factory(tiny_gpt2, "corpus.max_sentences=8", "corpus.exemplar_sentences=17")
    messages = []
    from pipeline.run.runner import run_pipeline

    run_pipeline(grown, STAGES, echo=messages.append)
    assert "attend" in [m.split("]")[0][1:] for m in messages if "] running" in m]
    fresh = config_factory(
        tiny_gpt2, "corpus.max_sentences=8", "corpus.exemplar_sentences=17", run_name="fresh"
    )
    run(fresh, STAGES)
    for name in ("head_metrics", "exemplars", "findings"):
        assert table(grown, name, None).equals(table(fresh, name, None)), name
