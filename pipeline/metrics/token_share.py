"""Attention to [CLS], [SEP] and the tokens "." and "," (beyond the paper): Clark et al. (2019), "What Does BERT Look
At?", Fig. 2, and the same analysis with vector norms by Kobayashi et al. (2020), "Attention is Not Only a Weight",
each as its source computes it.

Tokens (`token`): each special piece's tag ([CLS], [SEP]; BOS for a decoder with model.bos: always, or auto with a tokenizer that prepends it), ". or ," (the
pieces that are the token "." or "," itself, less a leading whitespace marker: engine.comma_or_period; Clark et al.
and Kobayashi et al. pool the two), "other" (every other piece) and "all" (every piece). Per head, for a sentence s of
n_s pieces (the special pieces included) and a token c:
- mean_attention (Clark et al. Fig. 2): a_c(s) = (1/n_s) Σ_i Σ_{j of c} α_ij, i over ALL n_s pieces of the sentence
  (the special pieces' own rows included, as in their code: the sum over the attention map divided by its number of
  rows); then the mean over sentences, a sentence without c counting 0. Their "document" is our sentence.
- mean_weighted_norm (Kobayashi et al.): the same with ‖α_ij f_h(x_j)‖ = α_ij ‖f_h(x_j)‖ for α_ij, an absolute norm,
  not a ratio (their re-examination of Clark et al.: the mean over rows of Σ_{j of c} ‖α_ij f(x_j)‖, then over
  sequences). For c = "all" it is the head's mean absolute norm Σ_j ‖α_ij f_h(x_j)‖ per row.
- mean_value_norm (Kobayashi et al.): ‖f_h(x_j)‖ averaged over the pieces j of c in the sentence, then over the
  sentences that contain c (their code takes the mean over every sequence, undefined for one without c).
The norm-weighted shares of every other table are pooled ratios of norms (Σ α' / Σ α'); these two are the absolute
numbers Kobayashi et al. report. NaN when the run has no value norms (attend.norm_weighting off, or a family without
them). One table, no weighting column: both weightings are columns here. No bootstrap replicates (sums per token)."""

from __future__ import annotations

import torch

from pipeline.metrics.base import DevicePart

COMMA_OR_PERIOD, OTHER, ALL = ". or ,", "other", "all"


def categories(ctx) -> torch.Tensor:
    """[B, T, n_pos + 3] float: each piece of the sentence in its token category (a special piece under its tag's
    index, else ". or ," or "other") and in "all"; padding in none."""
    batch, inside = ctx.batch, ctx.in_sentence
    special = batch.special if batch.special is not None else torch.zeros_like(inside)
    punct = batch.comma_or_period if batch.comma_or_period is not None else torch.zeros_like(inside)
    tags = (
        torch.nn.functional.one_hot(batch.pos, ctx.n_pos).to(torch.float32)
        * (special & inside)[..., None]
    )
    rest = torch.stack([~special & punct & inside, ~special & ~punct & inside, inside], -1).to(
        torch.float32
    )
    return torch.cat([tags, rest], -1)


def batch_terms(ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every layer of a batch shares, made once per batch: the categories [B, T, C], each row's weight 1/n_s
    [B, T] (all rows of the sentence) and 1/(pieces of each category) per sentence [B, C] (0 where it has none)."""

    def make():
        cats = categories(ctx)
        rows = ctx.in_sentence.to(torch.float32) / ctx.batch.lengths[:, None].clamp_min(1).to(
            torch.float32
        )
        count = cats.sum(1)
        return cats, rows, torch.where(count > 0, 1.0 / count.clamp_min(1.0), 0.0)

    return ctx.memo("token_share", make)


class TokenShare(DevicePart):
    name = "token_share"
    provides = (
        "ts_attention",
        "ts_weighted_norm",
        "ts_value_norm",
        "ts_sentences",
        "ts_sentences_with",
    )
    norm_weighting = (
        False  # both weightings are its columns: computed once, from α and the value norms together
    )

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        cats, rows, per_piece = batch_terms(ctx)
        received = torch.einsum(
            "bhij,bi->bhj", layer.att, rows
        )  # [B, H, T]: (1/n_s) Σ_i α_ij over all rows
        out = {"ts_attention": torch.einsum("bhj,bjc->bhc", received, cats).to(ctx.sum_dtype)}
        if layer.norms is not None:
            out["ts_weighted_norm"] = torch.einsum("bhj,bjc->bhc", received * layer.norms, cats).to(
                ctx.sum_dtype
            )
            out["ts_value_norm"] = (
                torch.einsum("bhj,bjc->bhc", layer.norms, cats) * per_piece[:, None, :]
            ).to(ctx.sum_dtype)
        return out

    def batch_sums(self, ctx) -> dict:
        """Sentences, and sentences that contain each token: the denominators of the means over sentences."""
        present = (batch_terms(ctx)[0].sum(1) > 0).to(ctx.sum_dtype)  # [B, C]
        return {
            "ts_sentences": torch.ones(ctx.B, 1, dtype=ctx.sum_dtype, device=ctx.device),
            "ts_sentences_with": present,
        }


METRIC = TokenShare()
