"""Machinery of the pipeline: config, stage runner, atomic I/O, model loading, alignment, the attention reduction, figures, claims and notebook access (`results`)."""
