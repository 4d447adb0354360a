"""Invariants that prove a loaded model's adapter right, with no knowledge of the model's family.

- attention: the rows the engine reduces (the adapter's hooks) equal the model's own `output_attentions` of a plain
  forward pass, and each valid row sums to 1 over what its piece may attend to (j ≤ i for a causal model, the
  sentence for an encoder) and to 0 elsewhere;
- norm weighting: Σ_h Σ_j α^h_ij f_h(x_j) + b_O reconstructs the output projection's output for every piece (this
  certifies f_h, pipeline/models/values.py, for any layout);
- logit lens: the lens at the last depth (final norm, LM head, logit scaling or soft-capping) equals the model's own
  output logits.

`certify` runs them on a probe batch (a couple of sequences) when a model loads and again on the first batch of every
real run (stages/attend.py); the attention invariant failing refuses the model, the other two turn their measurement
off with one line naming the invariant and the model."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError
from pipeline.models.families import VALUE_EXCEPTIONS, model_label
from pipeline.models.values import find_value_path, is_linear, tolerance

PASSED = "passed"


def probe_batch(vocab_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of 9 and 6 pieces (right padding), ids from a seeded generator: deterministic in every process."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, max(4, min(int(vocab_size), 5000)), (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids.masked_fill(mask == 0, 0).to(device), mask.to(device)


def allowed(mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """[B, T, T] what each valid piece i may attend to: valid j (and j ≤ i for a causal model)."""
    valid = mask.bool()
    pairs = valid[:, :, None] & valid[:, None, :]
    if causal:
        T = mask.shape[1]
        pairs &= torch.tril(torch.ones(T, T, dtype=torch.bool, device=mask.device))[None]
    return pairs


def attention_problem(hooked: list, own, mask: torch.Tensor, causal: bool) -> str | None:
    """Why the hooked rows are not the model's own attention, or do not sum to 1 over what each piece may attend to."""
    if own is None or len(own) != len(hooked):
        return f"output_attentions gave {0 if own is None else len(own)} layers, the hooks {len(hooked)}"
    valid = mask.bool()
    may = allowed(mask, causal)
    for layer, (a, b) in enumerate(zip(hooked, own)):
        if b is None or a.shape != b.shape:
            return f"layer {layer}: output_attentions gave {None if b is None else tuple(b.shape)}, the hooks {tuple(a.shape)}"
        a, b = a.double(), b.double()
        tol = tolerance(hooked[layer].dtype)
        rows = valid[:, None, :, None].expand_as(a)
        if not torch.allclose(a[rows], b[rows], atol=tol, rtol=0):
            return f"layer {layer}: the hooked rows differ from output_attentions by {(a - b)[rows].abs().max().item():.2e}"
        inside = (a * may[:, None]).sum(-1)[valid[:, None, :].expand(-1, a.shape[1], -1)]
        outside = (a * ~may[:, None]).abs().sum(-1)[valid[:, None, :].expand(-1, a.shape[1], -1)]
        if (
            not torch.allclose(inside, torch.ones_like(inside), atol=tol, rtol=0)
            or outside.max().item() > tol
        ):
            return (
                f"layer {layer}: rows sum to {inside.min().item():.4f}..{inside.max().item():.4f} over what each "
                f"piece may attend to ({'j ≤ i' if causal else 'the sentence'}), {outside.max().item():.2e} elsewhere"
            )
    return None


def reconstruction_problem(
    path, weights: torch.Tensor, projected: torch.Tensor, output: torch.Tensor, mask: torch.Tensor
) -> str | None:
    """Why Σ_h Σ_j α^h_ij f_h(x_j) + b_O does not give the output projection's output on the valid pieces, or why the
    norms the engine reduces (ValuePath.norms: the key/value columns through R_hᵀ) are not ‖f_h(x_j)‖ of these f_h."""
    f = path.contributions(projected)  # [B, H, T, D]
    valid = mask.bool()
    rebuilt = torch.einsum("bhij,bhjD->biD", weights.double(), f)
    bias = getattr(path.output, "bias", None)
    if bias is not None:
        rebuilt = rebuilt + bias.double()
    got, want = rebuilt[valid], output.double()[valid]
    gap, scale = (got - want).abs().max().item(), want.abs().max().item()
    if gap > tolerance(output.dtype) * max(scale, 1e-6):
        return (
            f"Σ_h Σ_j α f_h(x_j) + b_O does not reconstruct the attention output: off by {gap:.2e} "
            f"(outputs up to {scale:.2e})"
        )
    want_norms = torch.linalg.vector_norm(f, dim=-1)[valid[:, None, :].expand(-1, f.shape[1], -1)]
    got_norms = path.norms(projected).double()[valid[:, None, :].expand(-1, f.shape[1], -1)]
    gap, scale = (got_norms - want_norms).abs().max().item(), want_norms.max().item()
    if gap > tolerance(projected.dtype) * max(scale, 1e-6):
        return f"the value norms the engine reduces differ from ‖f_h(x_j)‖ by {gap:.2e} (norms up to {scale:.2e})"
    return None


