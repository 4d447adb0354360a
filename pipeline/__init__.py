"""The machinery of the pipeline: config and stage contracts (config, stage, runner), the attention
engine (engine, sums, executor), the metric registry (metrics/), models (models/), presentation
(report/), and the corpus side (sources, nlp, alignment, syntax_stats); `results` for notebooks."""
