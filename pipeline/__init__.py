"""The machinery of the pipeline: how stages run (run/: runner, stage contracts and fingerprints, parts,
executors, status), the text side (data/), models (models/), the forward pass and its reduction (engine/, sums),
the metrics' device parts (metrics/) and analysis parts (analysis/), presentation (report/), the config (config)
and `results` for notebooks."""
