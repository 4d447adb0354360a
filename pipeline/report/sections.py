"""Sections of the report page that a metric has beyond its figures (figure_specs.SECTIONS names them): each
a function of the run's tables and the metric's status → HTML."""

from __future__ import annotations

import polars as pl

from pipeline.report.html import escape


def logit_lens_summary(lens: pl.DataFrame | None) -> str:
    """One line from logit_lens.parquet (the group "all"): pieces decoded, the final depth's top-1 share, and the first
    depth whose top-1 share reaches half of it."""
    rows = None if lens is None else lens.filter(pl.col("grouping") == "all").sort("depth")
    if rows is None or rows.is_empty():
        return ""
    final = rows["top1_share"][-1]
    half = rows.filter(pl.col("top1_share") >= final / 2)["depth"] if final > 0 else None
    where = (
        f"; it first reaches half of that at depth {half[0]}"
        if half is not None and len(half)
        else ""
    )
    return (
        f"<p>{rows['n'][0]:,} pieces decoded; at the final depth (depth {rows['depth'][-1]}, the model's own output) "
        f"the next piece is the top-1 prediction for {final:.1%} of them{where}.</p>"
    )


def logit_lens_section(
    lens: pl.DataFrame | None, exemplars: pl.DataFrame | None, state: str | None
) -> str:
    """The sentences whose next-piece predictions settle earliest and latest under the logit lens."""
    head = (
        "<h2>Logit lens: where the prediction settles</h2><p>After nostalgebraist (2020), "
        '"interpreting GPT: the logit lens": for each piece that the model\'s output predicts correctly (top-1), its '
        "settle depth is the depth from which the logit lens's top-1 prediction is the actual next piece at every "
        "later depth (0: already the embeddings). Sentences with at least three such pieces, by their mean settle "
        "depth: the earliest and the latest.</p>"
    )
    if state is not None and state != "enabled":
        return head + f"<p class='disabled'>logit_lens was not computed ({escape(state)})</p>"
    if exemplars is None or exemplars.is_empty():
        return (
            head
            + logit_lens_summary(lens)
            + "<p>No sentence has three pieces that the model predicts correctly.</p>"
        )
    out = [head, logit_lens_summary(lens)]
    for kind in ("earliest", "latest"):
        rows = exemplars.filter(pl.col("kind") == kind).sort("rank")
        items = "".join(
            f"<tr><td>{r['rank'] + 1}</td><td>{r['mean_settle_depth']:.2f}</td><td>{r['n_settled']} of "
            f"{r['n_decoded']}</td><td>{escape(r['text'] or '')}</td></tr>"
            for r in rows.iter_rows(named=True)
        )
        out.append(
            f"<h3>Settling {kind}</h3><table class='exemplars lens'><thead><tr><th>#</th><th>mean settle depth</th>"
            f"<th>pieces predicted</th><th>sentence</th></tr></thead><tbody>{items}</tbody></table>"
        )
    return "".join(out)
