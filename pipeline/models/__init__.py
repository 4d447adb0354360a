"""Models: where they come from (loading), what each family looks like inside (families), and the
adapter through which the engine sees a model's attention, residual stream and unembedding."""

from pipeline.models.adapter import ModelAdapter, load_adapter
from pipeline.models.loading import (
    bos_token_id,
    load_tokenizer,
    max_positions,
    model_identity,
    resolve_device,
    tokenizer_source,
)

__all__ = [
    "ModelAdapter",
    "load_adapter",
    "bos_token_id",
    "load_tokenizer",
    "max_positions",
    "model_identity",
    "resolve_device",
    "tokenizer_source",
]
