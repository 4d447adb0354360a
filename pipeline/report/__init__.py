"""Presenting a run: the figure kit (figures), the report's figures (figure_specs), the HTML kit (html), the
claims check (claims), and two runs side by side (compare)."""
