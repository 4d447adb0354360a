"""Model families: where a family keeps its layers (a dotted path from the base model), their
self-attention, the final norm and the embeddings, whether its attention is causal, and how its value
vectors reach the residual stream (for norm-weighted attention, pipeline/models/adapter.py). A causal
family not listed is found by shape (a module list with one entry per layer, an attention child in
each) and has no norm weighting; a bidirectional model must belong to a listed family (BERT's
layout), because the engine must know its attention looks both ways."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError

# Model types whose self-attention is bidirectional: those of a family below run; the others are refused early.
BIDIRECTIONAL_TYPES = {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2",
                       "xlm-roberta", "camembert", "mpnet", "ernie", "modernbert"}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str              # attribute of the base model holding the list of layers
    attention: str           # attribute of a layer holding its self-attention
    final_norm: str          # attribute of the base model: the norm before the unembedding
    causal: bool = True
    values: str | None = None  # layout of the value and output projections (adapter.VALUE_PATHS); None: no norm weighting


FAMILIES = (
    Family("gpt2", ("gpt2",), blocks="h", attention="attn", final_norm="ln_f", values="gpt2"),
    Family("llama", ("llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo", "olmo2", "granite"),
           blocks="layers", attention="self_attn", final_norm="norm", values="llama"),
    Family("gpt_neox", ("gpt_neox",), blocks="layers", attention="attention", final_norm="final_layer_norm"),
    # BERT and the encoders that copy its layout: BertAttention returns (output, weights) like a decoder's attention;
    # post-LN, so no final norm (the logit lens is for causal models only).
    Family("bert", ("bert", "roberta", "electra", "camembert", "xlm-roberta"), blocks="encoder.layer",
           attention="attention", final_norm="", causal=False, values="bert"),
)


def is_bidirectional(config) -> bool:
    return config.model_type in BIDIRECTIONAL_TYPES and not getattr(config, "is_decoder", False)


def refuse_unsupported(config, name: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise PipelineError(f"{name!r} is an encoder-decoder model; only decoder-only and encoder-only models are "
                            "supported")
    if config.model_type in BIDIRECTIONAL_TYPES and not any(config.model_type in f.model_types for f in FAMILIES):
        supported = sorted(t for f in FAMILIES if not f.causal for t in f.model_types)
        raise PipelineError(f"{name!r} is a {config.model_type} encoder, whose layout is not known yet; the encoders "
                            f"supported are {', '.join(supported)} (pipeline/models/families.py)")
    if getattr(config, "is_decoder", False) and config.model_type in BIDIRECTIONAL_TYPES:
        raise PipelineError(f"{name!r} is a {config.model_type} model configured as a decoder (is_decoder); "
                            "load it as an encoder")


def module_at(root, path: str):
    """A dotted attribute path ("encoder.layer") from a module."""
    for part in path.split("."):
        root = getattr(root, part)
    return root


def family_of(model) -> Family:
    model_type = model.config.model_type
    refuse_unsupported(model.config, getattr(model, "name_or_path", model_type))
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return _infer(model)


def _infer(model) -> Family:
    """Any causal model whose base holds one module list with a layer per hidden layer, each with a child
    named like attention."""
    import torch

    n = model.config.num_hidden_layers
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList) and len(child) == n:
            attn = [c for c, _ in child[0].named_children() if "attn" in c.lower() or "attention" in c.lower()]
            norms = [c for c, m in model.named_children() if "norm" in c.lower() or c.endswith("ln_f")]
            if len(attn) == 1:
                return Family(model.config.model_type, (model.config.model_type,), blocks=name, attention=attn[0],
                              final_norm=norms[-1] if norms else "")
    raise PipelineError(f"do not know where a {model.config.model_type} model keeps its attention layers; "
                        "add its family to pipeline/models/families.py")
