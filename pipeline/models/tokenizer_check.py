"""Does the tokenizer belong to the model? Checked before any forward pass over the corpus: token ids that merely
fit the embedding matrix (a BERT WordPiece vocabulary of 30,522 under GPT-2's 50,257 rows) would run to the end
and measure attention over meaningless pieces. Refused in one line unless model.allow_foreign_tokenizer is set."""

from __future__ import annotations

from pipeline.errors import PipelineError

# Embedding matrices are often padded beyond the vocabulary (to a multiple of 64 or 128: Pythia's 50,304 rows for
# 50,277 entries, phi-2's 51,200 for 50,295); a vocabulary covering less than this share of the rows is another one.
MIN_ROWS_COVERED = 0.9
SPECIAL_ID_FIELDS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "sep_token_id",
    "cls_token_id",
    "decoder_start_token_id",
)
OPT_OUT = "set model.allow_foreign_tokenizer: true only if you know they match"


def tokenizer_mismatch(rows: int, model_config, tok, own_tok=None) -> str | None:
    """Why `tok` cannot be the tokenizer of a model with `rows` embeddings and HF config `model_config` (None: it can).
    `own_tok` is the model's own tokenizer, where it ships one: then the vocabularies and special tokens must agree."""
    size = len(tok)
    if size > rows:
        return f"it has {size:,} entries but the model has {rows:,} embeddings"
    if size < MIN_ROWS_COVERED * rows:
        return f"it has {size:,} entries, far fewer than the model's {rows:,} embeddings"
    for field in SPECIAL_ID_FIELDS:
        value = getattr(model_config, field, None)
        ids = value if isinstance(value, list) else [value]
        outside = [i for i in ids if isinstance(i, int) and not 0 <= i < size]
        if outside:
            return f"the model's {field} {outside[0]} is not in its vocabulary of {size:,} entries"
    if own_tok is not None:
        if own_tok.get_vocab() != tok.get_vocab():
            return (
                f"its vocabulary differs from the model's own tokenizer ({size:,} vs {len(own_tok):,} entries, "
                f"{type(tok).__name__} vs {type(own_tok).__name__})"
            )
        mine, theirs = tok.special_tokens_map, own_tok.special_tokens_map
        differ = sorted(
            k
            for k in set(mine) | set(theirs)
            if k != "additional_special_tokens" and mine.get(k) != theirs.get(k)
        )
        if differ:
            return (
                f"its special tokens differ from the model's own tokenizer's ({', '.join(differ)})"
            )
    return None


def own_tokenizer(model_cfg):
    """The tokenizer the model itself ships, for a config that names another (model.tokenizer); None where the
    model ships none."""
    from pipeline.models.loading import load_tokenizer

    try:
        return load_tokenizer(model_cfg.model_copy(update={"tokenizer": None}))
    except (PipelineError, OSError, ValueError):
        return None


def check_model_tokenizer(adapter, model_cfg) -> None:
    """Refuse (one PipelineError) the tokenizer the config names (model.tokenizer) when it does not belong to the
    adapter's model, unless the config opts out; the model's own tokenizer belongs to it."""
    if getattr(model_cfg, "allow_foreign_tokenizer", False) or not model_cfg.tokenizer:
        return
    from pipeline.models.loading import load_tokenizer

    why = tokenizer_mismatch(
        adapter.vocab_size,
        adapter.model.config,
        load_tokenizer(model_cfg),
        own_tokenizer(model_cfg),
    )
    if why:
        raise PipelineError(
            f"the tokenizer {model_cfg.tokenizer!r} does not belong to the model {model_cfg.name!r}: "
            f"{why}; use the model's own tokenizer (unset model.tokenizer), or {OPT_OUT}"
        )
