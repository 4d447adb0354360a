"""The model adapter: one object between the engine and a transformers model.

It says whether attention is causal and where the null position sits, hands over each layer's
attention map as the layer produces it (forward hooks on the self-attention modules, so no more
than one layer's maps is alive at a time), with the norms of what each head adds to the residual
stream per attended piece when asked (norm-weighted attention, pipeline/models/values.py), and hands
over the residual stream at every depth (the embeddings, then the output of each block) in the same
forward pass when asked, with the unembedding (the final norm, the model's own LM head, tied or not,
and its logit scaling or soft-capping) for the logit lens.

Nothing here knows a family by name: the layers and attention are found from the model's structure
(pipeline/models/families.py), the value path and the final norm from a probe forward pass, and every
finding is certified by the invariants of pipeline/models/invariants.py when the model loads."""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.models import invariants
from pipeline.models.families import (
    LOGIT_TRANSFORMS,
    Family,
    find_family,
    is_bidirectional,
    model_label,
    module_at,
    refuse_unsupported,
)
from pipeline.models.loading import load_options, load_with, model_identity, resolve_source
from pipeline.models.values import ValuePath

UNCERTIFIED = "not certified yet (ModelAdapter.certify, pipeline/models/invariants.py)"


def _forcing_weights(module) -> Callable:
    """A forward pre-hook that asks an attention module for its weights (output_attentions=True), for the models
    (DeBERTa) whose attention returns them only when asked; the layers above are not asked, so they keep none."""
    position = list(inspect.signature(module.forward).parameters).index("output_attentions")

    def hook(m, args, kwargs):
        if len(args) > position:
            args = (*args[:position], True, *args[position + 1 :])
        else:
            kwargs = {**kwargs, "output_attentions": True}
        return args, kwargs

    return hook


