"""One module per pipeline stage (corpus, annotate, attend, aggregate, report): NAME, OUTPUTS, fingerprint(cfg), run(ctx), summary(counts)."""
