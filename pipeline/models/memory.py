"""Sizes known before a model is loaded, from its config alone: how much memory the attend stage will need (so that a
model too large is refused in one line, or the batch made smaller, before minutes of loading), and what share of the
sentences the logit lens can decode for about 15% of the forward pass's cost (attend.logit_lens_sample: auto).

Memory (bytes), for a batch budget of b padded pieces and the corpus's longest sentence of T pieces:
  weights      parameters × the dtype's bytes (as the adapter loads the model: an untied LM head included)
  attention    ATTENTION_BYTES × heads × max(b, T) × T: the eager attention maps of the largest batch (a batch holds
               n sentences of at most t pieces with n·t ≤ b, so n·t² ≤ b·T; one sentence alone when T > b), one layer
               at a time (the engine reduces each layer's maps inside the forward pass)
  activations  b × (4·width + 3·intermediate) × the dtype's bytes: the residual stream and the MLP of one layer
  logit lens   when on: b × (layers + 1) × width × the dtype's bytes (the residual rows kept for decoding), the
               unembedding in float32 (vocabulary × width × 4) and the decoding buffers (CHUNK_BYTES)
A model whose weights and fixed parts do not fit the free memory is refused; else the largest budget that fits is used
when it is below attend.token_budget (a one-line message); a longest sentence that does not fit alone is refused.

The logit lens's cost per decoded piece is vocabulary × width × (layers + 1) multiply-adds (one unembedding per
depth, the embeddings' included); the forward pass's per piece is about one multiply-add per weight of the blocks
(the trunk's parameters less its embeddings, which are looked up, not multiplied; no LM head) plus 2 × layers × heads × head width × C for
the attention scores and the weighted values over C attended pieces (C: half the mean sentence length for a causal
model). The share s at which the lens costs LENS_COST_TARGET of the forward pass is
    s = min(1, LENS_COST_TARGET × forward / lens),
raised to LENS_MIN_SENTENCES sentences where the corpus is small (a lens table of fewer is noise). For sentences of
30 pieces (C = 15), SmolLM2-135M: lens 877.7M vs forward ≈ 106.7M (8.2×) → s ≈ 1.8%; Llama-3-8B: lens 17.3G vs
forward ≈ 7.0G (2.5×) → s ≈ 6.0% (tests/test_large_models.py computes both from the configs)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError

ATTENTION_BYTES = 36  # per attention element at the peak: the model's scores and probabilities, the engine's float32
# copies (measured 35.0-35.8 on a CPU, float32, default measurements: bench/attention_bytes_bench.py)
LENS_COST_TARGET = (
    0.15  # attend.logit_lens_sample: auto aims the lens at this share of the forward pass's cost
)
LENS_MIN_SENTENCES = 100  # ... but decodes at least this many sentences (all, in a smaller corpus)
USABLE = 0.9  # of the free memory: the rest for the allocator's fragmentation and the CUDA context
GiB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """A model's dimensions from its config, as the adapter loads it: a causal model with its LM head, an encoder as
    its base model."""

    layers: int
    heads: int
    head_dim: int
    width: int
    intermediate: int
    vocab: int
    parameters: int  # everything loaded (an untied LM head included; tied weights once)
    trunk_parameters: int  # the base model: what the measuring forward passes run
    embedding_parameters: (
        int  # every nn.Embedding of the trunk (tokens, positions, token types): looked up
    )

    @property
    def block_parameters(self) -> int:
        return self.trunk_parameters - self.embedding_parameters


def _loaded_on_meta(config):
    """The model as the adapter loads it (adapter.model_class: the causal LM class where transformers has one), on
    the meta device."""
    from pipeline.models.adapter import model_class

    loader, _ = model_class(config)
    with torch.device("meta"):
        return loader.from_config(config)


def shape_of(config) -> ModelShape:
    """The shape of a transformers config, parameters counted on the meta device (no memory, no weights read)."""
    model = _loaded_on_meta(config)
    trunk = getattr(model, "base_model", model)
    parameters = sum(p.numel() for p in model.parameters())
    embeddings = sum(m.weight.numel() for m in trunk.modules() if isinstance(m, torch.nn.Embedding))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    width = int(
        getattr(text, "hidden_size", None)
        or getattr(text, "n_embd", None)
        or getattr(text, "d_model")
    )
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or width // heads)
    intermediate = int(
        getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * width
    )
    return ModelShape(
        layers=int(text.num_hidden_layers),
        heads=heads,
        head_dim=head_dim,
        width=width,
        intermediate=intermediate,
        vocab=int(text.vocab_size),
        parameters=int(parameters),
        trunk_parameters=int(sum(p.numel() for p in trunk.parameters())),
        embedding_parameters=int(embeddings),
    )


def model_config(model_cfg):
    """The configured model's transformers config (no weights; a GGUF file's metadata is read)."""
    from transformers import AutoConfig

    from pipeline.models.loading import load_with, resolve_source

    kwargs = {"revision": model_cfg.revision} if model_cfg.revision else {}
    return load_with(
        AutoConfig.from_pretrained,
        resolve_source(model_cfg.name, model_cfg.gguf_file),
        "model config",
        **kwargs,
    )


def model_shape(model_cfg) -> ModelShape:
    """The shape of the configured model, from its config file alone."""
    return shape_of(model_config(model_cfg))


# ---- the logit lens's share ----


def forward_macs(shape: ModelShape, context: float) -> float:
    """Multiply-adds of one piece's forward pass: every block weight once, and the attention over `context` pieces."""
    return shape.block_parameters + 2.0 * shape.layers * shape.heads * shape.head_dim * context


