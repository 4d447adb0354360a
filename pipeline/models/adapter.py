"""The model adapter: one object between the engine and a transformers model.

It says whether attention is causal and where the null position sits, hands over each layer's
attention map as the layer produces it (forward hooks on the self-attention modules, so no more
than one layer's maps is alive at a time), and can expose the residual stream after every layer and
the unembedding (final norm, then the tied input embeddings) for analyses such as the logit lens."""

from __future__ import annotations

from typing import Callable

import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.models.families import Family, family_of, refuse_unsupported
from pipeline.models.loading import load_with, model_identity, resolve_dtype, resolve_source


class ModelAdapter:
    def __init__(self, model, device: torch.device, cfg: ModelConfig | None = None):
        self.model, self.device, self.cfg = model, device, cfg
        self.family: Family = family_of(model)
        self.causal = self.family.causal
        self.null_position = 0  # the first piece, or BOS when model.prepend_bos
        config = model.config
        self.num_layers, self.num_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        self.bos_token_id = getattr(config, "bos_token_id", None)
        self.eos_token_id = getattr(config, "eos_token_id", None)
        self.blocks = getattr(model, self.family.blocks)
        self.attention_modules = [getattr(block, self.family.attention) for block in self.blocks]
        if len(self.attention_modules) != self.num_layers:
            raise PipelineError(f"found {len(self.attention_modules)} attention modules for {self.num_layers} layers")

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def identity(self) -> dict:
        return {**model_identity(self.model, self.cfg), "family": self.family.name, "causal": self.causal}

    def _hooked(self, modules, hook, input_ids, attention_mask):
        handles = [m.register_forward_hook(hook(index)) for index, m in enumerate(modules)]
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()

    def map_attention(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, fn: Callable) -> list:
        """fn(layer index, attention [B, H, T, T]) for every layer, called inside the forward pass as the
        layer produces it; returns fn's results in layer order."""
        results = [None] * self.num_layers
        seen = [False] * self.num_layers

        def hook(index):
            def on_output(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise PipelineError("the model's attention returned no weights; it must be loaded with "
                                        "attn_implementation='eager'")
                results[index] = fn(index, weights)
                seen[index] = True
            return on_output

        self._hooked(self.attention_modules, hook, input_ids, attention_mask)
        if not all(seen):
            raise PipelineError(f"attention of layers {[k for k, s in enumerate(seen) if not s]} was never produced")
        return results

    def residual_stream(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after each layer, [B, T, D] per layer, before the final norm."""
        out = [None] * self.num_layers

        def hook(index):
            def on_output(module, args, output):
                out[index] = (output[0] if isinstance(output, tuple) else output).detach()
            return on_output

        self._hooked(self.blocks, hook, input_ids, attention_mask)
        return out

    def unembed(self, residual: torch.Tensor) -> torch.Tensor:
        """Logits from a residual stream: the final norm, then the (tied) input embeddings."""
        if not getattr(self.model.config, "tie_word_embeddings", True):
            raise PipelineError("the unembedding of a model with untied output weights needs its LM head, "
                                "which the base model does not load")
        norm = getattr(self.model, self.family.final_norm)
        with torch.inference_mode():
            return norm(residual) @ self.model.get_input_embeddings().weight.T

    @torch.inference_mode()
    def check_causal(self) -> None:
        """Refuse a model whose attention looks ahead although its family says causal."""
        ids = torch.arange(3, 9, device=self.device).unsqueeze(0) % max(getattr(self.model.config, "vocab_size", 9), 9)
        first = self.map_attention(ids, torch.ones_like(ids), lambda index, att: att[0].float() if index == 0 else None)[0]
        if self.causal and torch.triu(first, diagonal=1).abs().max().item() > 1e-6:
            raise PipelineError(f"{self.model.name_or_path!r} attends to later tokens (bidirectional); "
                                "only causal LMs are supported")


def load_adapter(cfg: ModelConfig, device: torch.device, attn_implementation: str = "eager") -> ModelAdapter:
    """The base model (no LM head: attention needs only the trunk) with eager attention, behind an adapter.
    (`sdpa` gives no attention maps: only the benchmark's floor uses it.)"""
    from transformers import AutoConfig, AutoModel

    source = resolve_source(cfg.name, cfg.gguf_file)
    kwargs = {"revision": cfg.revision} if cfg.revision else {}
    config = load_with(AutoConfig.from_pretrained, source, "model config", **kwargs)
    refuse_unsupported(config, cfg.name)
    model = load_with(AutoModel.from_pretrained, source, "model", attn_implementation=attn_implementation,
                      dtype=resolve_dtype(cfg.dtype, device), **kwargs)
    model.eval().to(device)
    adapter = ModelAdapter(model, device, cfg)
    if attn_implementation == "eager":
        adapter.check_causal()
    return adapter
