"""Where a model keeps its layers and attention, found from its structure (no list of families), and the few true
exceptions that no structure reveals.

Found generically (pipeline/models/adapter.py certifies each finding with the invariants of
pipeline/models/invariants.py on every load):
- the blocks: the module list with one entry per hidden layer;
- each block's attention: the module class the model itself names as the source of `output_attentions`
  (transformers 5's `_can_record_outputs`, with its output index and layer name), else the block's shallowest child
  named like attention whose output holds the weights;
- the value path and the output projection (pipeline/models/values.py), the final norm and the unembedding
  (the adapter).

The exceptions kept by name: which model types attend both ways (needed from the config alone, before any weight
loads), config attributes that change values or logits after the modules the adapter reads (clipped values, logit
scaling and soft-capping), and encoder-decoder models (refused)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError

# Model types whose self-attention is bidirectional (the adapter's probe checks it: check_causal).
BIDIRECTIONAL_TYPES = {
    "bert",
    "roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "xlm-roberta",
    "camembert",
    "mpnet",
    "ernie",
    "modernbert",
}

# Config attributes that transform the output logits after the LM head: (attribute, how). Granite divides by
# logits_scaling, Cohere multiplies by logit_scale, Gemma-2/3 soft-cap with final_logit_softcapping (c·tanh(z/c)).
LOGIT_TRANSFORMS = (
    ("logits_scaling", "divide"),
    ("logit_scale", "multiply"),
    ("final_logit_softcapping", "softcap"),
)

# Config attributes under which the value vectors the adapter reads are not those the attention mixes, although a
# short probe may not show it (OLMo's clip_qkv clamps them only where they are large).
VALUE_EXCEPTIONS = {
    "clip_qkv": "the model clips its value vectors (clip_qkv), which the value norms would leave out"
}


@dataclass(frozen=True)
class Family:
    """What the adapter found: the model type, the dotted path of the blocks, the attention module's path inside a block,
    the index of the attention weights in its output, and whether to ask it for them (output_attentions=True)."""

    name: str
    blocks: str
    attention: str
    weights_index: int = 1
    ask_for_weights: bool = False
    causal: bool = True


def is_bidirectional(config) -> bool:
    return config.model_type in BIDIRECTIONAL_TYPES and not getattr(config, "is_decoder", False)


def refuse_unsupported(config, name: str) -> None:
    if getattr(config, "is_encoder_decoder", False):
        raise PipelineError(
            f"{name!r} is an encoder-decoder model; only decoder-only and encoder-only models are "
            "supported"
        )
    if getattr(config, "is_decoder", False) and config.model_type in BIDIRECTIONAL_TYPES:
        raise PipelineError(
            f"{name!r} is a {config.model_type} model configured as a decoder (is_decoder); "
            "load it as an encoder"
        )


def model_label(model) -> str:
    """The model type and its checkpoint ("llama ('/models/x')"), for one-line errors that name the model."""
    name = getattr(model, "name_or_path", "") or ""
    return f"{model.config.model_type} ({name!r})" if name else model.config.model_type


def module_at(root, path: str):
    """A dotted attribute path ("encoder.layer") from a module; "" is the root."""
    for part in filter(None, path.split(".")):
        root = getattr(root, part)
    return root


def find_blocks(model) -> str:
    """The dotted path of the shallowest module list holding one module per hidden layer (an MoE's list of experts or
    a list of norms sits deeper, inside the blocks). Two such lists at one depth: the one whose modules hold what the
    model records as attention; still ambiguous, refused rather than guessed."""
    n = int(model.config.num_hidden_layers)
    found = [
        name
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n and name
    ]
    if not found:
        raise PipelineError(
            f"found no list of {n} layers in the {model_label(model)} model "
            "(pipeline/models/families.py: find_blocks)"
        )
    shallowest = [name for name in found if name.count(".") == min(x.count(".") for x in found)]
    recorded = _recorded_attention(model) or []
    if len(shallowest) > 1 and recorded:
        shallowest = [
            name
            for name in shallowest
            if any(
                _records(spec, sub, m)
                for spec in recorded
                for sub, m in module_at(model, name)[0].named_modules()
            )
        ] or shallowest
    if len(shallowest) != 1:
        raise PipelineError(
            f"the {model_label(model)} model has {len(shallowest)} lists of {n} modules at one depth "
            f"({', '.join(shallowest)}): which holds the layers is ambiguous (pipeline/models/families.py)"
        )
    return shallowest[0]


def _recorded_attention(model) -> list[tuple] | None:
    """The model's own `output_attentions` recorders (transformers 5's `_can_record_outputs`: a class, a class-name
    suffix, an OutputRecorder or a list of them, e.g. one class for sliding and one for full attention layers) as
    [(class or None, class-name suffix or None, output index, layer name or None)], or None."""
    recorders = getattr(model, "_can_record_outputs", None) or {}
    specs = recorders.get("attentions")
    if specs is None:
        return None
    found = []
    for spec in specs if isinstance(specs, (list, tuple)) else [specs]:
        if isinstance(spec, type):
            found.append((spec, None, 1, None))
        elif isinstance(spec, str):
            found.append((None, spec, 1, None))
        else:
            found.append(
                (spec.target_class, getattr(spec, "class_name", None), spec.index, spec.layer_name)
            )
    return found


def _records(spec: tuple, name: str, module) -> bool:
    """Whether a recorder spec (_recorded_attention) matches a block's submodule, as transformers' own hooks match it:
    by class (or class-name suffix of the module's path), then by layer name anywhere in the path."""
    cls, class_name, _, layer_name = spec
    if not (
        (cls is not None and isinstance(module, cls)) or (class_name and name.endswith(class_name))
    ):
        return False
    return not layer_name or f".{layer_name.strip('.')}." in f".{name}."


def _asks_for_weights(module) -> bool:
    return "output_attentions" in inspect.signature(module.forward).parameters


def find_family(model) -> Family:
    """The layout of a model's layers and attention, from its structure: the same attention path in every block."""
    config = model.config
    refuse_unsupported(config, getattr(model, "name_or_path", config.model_type))
    blocks_path = find_blocks(model)
    blocks = module_at(model, blocks_path)
    recorded = _recorded_attention(model)
    if recorded is not None:
        matches = [
            (name, spec[2])
            for name, m in blocks[0].named_modules()
            for spec in recorded
            if _records(spec, name, m)
        ]
        names = list(dict.fromkeys(name for name, _ in matches))
        index = matches[0][1] if matches else 1
    else:
        index = 1
        names = [
            name
            for name, m in blocks[0].named_modules()
            if name
            and "norm" not in type(m).__name__.lower()
            and any(w in name.rsplit(".", 1)[-1].lower() for w in ("attn", "attention"))
        ]
        names = (
            [n for n in names if n.count(".") == min(x.count(".") for x in names)] if names else []
        )
    if len(names) != 1:
        raise PipelineError(
            f"do not know where the {model_label(model)} model keeps its attention: candidates "
            f"{names or 'none'} in {type(blocks[0]).__name__} (pipeline/models/families.py: find_family)"
        )
    missing = [k for k, block in enumerate(blocks) if not _has_path(block, names[0])]
    if missing:
        raise PipelineError(
            f"the {model_label(model)} model has no attention module {names[0]!r} in layers {missing} "
            "(a hybrid of attention and other layers?): not supported"
        )
    attention = module_at(blocks[0], names[0])
    return Family(
        config.model_type,
        blocks_path,
        names[0],
        index,
        _asks_for_weights(attention),
        causal=not is_bidirectional(config),
    )


def _has_path(root, path: str) -> bool:
    try:
        return isinstance(module_at(root, path), torch.nn.Module)
    except AttributeError:
        return False
