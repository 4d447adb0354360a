"""The value path of one layer, found from what the layer computes rather than from its family's layout.

Norm-weighted attention (Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing Transformers with Vector
Norms"): head h adds α_ij f_h(x_j) to piece i, f_h(x) = v_h(x) W_O^h, v_h(x) the head's value vector (bias included)
and W_O^h its rows of the output projection (whose bias is not per head and is left out, as Kobayashi et al. do), so
‖α_ij f_h(x_j)‖ = α_ij ‖f_h(x_j)‖.

How the path is found, for any layout (separate or fused q/k/v, BLOOM's and GPT-NeoX's per-head interleaving,
Falcon's multi-query, grouped-query heads, biases): in a probe forward pass every linear module of the block is
watched. The output projection is a linear module whose input z is, head by head, attention times values:
z_i[h·d + e] = Σ_j α^h_ij P_j[c_h(e)] for one earlier linear module's output P (the value source) and one column
c_h(e) of it per (head, dimension). The columns are matched by least squares distance and accepted only when every
one agrees to rounding; the invariant of pipeline/models/invariants.py then reconstructs the output projection's
output from α, the columns found and W_O^h (Σ_h Σ_j α^h_ij f_h(x_j) + b_O), certifying f_h.

In the forward passes that measure, the value source's own output is read by a forward hook (the values are not
computed twice), and ‖f_h(x)‖ = ‖v R_hᵀ‖ with R_h the triangular factor of W_O^hᵀ = Q_h R_h (made once per layer;
R_hᵀ R_h = W_O^h W_O^hᵀ): H·d² per piece, not the H·d·D of projecting every value vector through W_O^h; grouped by
key/value head, one batched matmul, the same arithmetic as the per-family paths this replaces."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def is_linear(module) -> bool:
    """nn.Linear (y = x Wᵀ + b) or transformers' Conv1D (GPT-2: y = x W + b)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"


def weight_in_out(module) -> torch.Tensor:
    """A linear module's weight as [in, out] (y = x W + b)."""
    return module.weight.T if isinstance(module, torch.nn.Linear) else module.weight