class ModelAdapter:
    def __init__(
        self,
        model,
        device: torch.device,
        cfg: ModelConfig | None = None,
        lm=None,
        lm_reason: str | None = None,
    ):
        """model: the trunk (the base model); lm: the same weights with their LM head (causal models), or None with
        lm_reason saying why."""
        self.model, self.device, self.cfg, self.lm = model, device, cfg, lm
        self.lm_reason = lm_reason if lm is None else None
        if lm is None and self.lm_reason is None:
            self.lm_reason = "the model was loaded without its LM head"
        self.family: Family = find_family(model)
        self.causal = self.family.causal  # False: every piece attends to every piece (encoders)
        config = model.config
        self.num_layers, self.num_heads = (
            int(config.num_hidden_layers),
            int(config.num_attention_heads),
        )
        self.bos_token_id = getattr(config, "bos_token_id", None)
        self.eos_token_id = getattr(config, "eos_token_id", None)
        self.blocks = module_at(model, self.family.blocks)
        self.attention_modules = [module_at(block, self.family.attention) for block in self.blocks]
        self.value_paths: list[ValuePath] | None = None
        self.value_norms_reason: str | None = UNCERTIFIED
        self.final_norm = (
            None  # the module the last block's output goes through before the LM head (None: none)
        )
        self.lens_reason: str | None = UNCERTIFIED
        self.certificate: dict[str, str] = {}

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def identity(self) -> dict:
        return {
            **model_identity(self.model, self.cfg),
            "family": self.family.name,
            "causal": self.causal,
            "attention_module": f"{self.family.blocks}.N.{self.family.attention}",
        }

    # ---- certification (pipeline/models/invariants.py) ----
    def certify(
        self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None
    ) -> dict:
        """The invariants on a batch (default: the seeded probe); the first call also finds the value paths and the
        final norm. Returns {invariant: "passed" | "failed: ..." | "not applicable: ..."}."""
        if input_ids is None:
            input_ids, attention_mask = invariants.probe_batch(self.vocab_size, self.device)
        result = invariants.certify(self, input_ids, attention_mask, discover=not self.certificate)
        if not self.certificate:
            self.certificate = result
        return result

    def check_invariants(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        """The invariants on a real batch (the first of a run) for the measurements certified at load: one that fails
        now refuses the run (every process must agree on what is measured), with one line naming it and the model."""
        result = self.certify(input_ids, attention_mask)
        failed = [
            f"{k}: {v[len('failed: ') :]}" for k, v in result.items() if v.startswith("failed")
        ]
        if failed:
            raise PipelineError(f"on the run's first batch, {failed[0]}")
        return result

    def set_value_paths(self, paths: list[ValuePath] | None, reason: str | None) -> None:
        self.value_paths, self.value_norms_reason = paths, reason

    def value_path(self, index: int) -> ValuePath:
        if self.value_norms_reason is not None or self.value_paths is None:
            raise PipelineError(f"no value norms for this model: {self.value_norms_reason}")
        return self.value_paths[index]

    # ---- forward passes ----
    def _hooked(self, hooks, input_ids, attention_mask, pre_hooks=()):
        """One forward pass with forward hooks [(module, hook)] and forward pre-hooks with keyword arguments
        [(module, hook(module, args, kwargs))] in place."""
        handles = [module.register_forward_hook(hook) for module, hook in hooks]
        handles += [
            module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in pre_hooks
        ]
        try:
            with torch.inference_mode():
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()

    def map_attention(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        fn: Callable,
        value_norms: bool = False,
        residuals: Callable | None = None,
        extra=((), ()),
    ) -> list:
        """fn(layer index, attention [B, H, T, T]) for every layer, called inside the forward pass as the
        layer produces it; returns fn's results in layer order. With value_norms, fn(index, attention, norms)
        also gets n[b, h, j] = ‖f_h(x_j)‖ [B, H, T] (float32), from the layer's value source, which runs
        before its attention output is produced. With residuals, residuals(depth, hidden [B, T, D]) gets the
        residual stream of the same forward pass at every depth d = 0..L (see residual_hooks). extra: more
        (forward hooks, pre-hooks) for the same pass (the invariants' probe)."""
        results = [None] * self.num_layers
        seen = [False] * self.num_layers
        norms: dict[int, torch.Tensor] = {}
        at = self.family.weights_index

        def hook(index):
            def on_output(module, args, output):
                weights = output[at] if isinstance(output, tuple) and len(output) > at else None
                if weights is None:
                    raise PipelineError(
                        f"the {model_label(self.model)} model's attention returned no weights; it must "
                        "be loaded with attn_implementation='eager'"
                    )
                weights = weights.to(
                    self.device
                )  # a no-op unless model.device_map put this layer on another GPU
                results[index] = (
                    fn(index, weights, norms.pop(index)) if value_norms else fn(index, weights)
                )
                seen[index] = True

            return on_output

        def value_hook(index, path):
            def on_projection(module, args, output):
                norms[index] = path.norms(output).to(self.device)

            return on_projection

        hooks = [(m, hook(index)) for index, m in enumerate(self.attention_modules)] + list(
            extra[0]
        )
        pre_hooks = (
            [(m, _forcing_weights(m)) for m in self.attention_modules]
            if self.family.ask_for_weights
            else []
        )
        pre_hooks += list(extra[1])
        if value_norms:
            paths = [self.value_path(index) for index in range(self.num_layers)]
            hooks += [
                (path.projection, value_hook(index, path)) for index, path in enumerate(paths)
            ]
        depths = [False] * (self.num_layers + 1)
        if residuals is not None:
            residual_pre, block_hooks = self.residual_hooks(residuals, depths)
            hooks += block_hooks
            pre_hooks += residual_pre
        self._hooked(hooks, input_ids, attention_mask, pre_hooks)
        if not all(seen):
            raise PipelineError(
                f"the {model_label(self.model)} model never produced the attention of layers "
                f"{[k for k, s in enumerate(seen) if not s]}"
            )
        if residuals is not None and not all(depths):
            raise PipelineError(
                f"the residual stream at depths {[d for d, s in enumerate(depths) if not s]} was never produced"
            )
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
                raise PipelineError(
                    "the first block received no hidden states (neither positionally nor as hidden_states)"
                )
            fn(0, hidden.to(self.device))
            seen[0] = True

        def on_output(depth):
            def hook(module, args, output):
                fn(depth, (output[0] if isinstance(output, tuple) else output).to(self.device))
                seen[depth] = True

            return hook

        return (
            [(self.blocks[0], on_input)],
            [(block, on_output(index + 1)) for index, block in enumerate(self.blocks)],
        )

    def residual_stream(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embeddings: bool = False
    ) -> list[torch.Tensor]:
        """The residual stream after each layer, [B, T, D] per layer, before the final norm; with embeddings, the
        input of the first block first (depths 0..L, as the logit lens reads them)."""
        out = [None] * (self.num_layers + 1)

        def keep(depth, hidden):
            out[depth] = hidden.detach()

        pre_hooks, hooks = self.residual_hooks(keep)
        self._hooked(hooks, input_ids, attention_mask, pre_hooks if embeddings else ())
        return out if embeddings else out[1:]

    # ---- the unembedding (the logit lens) ----
    @property
    def unembed_reason(self) -> str | None:
        """Why this model's residual stream cannot be decoded into the vocabulary here (no LM head, or the logit lens
        invariant failed), or None."""
        return self.lens_reason

    @functools.cached_property
    def unembedding(self) -> torch.Tensor:
        """[V, D] float32 on the adapter's device: the LM head's weight (a copy only for a lower dtype, or for a head
        that model.device_map put on another GPU)."""
        head = (
            self.lm.get_output_embeddings()
            if self.lm is not None
            else self.model.get_input_embeddings()
        )
        return head.weight.detach().float().to(self.device)

    @functools.cached_property
    def unembedding_bias(self) -> torch.Tensor | None:
        head = self.lm.get_output_embeddings() if self.lm is not None else None
        bias = getattr(head, "bias", None)
        return None if bias is None else bias.detach().float().to(self.device)

    def logit_transforms(self) -> list[tuple[str, float]]:
        """The config's transforms of the logits after the LM head (families.LOGIT_TRANSFORMS) that are set."""
        config = self.model.config
        return [
            (how, float(value))
            for attribute, how in LOGIT_TRANSFORMS
            if (value := getattr(config, attribute, None)) is not None
            and not isinstance(value, bool)
            and value
        ]

    def unembed(self, residual: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [..., V] (float32 whatever the model's dtype) from a residual stream: the final norm, the LM head
        (its bias where it has one), then the config's scaling or soft-capping; written into `out` when given (a
        buffer reused across calls: no fresh [N, V] allocation)."""
        reason = self.unembed_reason
        if reason is not None:
            raise PipelineError(f"cannot unembed: {reason}")
        with torch.inference_mode():
            if self.final_norm is not None:  # on its own device under model.device_map
                residual = self.final_norm(
                    residual.to(next(self.final_norm.parameters(), residual).device)
                )
            logits = torch.matmul(residual.float().to(self.device), self.unembedding.T, out=out)
            if self.unembedding_bias is not None:
                logits.add_(self.unembedding_bias)
            for how, value in self.logit_transforms():
                if how == "divide":
                    logits.div_(value)
                elif how == "multiply":
                    logits.mul_(value)
                else:  # soft-capping: c·tanh(z / c)
                    logits.div_(value).tanh_().mul_(value)
            return logits

    @torch.inference_mode()
    def check_causal(self) -> None:
        """Refuse a model whose attention does not look the way its config says: ahead although causal, or never
        ahead although bidirectional (every statistic's masks depend on it)."""
        ids = torch.arange(3, 9, device=self.device).unsqueeze(0) % max(
            getattr(self.model.config, "vocab_size", 9), 9
        )
        first = self.map_attention(
            ids, torch.ones_like(ids), lambda index, att: att[0].float() if index == 0 else None
        )[0]
        ahead = torch.triu(first, diagonal=1).abs().max().item() > 1e-6
        if self.causal and ahead:
            raise PipelineError(
                f"{self.model.name_or_path!r} attends to later tokens although its type "
                f"({self.family.name}) is causal; add it to BIDIRECTIONAL_TYPES in pipeline/models/families.py"
            )
        if not self.causal and not ahead:
            raise PipelineError(
                f"{self.model.name_or_path!r} never attends to later tokens although its type "
                f"({self.family.name}) is bidirectional (a decoder configuration?)"
            )


def model_class(config):
    """(the auto class to load, why there is no LM head): the causal LM class for causal models that have one (the
    lens needs the real LM head, tied or not), the base model otherwise."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if is_bidirectional(config):
        return AutoModel, "the model's attention is not causal"
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return AutoModel, f"transformers has no causal LM class for {config.model_type} models"
    return AutoModelForCausalLM, None


def missing_head_reason(lm, info: dict) -> str | None:
    """Why a loaded causal LM's head is not the checkpoint's (its weights were missing and initialised at random), or
    None."""
    head = lm.get_output_embeddings()
    if head is None:
        return "the model has no output embeddings (LM head)"
    names = [name for name, m in lm.named_modules() if m is head]
    missing = [
        k for k in (info or {}).get("missing_keys", ()) if any(k.startswith(n + ".") for n in names)
    ]
    return (
        f"the checkpoint holds no LM head weights ({', '.join(sorted(missing))} missing)"
        if missing
        else None
    )


def load_adapter(
    cfg: ModelConfig, device: torch.device, attn_implementation: str = "eager"
) -> ModelAdapter:
    """The model with eager attention behind an adapter: a causal model with its LM head (the forward passes that
    measure run its trunk only), an encoder as its base model; certified by the invariants on a probe batch.
    (`sdpa` gives no attention maps: only the benchmark's floor uses it, uncertified.)"""
    from transformers import AutoConfig

    source = resolve_source(cfg.name, cfg.gguf_file)
    kwargs = {"revision": cfg.revision} if cfg.revision else {}
    config = load_with(AutoConfig.from_pretrained, source, "model config", **kwargs)
    refuse_unsupported(config, cfg.name)
    loader, lm_reason = model_class(config)
    loaded, info = load_with(
        loader.from_pretrained,
        source,
        "model",
        attn_implementation=attn_implementation,
        output_loading_info=True,
        **load_options(cfg, device),
        **kwargs,
    )
    loaded.eval()
    if (
        getattr(cfg, "device_map", None) is None
    ):  # with model.device_map, accelerate has placed the layers: keep them
        loaded.to(device)
    lm = None
    if lm_reason is None:
        lm_reason = missing_head_reason(loaded, info)
        lm = loaded if lm_reason is None else None
        model = loaded.base_model
    else:
        model = loaded
    adapter = ModelAdapter(model, device, cfg, lm=lm, lm_reason=lm_reason)
    if attn_implementation == "eager":
        adapter.check_causal()
        adapter.certify()
    return adapter
