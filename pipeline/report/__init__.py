"""Presenting a run: the figure kit (figures), the HTML kit (html), the claims check (claims), and
two runs side by side (compare). Which figures and claims exist is declared by the metrics."""

from pipeline.metrics import registry


def figure_specs() -> list:
    """Every metric's figures, in registry order (the paper's figure order)."""
    return [spec for m in registry() for spec in m.figures]