def lens_macs(shape: ModelShape) -> float:
    """Multiply-adds of decoding one piece at every depth 0..L: the unembedding, vocabulary × width, L + 1 times."""
    return float(shape.vocab) * shape.width * (shape.layers + 1)


def lens_sample_share(
    shape: ModelShape, context: float = 32.0, target: float = LENS_COST_TARGET
) -> float:
    """The share of sentences at which the lens costs `target` × the forward pass (at most 1)."""
    return min(1.0, target * forward_macs(shape, context) / lens_macs(shape))


def resolve_lens_sample(
    attend_cfg, shape: ModelShape, sentences: int, mean_length: float
) -> tuple[float, str | None]:
    """attend.logit_lens_sample as a number: an explicit share as it is; auto from the model's dimensions (at least
    LENS_MIN_SENTENCES of the `sentences`), with the one line that says what was chosen and why."""
    share = attend_cfg.logit_lens_sample
    if share != "auto":
        return float(share), None
    context = max(mean_length, 1.0) / 2.0
    ratio = lens_macs(shape) / forward_macs(shape, context)
    chosen = lens_sample_share(shape, context)
    floor = min(1.0, LENS_MIN_SENTENCES / sentences) if sentences else 1.0
    share = max(chosen, floor)
    why = (
        f"attend.logit_lens_sample: auto → {share:.4g} (the lens costs {ratio:.2f}× the forward pass per piece: "
        f"{lens_macs(shape) / 1e6:,.1f}M vs {forward_macs(shape, context) / 1e6:,.1f}M multiply-adds; at this share "
        f"about {share * ratio:.0%} of it"
        + (f"; at least {LENS_MIN_SENTENCES} sentences" if share > chosen else "")
        + ")"
    )
    return share, why