def probe_forward(adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """One hooked forward pass recording, per layer, the attention, every linear module's (module, input, output) in
    the order they ran, and the residual stream at every depth; and the first leaf module outside the blocks that
    received the last block's output (the final norm)."""
    L = adapter.num_layers
    weights, calls, residual = [None] * L, [[] for _ in range(L)], [None] * (L + 1)
    inside = set()
    hooks, pre_hooks = [], []
    for index, block in enumerate(adapter.blocks):
        for module in block.modules():
            inside.add(id(module))
            if is_linear(module):
                hooks.append(
                    (
                        module,
                        lambda m, args, out, index=index: calls[index].append(
                            (m, args[0] if args else None, out)
                        ),
                    )
                )  # the tensors themselves: identity tells shared inputs

    def keep(depth, hidden):
        residual[depth] = (
            hidden  # the tensor itself: the final norm is the module that receives this very object
        )

    final = []

    def on_leaf(module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()), None)
        if not final and hidden is not None and residual[L] is not None and hidden is residual[L]:
            final.append(module)

    for name, module in adapter.model.named_modules():
        if id(module) not in inside and name and not list(module.children()):
            pre_hooks.append((module, on_leaf))
    adapter.map_attention(
        input_ids,
        attention_mask,
        lambda index, att: weights.__setitem__(index, att.detach()),
        residuals=keep,
        extra=(hooks, pre_hooks),
    )
    calls = [[c for c in layer if c[1] is not None] for layer in calls]
    return {
        "weights": weights,
        "calls": calls,
        "residual": residual,
        "final_norm": final[0] if final else None,
    }


def certify(
    adapter, input_ids: torch.Tensor, attention_mask: torch.Tensor, discover: bool = True
) -> dict[str, str]:
    """The three invariants on one batch → {"attention" | "norm_weighting" | "logit_lens": "passed" or "failed: ..."
    or "not applicable: ..."}. With discover (at load), the value paths and the final norm are found here and set on
    the adapter; later calls check what was found. Raises PipelineError when the attention invariant fails."""
    seen = probe_forward(adapter, input_ids, attention_mask)
    with torch.inference_mode():
        own = adapter.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=True,
            use_cache=False,
        ).attentions
    problem = attention_problem(seen["weights"], own, attention_mask, adapter.causal)
    if problem is not None:
        raise PipelineError(
            f"{model_label(adapter.model)} fails the attention invariant (the hooked rows must be the "
            f"model's own output_attentions, summing to 1): {problem}"
        )
    results = {"attention": PASSED}
    results["norm_weighting"] = _certify_values(adapter, seen, attention_mask, discover)
    results["logit_lens"] = _certify_lens(adapter, seen, input_ids, attention_mask, discover)
    return results


def _certify_values(adapter, seen: dict, mask: torch.Tensor, discover: bool) -> str:
    config = adapter.model.config
    for attribute, reason in VALUE_EXCEPTIONS.items():
        if getattr(config, attribute, None) is not None:
            adapter.set_value_paths(None, reason)
            return f"not applicable: {reason}"
    if discover:
        paths = []
        for layer in range(adapter.num_layers):
            path = find_value_path(seen["calls"][layer], seen["weights"][layer], mask.bool())
            if path is None:
                reason = (
                    f"the norm weighting invariant fails for {model_label(adapter.model)}: no linear module of "
                    f"layer {layer} takes attention-weighted values of an earlier one as input (value path not found)"
                )
                adapter.set_value_paths(None, reason)
                return f"failed: {reason}"
            paths.append(path)
        adapter.set_value_paths(paths, None)
    if adapter.value_norms_reason is not None:
        return f"not applicable: {adapter.value_norms_reason}"
    for layer, path in enumerate(adapter.value_paths):
        by_module = {id(m): (z, out) for m, z, out in seen["calls"][layer]}
        if id(path.projection) not in by_module or id(path.output) not in by_module:
            problem = "the value or output projection did not run"
        else:
            problem = reconstruction_problem(
                path,
                seen["weights"][layer],
                by_module[id(path.projection)][1],
                by_module[id(path.output)][1],
                mask,
            )
        if problem is not None:
            reason = f"the norm weighting invariant fails for {model_label(adapter.model)}: layer {layer}: {problem}"
            adapter.set_value_paths(None, reason)
            return f"failed: {reason}"
    return PASSED


def _certify_lens(
    adapter, seen: dict, input_ids: torch.Tensor, mask: torch.Tensor, discover: bool
) -> str:
    if not adapter.causal:
        return "not applicable: the model's attention is not causal"
    if discover:
        adapter.final_norm, adapter.lens_reason = seen["final_norm"], adapter.lm_reason
    if (
        adapter.lens_reason is not None
    ):  # no LM head, or failed before: stays off (every process must agree)
        return f"not applicable: {adapter.lens_reason}"
    with torch.inference_mode():
        own = adapter.lm(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.float()
        lens = adapter.unembed(seen["residual"][-1])
    valid = mask.bool()
    gap = (lens[valid] - own[valid]).abs().max().item()
    scale = own[valid].abs().max().item()
    if gap > tolerance(adapter.lm.dtype) * max(1.0, scale):
        adapter.lens_reason = (
            f"the logit lens invariant fails for {model_label(adapter.model)}: the lens at the last "
            f"depth differs from the model's own logits by {gap:.2e} (logits up to {scale:.2e})"
        )
        return f"failed: {adapter.lens_reason}"
    return PASSED
