"""The model adapter: one object between the engine and a transformers model.

It says whether attention is causal and where the null position sits, hands over each layer's
attention map as the layer produces it (forward hooks on the self-attention modules, so no more
than one layer's maps is alive at a time), with the norms of what each head adds to the residual
stream per attended piece when asked (norm-weighted attention), and hands over the residual stream
at every depth (the embeddings, then the output of each block) in the same forward pass when asked,
with the unembedding (final norm, then the tied input embeddings) for the logit lens.

Norm-weighted attention (Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing
Transformers with Vector Norms"): head h adds α_ij f_h(x_j) to piece i, f_h(x) = (x W_V^h + b_V^h) W_O^h
(W_O^h: the head's rows of the output projection; its bias is not per head and is left out, as
Kobayashi et al. do), so ‖α_ij f_h(x_j)‖ = α_ij ‖f_h(x_j)‖. The value vectors v = x W_V + b_V are taken
from the value projection's own output (a forward hook), so they are not computed twice, and
‖f_h(x)‖ = ‖v R_hᵀ‖ with R_h the [d, d] factor of W_O^hᵀ = Q_h R_h (made once per layer; R_hᵀ R_h is
G_h = W_O^h W_O^hᵀ, so this is √(v G_h vᵀ)): B·T·H·d² per layer, not the B·T·H·d·D of projecting every
value vector through W_O^h."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.models.families import Family, family_of, module_at, refuse_unsupported
from pipeline.models.loading import load_with, model_identity, resolve_dtype, resolve_source


@dataclass(frozen=True)
class ValuePath:
    """One layer's way from its values to the residual stream, per head: the module whose output holds the value
    vectors, their columns in it (n_kv key/value heads of d), and for each key/value head the factors R_hᵀ of the
    heads that read it, side by side ([n_kv, d, group·d]; grouped-query attention: group = H / n_kv heads share one
    key/value head, heads k·group..(k+1)·group − 1 read head k, as transformers' repeat_kv lays them out)."""

    projection: torch.nn.Module
    columns: slice
    head_dim: int
    kv_heads: int
    factors: torch.Tensor  # [n_kv, d, group·d] float32

    def norms(self, projected: torch.Tensor) -> torch.Tensor:
        """The projection's output [B, T, ...] → ‖f_h(x_j)‖ = ‖v R_hᵀ‖ [B, H, T], float32 whatever the model's
        dtype: one batched matmul over the key/value heads."""
        v = projected[..., self.columns].float()
        B, T, _ = v.shape
        v = v.reshape(B * T, self.kv_heads, self.head_dim).transpose(0, 1)               # [n_kv, BT, d]
        u = torch.bmm(v, self.factors).reshape(self.kv_heads, B * T, -1, self.head_dim)  # [n_kv, BT, group, d]
        return torch.linalg.vector_norm(u, dim=-1).permute(1, 0, 2).reshape(B, T, -1).transpose(1, 2)


def value_factors(per_head: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """W_O^h [H, d, D] → R_hᵀ with W_O^hᵀ = Q_h R_h (QR; Q_h has orthonormal columns), so that ‖v W_O^h‖ = ‖v R_hᵀ‖
    and R_hᵀ R_h = W_O^h W_O^hᵀ = G_h: d² per head and piece instead of d·D, without the cancellation of forming
    v G_h vᵀ. Made once, in float64 on the CPU (Apple MPS has no float64); grouped by key/value head for norms()."""
    w = per_head.detach().to("cpu", torch.float64)
    R = torch.linalg.qr(w.transpose(1, 2), mode="r").R  # [H, d, d]
    H, d, _ = R.shape
    grouped = R.transpose(1, 2).reshape(kv_heads, H // kv_heads, d, d).permute(0, 2, 1, 3).reshape(kv_heads, d, -1)
    return grouped.to(per_head.device, torch.float32)


def gpt2_value_path(attention, num_heads: int) -> ValuePath:
    """GPT-2: c_attn is a Conv1D (x @ W + b, W [D, 3D]) whose output is [q | k | v]; c_proj's weight is [H·d, D],
    rows h·d:(h+1)·d being W_O^h. Every head has its own values."""
    D, d = attention.embed_dim, attention.head_dim
    per_head = attention.c_proj.weight.reshape(num_heads, d, -1)
    return ValuePath(attention.c_attn, slice(2 * D, 3 * D), d, num_heads, value_factors(per_head, num_heads))


def llama_value_path(attention, num_heads: int) -> ValuePath:
    """Llama and its kin: v_proj is a Linear with n_kv·d outputs (its bias, where it has one, included); o_proj's
    weight is [D, H·d] (y = x Wᵀ), so W_O^h = o_proj.weight[:, h·d:(h+1)·d]ᵀ. Grouped-query attention: head h reads
    key/value head h // (H / n_kv)."""
    d = attention.head_dim
    per_head = attention.o_proj.weight.T.reshape(num_heads, d, -1)  # [H, d, D]
    kv_heads = attention.v_proj.out_features // d
    return ValuePath(attention.v_proj, slice(None), d, kv_heads, value_factors(per_head, kv_heads))


def bert_value_path(attention, num_heads: int) -> ValuePath:
    """BERT and its kin (BertAttention): self.value is a Linear with H·d outputs; output.dense's weight is [D, H·d], so
    W_O^h = output.dense.weight[:, h·d:(h+1)·d]ᵀ, the layout Kobayashi et al. (2020) analysed. Post-LN: the norms are of
    what each head adds before the residual connection and the layer norm, as in their paper."""
    d = attention.self.attention_head_size
    per_head = attention.output.dense.weight.T.reshape(num_heads, d, -1)  # [H, d, D]
    return ValuePath(attention.self.value, slice(None), d, num_heads, value_factors(per_head, num_heads))


VALUE_PATHS = {"gpt2": (gpt2_value_path, ("c_attn", "c_proj")), "llama": (llama_value_path, ("v_proj", "o_proj")),
               "bert": (bert_value_path, ("self", "output"))}


def value_norms_reason(family: Family, config, attention_modules) -> str | None:
    """Why this model's value norms cannot be computed, or None when they can."""
    if family.values is None:
        return (f"value norms are not implemented for the {family.name} family "
                "(pipeline/models/families.py: Family.values)")
    if getattr(config, "clip_qkv", None) is not None:
        return "the model clips its value vectors (clip_qkv), which the value norms would leave out"
    _, modules = VALUE_PATHS[family.values]
    missing = [name for name in modules if not all(hasattr(m, name) for m in attention_modules)]
    return f"the {family.name} attention modules lack {', '.join(missing)}" if missing else None


class ModelAdapter:
    def __init__(self, model, device: torch.device, cfg: ModelConfig | None = None):
        self.model, self.device, self.cfg = model, device, cfg
        self.family: Family = family_of(model)
        self.causal = self.family.causal  # False: every piece attends to every piece (encoders)
        config = model.config
        self.num_layers, self.num_heads = int(config.num_hidden_layers), int(config.num_attention_heads)
        self.bos_token_id = getattr(config, "bos_token_id", None)
        self.eos_token_id = getattr(config, "eos_token_id", None)
        self.blocks = module_at(model, self.family.blocks)
        self.attention_modules = [getattr(block, self.family.attention) for block in self.blocks]
        if len(self.attention_modules) != self.num_layers:
            raise PipelineError(f"found {len(self.attention_modules)} attention modules for {self.num_layers} layers")
        self.value_norms_reason = value_norms_reason(self.family, config, self.attention_modules)
        self._value_paths: dict[int, ValuePath] = {}  # per layer, made on first use: the weights never change

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def identity(self) -> dict:
        return {**model_identity(self.model, self.cfg), "family": self.family.name, "causal": self.causal}

    def value_path(self, index: int) -> ValuePath:
        if index not in self._value_paths:
            if self.value_norms_reason is not None:
                raise PipelineError(f"no value norms for this model: {self.value_norms_reason}")
            make, _ = VALUE_PATHS[self.family.values]
            with torch.inference_mode():
                self._value_paths[index] = make(self.attention_modules[index], self.num_heads)
        return self._value_paths[index]

    def _hooked(self, hooks, input_ids, attention_mask, pre_hooks=()):
        """One forward pass with forward hooks [(module, hook)] and forward pre-hooks with keyword arguments
        [(module, hook(module, args, kwargs))] in place."""
        handles = [module.register_forward_hook(hook) for module, hook in hooks]
        handles += [module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in pre_hooks]
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()

    def map_attention(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, fn: Callable,
                      value_norms: bool = False, residuals: Callable | None = None) -> list:
        """fn(layer index, attention [B, H, T, T]) for every layer, called inside the forward pass as the
        layer produces it; returns fn's results in layer order. With value_norms, fn(index, attention, norms)
        also gets n[b, h, j] = ‖f_h(x_j)‖ [B, H, T] (float32), from the layer's value projection, which runs
        just before its attention output is produced. With residuals, residuals(depth, hidden [B, T, D]) gets the
        residual stream of the same forward pass at every depth d = 0..L (see residual_hooks)."""
        results = [None] * self.num_layers
        seen = [False] * self.num_layers
        norms: dict[int, torch.Tensor] = {}

        def hook(index):
            def on_output(module, args, output):
                weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if weights is None:
                    raise PipelineError("the model's attention returned no weights; it must be loaded with "
                                        "attn_implementation='eager'")
                results[index] = fn(index, weights, norms.pop(index)) if value_norms else fn(index, weights)
                seen[index] = True
            return on_output

        def value_hook(index, path):
            def on_projection(module, args, output):
                norms[index] = path.norms(output)
            return on_projection

        hooks = [(m, hook(index)) for index, m in enumerate(self.attention_modules)]
        if value_norms:
            paths = [self.value_path(index) for index in range(self.num_layers)]
            hooks += [(path.projection, value_hook(index, path)) for index, path in enumerate(paths)]
        depths, pre_hooks = [False] * (self.num_layers + 1), []
        if residuals is not None:
            pre_hooks, block_hooks = self.residual_hooks(residuals, depths)
            hooks += block_hooks
        self._hooked(hooks, input_ids, attention_mask, pre_hooks)
        if not all(seen):
            raise PipelineError(f"attention of layers {[k for k, s in enumerate(seen) if not s]} was never produced")
        if residuals is not None and not all(depths):
            raise PipelineError(f"the residual stream at depths {[d for d, s in enumerate(depths) if not s]} was never produced")
        return results

    def residual_hooks(self, fn: Callable, seen: list | None = None) -> tuple[list, list]:
        """(pre-hooks, forward hooks) that call fn(depth, hidden [B, T, D]) with the residual stream at depth 0 (the
        input of the first block: the embeddings, with position embeddings where the model adds them) and d = 1..L
        (the output of block d, before the final norm), marking seen[depth]. transformers 5.x hands the hidden
        states to a decoder block positionally (GPT-2 and Llama alike); a model that passes them as the keyword
        `hidden_states` works too, and a block that returns a tuple gives its first element."""
        seen = seen if seen is not None else [False] * (self.num_layers + 1)

        def on_input(module, args, kwargs):
            hidden = args[0] if args else kwargs.get("hidden_states")
            if hidden is None:
                raise PipelineError("the first block received no hidden states (neither positionally nor as hidden_states)")
            fn(0, hidden)
            seen[0] = True

        def on_output(depth):
            def hook(module, args, output):
                fn(depth, output[0] if isinstance(output, tuple) else output)
                seen[depth] = True
            return hook

        return ([(self.blocks[0], on_input)],
                [(block, on_output(index + 1)) for index, block in enumerate(self.blocks)])

    def residual_stream(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        embeddings: bool = False) -> list[torch.Tensor]:
        """The residual stream after each layer, [B, T, D] per layer, before the final norm; with embeddings, the
        input of the first block first (depths 0..L, as the logit lens reads them)."""
        out = [None] * (self.num_layers + 1)

        def keep(depth, hidden):
            out[depth] = hidden.detach()

        pre_hooks, hooks = self.residual_hooks(keep)
        self._hooked(hooks, input_ids, attention_mask, pre_hooks if embeddings else ())
        return out if embeddings else out[1:]

    @property
    def unembed_reason(self) -> str | None:
        """Why this model's residual stream cannot be decoded into the vocabulary here, or None: the adapter holds
        the base model without its LM head, so the unembedding must be the (tied) input embeddings."""
        if not getattr(self.model.config, "tie_word_embeddings", True):
            return ("its output embeddings are not tied to the input embeddings (tie_word_embeddings false), and "
                    "the adapter loads the base model without the LM head")
        try:
            known = bool(self.family.final_norm) and module_at(self.model, self.family.final_norm) is not None
        except AttributeError:
            known = False
        return None if known else f"the final norm of the {self.family.name} family is not known (pipeline/models/families.py)"

    @functools.cached_property
    def unembedding(self) -> torch.Tensor:
        """[V, D] float32: the tied input embeddings, the unembedding's weight (a copy only for a lower dtype)."""
        return self.model.get_input_embeddings().weight.detach().float()

    def unembed(self, residual: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [..., V] (float32 whatever the model's dtype) from a residual stream: the final norm, then the tied
        input embeddings; written into `out` when given (a buffer reused across calls: no fresh [N, V] allocation)."""
        reason = self.unembed_reason
        if reason is not None:
            raise PipelineError(f"cannot unembed: {reason}")
        norm = module_at(self.model, self.family.final_norm)
        with torch.inference_mode():
            return torch.matmul(norm(residual).float(), self.unembedding.T, out=out)

    @torch.inference_mode()
    def check_causal(self) -> None:
        """Refuse a model whose attention does not look the way its family says: ahead although causal, or never
        ahead although bidirectional (every statistic's masks depend on it)."""
        ids = torch.arange(3, 9, device=self.device).unsqueeze(0) % max(getattr(self.model.config, "vocab_size", 9), 9)
        first = self.map_attention(ids, torch.ones_like(ids), lambda index, att: att[0].float() if index == 0 else None)[0]
        ahead = torch.triu(first, diagonal=1).abs().max().item() > 1e-6
        if self.causal and ahead:
            raise PipelineError(f"{self.model.name_or_path!r} attends to later tokens although its family "
                                f"({self.family.name}) is causal; add it to pipeline/models/families.py as bidirectional")
        if not self.causal and not ahead:
            raise PipelineError(f"{self.model.name_or_path!r} never attends to later tokens although its family "
                                f"({self.family.name}) is bidirectional (a decoder configuration?)")


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