# ---- memory ----


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes the attend stage needs: `fixed` whatever the batch, `total(b)` with a budget of b padded pieces."""

    weights: int
    fixed: int
    attention_per_element: int
    heads: int
    longest: int
    per_piece: int  # activations (and the lens's kept rows) per padded piece of the budget

    def attention(self, budget: int) -> int:
        return self.attention_per_element * self.heads * max(budget, self.longest) * self.longest

    def total(self, budget: int) -> int:
        return self.fixed + self.attention(budget) + self.per_piece * max(budget, self.longest)


def estimate(shape: ModelShape, dtype: torch.dtype, longest: int, lens: bool) -> MemoryEstimate:
    size = dtype_bytes(dtype)
    weights = shape.parameters * size
    factors = (
        shape.layers * shape.heads * shape.head_dim**2 * 4
    )  # the value path's R_h factors (norm weighting)
    fixed = weights + factors
    per_piece = (4 * shape.width + 3 * shape.intermediate) * size
    if lens:
        from pipeline.metrics.logit_lens import CHUNK_BYTES

        fixed += shape.vocab * shape.width * 4 + CHUNK_BYTES
        per_piece += (shape.layers + 1) * shape.width * size
    return MemoryEstimate(
        weights, fixed, ATTENTION_BYTES, shape.heads, max(int(longest), 1), per_piece
    )


def free_memory(device: torch.device, all_gpus: bool = False) -> int | None:
    """Free bytes on the device (every visible GPU's together with all_gpus); None where unknown (Apple MPS)."""
    if device.type == "cuda":
        indices = range(torch.cuda.device_count()) if all_gpus else [device.index or 0]
        return int(sum(torch.cuda.mem_get_info(i)[0] for i in indices))
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def fit_budget(
    est: MemoryEstimate, budget: int, available: int | None, what: str
) -> tuple[int, str | None]:
    """The token budget to use (attend.token_budget, or lower so that the estimate fits `available`), and the one line
    that says it was lowered; a model, or a longest sentence, that does not fit is refused in one line."""
    if available is None:
        return budget, None
    usable = int(available * USABLE)
    if est.fixed > usable:
        raise PipelineError(
            f"{what} needs ~{est.fixed / GiB:.1f} GiB before any batch (its weights: "
            f"{est.weights / GiB:.1f} GiB), but {available / GiB:.1f} GiB are free: use model.dtype=bfloat16, "
            "model.device_map=auto across GPUs, or a smaller model"
        )
    if est.total(est.longest) > usable:
        raise PipelineError(
            f"one sentence of {est.longest} pieces needs ~{est.attention(est.longest) / GiB:.1f} GiB of "
            f"attention maps beside {est.fixed / GiB:.1f} GiB of weights, but {available / GiB:.1f} GiB "
            "are free: lower corpus.max_pieces, or use model.dtype=bfloat16"
        )
    if est.total(budget) <= usable:
        return budget, None
    fitting = (usable - est.fixed) // (
        est.attention_per_element * est.heads * est.longest + est.per_piece
    )
    fitting = max(int(fitting), est.longest)
    return fitting, (
        f"attend.token_budget lowered from {budget} to {fitting}: a batch of {budget} padded pieces would "
        f"need ~{est.total(budget) / GiB:.1f} GiB (weights {est.weights / GiB:.1f}, attention maps of the "
        f"longest sentence, {est.longest} pieces, {est.attention(budget) / GiB:.1f}), "
        f"{available / GiB:.1f} GiB are free"
    )


# ---- the attend stage's plan ----


class WithAttend:
    """A config (or a stage's view of it) with its attend section replaced by the resolved one: what workers run with."""

    def __init__(self, cfg, attend):
        self._cfg, self.attend = cfg, attend

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._cfg, name)


def plan_attend(
    cfg, longest: int, sentences: int, mean_length: float
) -> tuple[WithAttend, dict, list[str]]:
    """Before the attend stage loads its model: the memory estimate (local executor; Ray's model actors are elsewhere)
    and attend.logit_lens_sample resolved. Returns the config to run with (token budget and lens share as resolved),
    what run.json records, and the lines to print."""
    from pipeline.models.families import is_bidirectional
    from pipeline.models.loading import resolve_device, resolve_dtype

    a, lines = cfg.attend, []
    config = model_config(cfg.model)
    shape = shape_of(config)
    lens = bool(a.logit_lens) and not is_bidirectional(config)
    share, why = resolve_lens_sample(a, shape, sentences, mean_length)
    if why:
        lines.append(why)
    record = {"logit_lens_sample": {"setting": a.logit_lens_sample, "share": share}}
    budget = a.token_budget
    if cfg.executor.kind == "local":
        device = resolve_device(cfg.model.device)
        est = estimate(shape, resolve_dtype(cfg.model.dtype, device), longest, lens)
        available = free_memory(device, all_gpus=cfg.model.device_map is not None)
        budget, lowered = fit_budget(est, a.token_budget, available, repr(cfg.model.name))
        if lowered:
            lines.append(lowered)
        record["memory"] = {
            "device": device.type,
            "free_gib": None if available is None else round(available / GiB, 2),
            "weights_gib": round(est.weights / GiB, 3),
            "estimate_gib": round(est.total(budget) / GiB, 3),
            "longest_sentence": est.longest,
            "token_budget": budget,
            "token_budget_configured": a.token_budget,
        }
    resolved = a.model_copy(update={"logit_lens_sample": share, "token_budget": budget})
    return WithAttend(cfg, resolved), record, lines