def value_factors(per_head: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """W_O^h [H, d, D] → R_hᵀ (k = min(d, D) columns) with W_O^hᵀ = Q_h R_h (QR; Q_h has orthonormal columns), so that
    ‖v W_O^h‖ = ‖v R_hᵀ‖, without the cancellation of forming v G_h vᵀ; grouped by key/value head ([n_kv, d, group·k]:
    the group = H / n_kv heads that read one key/value head side by side). Made once, in float64 on the CPU (Apple MPS
    has no float64)."""
    w = per_head.detach().to("cpu", torch.float64)
    R = torch.linalg.qr(w.transpose(1, 2), mode="r").R  # [H, k, d]
    H, k, d = R.shape
    grouped = (
        R.transpose(1, 2)
        .reshape(kv_heads, H // kv_heads, d, k)
        .permute(0, 2, 1, 3)
        .reshape(kv_heads, d, -1)
    )
    return grouped.to(per_head.device, torch.float32)


def shared_groups(blocks: torch.Tensor) -> int:
    """The number of consecutive heads that read the same value columns (grouped-query attention as transformers'
    repeat_kv lays it out: head h reads key/value head h // group), or 1 when the heads do not share that way."""
    H = blocks.shape[0]
    group = int((blocks == blocks[0]).all(1).long().cumprod(0).sum())
    if (
        group > 1
        and H % group == 0
        and bool((blocks == blocks[::group].repeat_interleave(group, 0)).all())
    ):
        return group
    return 1


@dataclass(frozen=True)
class ValuePath:
    """One layer's way from its values to the residual stream: the module whose output holds the value vectors, head
    h's d columns of it (columns[h·d:(h+1)·d]; grouped-query heads share columns), the output projection, and for the
    norms the key/value heads' columns (`select`: a slice where they are one range) with the factors R_hᵀ of the heads
    that read each, side by side ([n_kv, d, group·k])."""

    projection: torch.nn.Module
    columns: torch.Tensor  # [H·d] int64
    head_dim: int
    output: torch.nn.Module
    select: slice | torch.Tensor
    kv_heads: int
    factors: torch.Tensor

    @classmethod
    def make(cls, projection, columns: torch.Tensor, head_dim: int, output) -> "ValuePath":
        H = columns.numel() // head_dim
        blocks = columns.reshape(H, head_dim)
        group = shared_groups(blocks)
        kv_columns = blocks[::group].reshape(-1)
        first = int(kv_columns[0])
        contiguous = bool(
            (
                kv_columns
                == torch.arange(first, first + kv_columns.numel(), device=kv_columns.device)
            ).all()
        )
        with torch.inference_mode():
            per_head = weight_in_out(output).detach().reshape(H, head_dim, -1)
            factors = value_factors(per_head, H // group)
        select = (
            slice(first, first + kv_columns.numel())
            if contiguous
            else kv_columns.to(per_head.device)
        )
        return cls(
            projection, columns.to(per_head.device), head_dim, output, select, H // group, factors
        )

    @property
    def num_heads(self) -> int:
        return self.columns.numel() // self.head_dim

    def values(self, projected: torch.Tensor) -> torch.Tensor:
        """The projection's output [B, T, C] → every head's value vectors [B, T, H, d]."""
        B, T, _ = projected.shape
        return projected.index_select(-1, self.columns).reshape(B, T, self.num_heads, self.head_dim)

    def norms(self, projected: torch.Tensor) -> torch.Tensor:
        """The projection's output [B, T, C] → ‖f_h(x_j)‖ = ‖v R_hᵀ‖ [B, H, T], float32 whatever the model's dtype: one
        batched matmul over the key/value heads."""
        v = (
            projected[..., self.select]
            if isinstance(self.select, slice)
            else projected.index_select(-1, self.select)
        ).float()
        B, T, _ = v.shape
        v = v.reshape(B * T, self.kv_heads, self.head_dim).transpose(0, 1)  # [n_kv, BT, d]
        u = torch.bmm(v, self.factors).reshape(
            self.kv_heads, B * T, self.num_heads // self.kv_heads, -1
        )  # [.., group, k]
        return (
            torch.linalg.vector_norm(u, dim=-1).permute(1, 0, 2).reshape(B, T, -1).transpose(1, 2)
        )

    def contributions(self, projected: torch.Tensor) -> torch.Tensor:
        """f_h(x_j) = v_h(x_j) W_O^h [B, H, T, D] in float64 (the invariant's slow path)."""
        v = self.values(projected).double()
        W = weight_in_out(self.output).detach().double().reshape(self.num_heads, self.head_dim, -1)
        return torch.einsum("bthd,hdD->bhtD", v, W)


def tolerance(dtype: torch.dtype) -> float:
    """Relative agreement expected between two roundings of one computation in the model's dtype: 16 ε, at least 1e-3
    (room for TF32 matmuls on GPUs and the long sums of large models; a wrong layout is off by the outputs' own size)."""
    return max(1e-3, 16 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-3


def match_columns(
    weights: torch.Tensor,
    projected: torch.Tensor,
    z: torch.Tensor,
    valid: torch.Tensor,
    head_dim: int,
    tol: float,
) -> torch.Tensor | None:
    """The columns c with z[..., h·d + e] = Σ_j α^h_ij P_j[c] for every head h and dimension e (on the valid rows), or
    None when some (h, e) has none. weights [B, H, T, T], projected P [B, T, C], z [B, T, H·d], valid [B, T] bool."""
    A, P, Z = weights.double(), projected.double(), z.double()[valid]  # Z [N, H·d]
    H = A.shape[1]
    columns = []
    for h in range(H):
        Y = torch.matmul(A[:, h], P)[valid]  # [N, C]
        Zh = Z[:, h * head_dim : (h + 1) * head_dim]  # [N, d]
        distance = (Zh**2).sum(0)[:, None] + (Y**2).sum(0)[None, :] - 2 * Zh.T @ Y  # [d, C]
        best = distance.argmin(1)
        error = torch.linalg.vector_norm(Zh - Y[:, best], dim=0)
        scale = torch.linalg.vector_norm(Zh, dim=0)
        if not bool((error <= tol * scale + 1e-9 * (1 + scale.max())).all()):
            return None
        columns.append(best)
    return torch.cat(columns)


def find_value_path(calls: list, weights: torch.Tensor, valid: torch.Tensor) -> ValuePath | None:
    """calls: [(module, input [B, T, in], output [B, T, out])] of one block's linear modules in the order they ran in
    the probe; weights: the layer's attention [B, H, T, T]. The first (value source, output projection) pair whose
    columns match (match_columns), or None."""
    H = weights.shape[1]
    for k, (output, z, _) in enumerate(calls):
        if z.ndim != 3 or z.shape[-1] % H or any(z is other for _, other, _ in calls[:k]):
            continue  # an input that an earlier module took too (k_proj and v_proj take q_proj's) is no mixture
        d = z.shape[-1] // H
        for source, _, projected in reversed(
            calls[:k]
        ):  # the nearest first: v_proj just before o_proj
            if source is output or projected.ndim != 3 or projected.shape[:2] != z.shape[:2]:
                continue
            columns = match_columns(weights, projected, z, valid, d, tolerance(z.dtype))
            if columns is not None:
                return ValuePath.make(source, columns, d, output)
    return None
