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

import numpy as np
import polars as pl
import torch

from pipeline.alignment import is_special_tag
from pipeline.metrics.base import FigureSpec, Metric, ratio

SCHEMA = {"layer": pl.Int32, "head": pl.Int32, "token": pl.String, "mean_attention": pl.Float64,
          "mean_weighted_norm": pl.Float64, "mean_value_norm": pl.Float64, "sentences": pl.Int64}
COMMA_OR_PERIOD, OTHER, ALL = ". or ,", "other", "all"
CLARK = "Clark et al. (2019), \"What Does BERT Look At?\", Fig. 2"
KOBAYASHI = "Kobayashi et al. (2020), \"Attention is Not Only a Weight\""


def token_names(pos_vocab: list[str]) -> list[str]:
    """The token of each category index: the tags of pos_vocab (only the special ones are ever filled), then
    ". or ,", "other", "all"."""
    return list(pos_vocab) + [COMMA_OR_PERIOD, OTHER, ALL]


def categories(ctx) -> torch.Tensor:
    """[B, T, n_pos + 3] float: each piece of the sentence in its token category (a special piece under its tag's
    index, else ". or ," or "other") and in "all"; padding in none."""
    batch, inside = ctx.batch, ctx.in_sentence
    special = batch.special if batch.special is not None else torch.zeros_like(inside)
    punct = batch.comma_or_period if batch.comma_or_period is not None else torch.zeros_like(inside)
    tags = torch.nn.functional.one_hot(batch.pos, ctx.n_pos).to(torch.float32) * (special & inside)[..., None]
    rest = torch.stack([~special & punct & inside, ~special & ~punct & inside, inside], -1).to(torch.float32)
    return torch.cat([tags, rest], -1)


def batch_terms(ctx) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every layer of a batch shares, made once per batch: the categories [B, T, C], each row's weight 1/n_s
    [B, T] (all rows of the sentence) and 1/(pieces of each category) per sentence [B, C] (0 where it has none)."""
    def make():
        cats = categories(ctx)
        rows = ctx.in_sentence.to(torch.float32) / ctx.batch.lengths[:, None].clamp_min(1).to(torch.float32)
        count = cats.sum(1)
        return cats, rows, torch.where(count > 0, 1.0 / count.clamp_min(1.0), 0.0)
    return ctx.memo("token_share", make)


class TokenShare(Metric):
    name = "token_share"
    order = 12
    description = (f"Mean attention to [CLS], [SEP] and the tokens \".\" and \",\" over all rows ({CLARK}), and the mean "
                   f"‖α f(x)‖ and ‖f(x)‖ of those tokens ({KOBAYASHI}).")
    norm_weighting = False  # both weightings are its columns: computed once, from α and the value norms together
    table_schemas = {"token_share": SCHEMA}
    figures = (FigureSpec(
        "beyond_token_share", "Attention to [CLS], [SEP] and \". or ,\": weights and norms (beyond the paper)",
        f"Left: after {CLARK}: by layer, the mean attention α that a head gives to each token, averaged over ALL rows of a "
        "sentence (the special pieces' rows included) and then over sentences; the line is the mean over the layer's "
        "heads, the dots the heads. \". or ,\" is the tokens \".\" and \",\" themselves (not the PUNCT tag); [CLS] and "
        "[SEP] (BERT) or BOS (model.bos) are the special pieces. Middle: the same for the absolute norm "
        f"‖α_ij f(x_j)‖ ({KOBAYASHI}, their re-examination of Clark et al.), \"all\" being the head's mean Σ_j ‖α_ij "
        "f(x_j)‖ per row; right: the mean ‖f(x_j)‖ of each token's pieces. Middle and right are absolute norms, not the "
        "pooled ratios of the norm-weighted tables; blank without value norms.", "token_share", inputs=("token_share",)),)

    def reduce_layer(self, layer) -> dict:
        ctx = layer.batch
        cats, rows, per_piece = batch_terms(ctx)
        received = torch.einsum("bhij,bi->bhj", layer.att, rows)  # [B, H, T]: (1/n_s) Σ_i α_ij over all rows
        out = {"ts_attention": torch.einsum("bhj,bjc->bhc", received, cats).to(ctx.sum_dtype)}
        if layer.norms is not None:
            out["ts_weighted_norm"] = torch.einsum("bhj,bjc->bhc", received * layer.norms, cats).to(ctx.sum_dtype)
            out["ts_value_norm"] = (torch.einsum("bhj,bjc->bhc", layer.norms, cats) * per_piece[:, None, :]).to(ctx.sum_dtype)
        return out

    def batch_sums(self, ctx) -> dict:
        """Sentences, and sentences that contain each token: the denominators of the means over sentences."""
        present = (batch_terms(ctx)[0].sum(1) > 0).to(ctx.sum_dtype)  # [B, C]
        return {"ts_sentences": torch.ones(ctx.B, 1, dtype=ctx.sum_dtype, device=ctx.device), "ts_sentences_with": present}

    def tables(self, sums, inputs) -> dict:
        attention = np.asarray(sums["ts_attention"], dtype=np.float64)  # [L, H, C]
        L, H, C = attention.shape
        names = token_names(inputs["pos_vocab"])
        if len(names) != C:
            raise ValueError(f"token_share sums have {C} tokens, the vocabulary {len(names)}")
        sentences = float(np.asarray(sums["ts_sentences"]).sum())
        present = np.asarray(sums["ts_sentences_with"], dtype=np.float64)  # [C]
        nan = np.full(attention.shape, np.nan)
        weighted = ratio(sums["ts_weighted_norm"], sentences) if "ts_weighted_norm" in sums else nan
        value = ratio(sums["ts_value_norm"], present) if "ts_value_norm" in sums else nan
        layer, head, c = np.meshgrid(np.arange(L), np.arange(H), np.arange(C), indexing="ij")
        df = pl.DataFrame({"layer": layer.ravel().astype(np.int32), "head": head.ravel().astype(np.int32),
                           "token": pl.Series(np.asarray(names, dtype=object)[c.ravel()], dtype=pl.String),
                           "mean_attention": ratio(attention, sentences).ravel(),
                           "mean_weighted_norm": np.asarray(weighted).ravel(), "mean_value_norm": np.asarray(value).ravel(),
                           "sentences": np.broadcast_to(np.rint(present), (L, H, C)).ravel().astype(np.int64)},
                          schema=SCHEMA)
        kept = [n for k, n in enumerate(names) if present[k] > 0 and (k >= C - 3 or is_special_tag(n))]
        return {"token_share": df.filter(pl.col("token").is_in(kept))}


METRIC = TokenShare()
