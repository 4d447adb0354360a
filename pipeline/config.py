"""Typed run configuration: YAML in `configs/`, validated before any work starts, with
command-line overrides (`--set corpus.max_sentences=500`)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    Strict,
    StrictInt,
    ValidationError,
    model_validator,
)

from pipeline.errors import PipelineError


class _Section(BaseModel):
    """Every section is strict: a value has the field's own type (no `true` taken as 1, no "5" as 5) and a number
    is finite (no .inf or .nan), so a config that validates can run."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
    )


class CorpusConfig(_Section):
    source: Literal["wikitext_raw", "text", "jsonl", "parquet", "hub"] = "wikitext_raw"
    path: str | None = Field(
        None,
        description="Local file (wikitext_raw, text, jsonl); for parquet also a "
        "directory of .parquet files or a glob.",
    )
    hub_name: str | None = Field(
        None, description="Dataset id on the hub, e.g. wikimedia/wikipedia."
    )
    hub_config: str | None = None
    split: str = "train"
    text_field: str = "text"
    shuffle_buffer: int = Field(
        10_000,
        ge=1,
        description="Streaming shuffle buffer, only for hub datasets that "
        "are not Parquet (the fallback; not a uniform sample).",
    )
    max_documents: int | None = Field(
        None,
        ge=1,
        description="Sample this many documents (seeded, uniform; Parquet: "
        "from the footers, reading only the chosen row groups).",
    )
    max_sentences: int | None = Field(
        None, ge=1, description="Sample this many sentences (seeded): the quantitative analysis."
    )
    exemplar_sentences: int | None = Field(
        None,
        ge=1,
        description="Search exemplars (section 5.4) in this many sentences: "
        "the analysis sample plus further sentences of the same documents "
        "(paper: 100,000); None: the analysis sample only.",
    )
    min_words: int = Field(4, ge=1)
    min_pieces: int = Field(4, ge=2)
    max_pieces: int = Field(128, ge=2)
    min_alpha_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Letters / non-space chars.")
    require_terminal_punctuation: bool = True
    spacy_model: str = "en_core_web_sm"
    batch_size: int = Field(
        256, ge=1, description="spaCy nlp.pipe batch size for sentence splitting."
    )
    n_process: PositiveInt | Literal["auto"] = Field(
        1, description="spaCy worker processes for sentence splitting; auto: the cores."
    )
    part_documents: int = Field(
        1000, ge=1, description="Documents per part of the sentence-splitting pass."
    )
    part_sentences: int = Field(
        10_000,
        ge=1,
        description="Sentences per part: the unit of work, resumption and memory "
        "of every later stage.",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.source == "hub" and not self.hub_name:
            raise ValueError("corpus.hub_name is required when corpus.source is 'hub'")
        if self.source != "hub" and not self.path:
            raise ValueError(f"corpus.path is required when corpus.source is '{self.source}'")
        if self.min_pieces > self.max_pieces:
            raise ValueError("corpus.min_pieces must not exceed corpus.max_pieces")
        if (
            self.exemplar_sentences
            and self.max_sentences
            and self.exemplar_sentences < self.max_sentences
        ):
            raise ValueError(
                f"corpus.exemplar_sentences ({self.exemplar_sentences}) must be at least corpus.max_sentences "
                f"({self.max_sentences}): the exemplar pool contains the analysis sample"
            )
        return self


class AnnotateConfig(_Section):
    n_process: PositiveInt | Literal["auto"] = Field(
        1, description="spaCy worker processes for the parse; auto: the cores."
    )
    batch_size: int = Field(256, ge=1, description="spaCy nlp.pipe batch size.")
    dependency_distances: int = Field(30, ge=1, description="d = 1..this in corpus statistics.")
    tagset: Literal["ud", "paper"] = Field(
        "ud",
        description="ud: spaCy 3's Universal POS; paper: spaCy 2's coarse "
        "tags, a function of the fine-grained tag (no AUX, no SCONJ).",
    )


class ModelConfig(_Section):
    name: str = Field(
        "gpt2",
        description="Hub id, local directory, GGUF file, or pkg:PACKAGE/FILE (a GGUF file or a "
        "transformers directory that a Python package ships).",
    )
    tokenizer: str | None = Field(None, description="Tokenizer source if not the model's own.")
    allow_foreign_tokenizer: bool = Field(
        False,
        description="Use model.tokenizer even where it does not belong to the "
        "model (vocabulary size against the embedding rows, special tokens, the model's "
        "own tokenizer): refused otherwise, before any forward pass.",
    )
    gguf_file: str | None = None
    revision: str | None = None
    bos: Literal["auto", "always", "never"] = Field(
        "auto",
        description="A BOS piece at position 0 of every sentence (decoders): always, never, or auto: as the "
        "tokenizer itself encodes (Llama-3, Gemma: yes; GPT-2, SmolLM2: no). Position 0 is the null piece, so this "
        "decides whether null attention is attention to BOS or to the sentence's first word.",
    )
    add_special_tokens: bool | None = Field(
        None,
        description="Put the tokenizer's own special tokens around each "
        "sentence ([CLS] … [SEP] for BERT); None: yes for encoders (bidirectional "
        "models) when model.bos is auto, no for decoders.",
    )
    too_long: Literal["truncate", "drop"] = "drop"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device_map: Literal["auto"] | None = Field(
        None,
        description="Passed to from_pretrained: auto spreads a model "
        "that does not fit one GPU over the visible GPUs (accelerate); None: "
        "the whole model on model.device.",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "prepend_bos" in data:
            raise ValueError(
                "model.prepend_bos was replaced by model.bos: auto|always|never "
                "(prepend_bos: true → bos: always, false → bos: never)"
            )
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.bos != "auto" and self.add_special_tokens:
            raise ValueError(
                f"model.bos: {self.bos} and model.add_special_tokens are exclusive: the first decides the "
                "BOS piece, the second puts the tokenizer's own special tokens around each sentence"
            )
        return self


class AttendConfig(_Section):
    token_budget: int = Field(4096, ge=16, description="Max padded tokens per forward batch.")
    variability_positions: int = Field(10, ge=0, description="N of footnote 3; 0 disables.")
    entropy_null_threshold: float = Field(0.9, gt=0.0, le=1.0, description="Footnote 4.")
    exemplars_per_head: int = Field(5, ge=1, le=100)
    null_pieces: Literal["auto", "first", "special"] = Field(
        "auto",
        description="Which pieces are null (the paper's first token, whose attention is set apart): first: "
        "position 0; special: the tokenizer's special pieces (BOS, [CLS], [SEP]); auto: first for decoders, special for "
        "encoders.",
    )
    # Beyond the paper (each switchable: 0 or false turns it off, and its cost with it)
    positional_offsets: int = Field(
        20,
        ge=0,
        le=512,
        description="Positional profile: attention share at offsets "
        "i - j = 1..this per head (head roles); 0 disables.",
    )
    dependency_accuracy: bool = Field(
        True,
        description="Clark et al. (2019) per-relation accuracy of each head's "
        "most-attended-to other word (word-level attention), with offset baselines.",
    )
    sink_epsilon: float = Field(
        0.3,
        ge=0.0,
        lt=1.0,
        description="Gu et al. (2024)'s sink rate: a head is a sink on a "
        "sequence when its attention to the first token, averaged over all query rows, exceeds "
        "this (finding sink_rate, column sink_frequency).",
    )
    norm_weighting: bool = Field(
        True, description="Kobayashi et al. (2020): every metric also under ‖α_ij f_h(x_j)‖."
    )
    bootstrap_replicates: int = Field(
        200,
        ge=0,
        le=2000,
        description="Poisson bootstrap over sentences: replicates "
        "for confidence intervals of head and layer metrics and correlations; 0 disables.",
    )
    bootstrap_seed: int = Field(
        0,
        ge=0,
        description="Seed of the bootstrap's per-sentence weights (and of the "
        "logit lens's sentence sample).",
    )
    logit_lens: bool = Field(
        True,
        description="nostalgebraist (2020): decode the residual stream at every depth "
        "through the final norm and the unembedding, in the same forward pass (causal models "
        "with tied embeddings).",
    )
    logit_lens_sample: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["auto"] = Field(
        "auto",
        description="Share of sentences the logit lens decodes: a seeded uniform subset, chosen by a hash of "
        "(bootstrap_seed, sentence id); auto: the share at which the lens costs about 15% of the forward pass, from "
        "the model's dimensions (pipeline/models/memory.py: lens_sample_share), at least 100 sentences.",
    )


class RolesConfig(_Section):
    """Thresholds that label each head's role (head_roles.parquet): written here, so a reader can change them."""

    positional_share: float = Field(
        0.5, gt=0.0, le=1.0, description="positional: one offset takes at least this share."
    )
    sink_null_share: float = Field(
        0.9, gt=0.0, le=1.0, description="sink: null share at least this."
    )
    sink_rate_epsilon: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="The pooled sink rate (not Gu et al.'s: see "
        "attend.sink_epsilon): a head whose null share, pooled over the corpus, exceeds "
        "this is above_sink_epsilon (finding sink_rate_pooled).",
    )
    broad_entropy_quantile: float = Field(
        0.75, gt=0.0, lt=1.0, description="broad: mean entropy in this upper quantile of all heads."
    )
    syntactic_ratio: float = Field(
        3.0, gt=1.0, description="syntactic: dependency alignment at least this × the baseline."
    )


class AggregateConfig(_Section):
    roles: RolesConfig = RolesConfig()


class ExecutorConfig(_Section):
    kind: Literal["local", "ray"] = Field(
        "local", description="local: in this process; ray: actors on a Ray cluster."
    )
    address: str | None = Field(
        None, description="Ray cluster (host:port, or 'auto'); None starts a local Ray."
    )
    cpu_workers: PositiveInt | Literal["auto"] = Field(
        "auto", description="CPU actors (spaCy); auto: the cluster's CPUs."
    )
    gpus_per_worker: float = Field(
        1.0, ge=0.0, description="GPUs per model actor (0: model actors on CPUs)."
    )
    model_workers: PositiveInt | Literal["auto"] = Field(
        "auto", description="Model actors; auto: the cluster's GPUs (one when it has none)."
    )
    connect_timeout_s: float = Field(
        15.0, gt=0.0, le=86_400.0, description="How long an unanswering Ray address may take."
    )


class ReportConfig(_Section):
    exemplar_heads: list[Annotated[tuple[StrictInt, StrictInt], Strict(False)]] | None = (
        Field(  # YAML lists as pairs
            None, description="[[layer, head], ...]; default: max/min variability and max distance."
        )
    )
    formats: list[Literal["png", "svg"]] = ["png", "svg"]


class Config(_Section):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = 0
    data_dir: str = "data"
    reports_dir: str = "reports"
    corpus: CorpusConfig
    annotate: AnnotateConfig = AnnotateConfig()
    model: ModelConfig = ModelConfig()
    attend: AttendConfig = AttendConfig()
    aggregate: AggregateConfig = AggregateConfig()
    executor: ExecutorConfig = ExecutorConfig()
    report: ReportConfig = ReportConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.data_dir) / "runs" / self.run_name


def _describe(error: dict, model: type[BaseModel]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = model
        for part in error["loc"][:-1]:
            field = parent.model_fields.get(str(part)) if isinstance(parent, type) else None
            ann = field.annotation if field else None
            parent = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if parent is None:
                break
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"{key}: unknown key (allowed: {allowed})"
    return f"{key or 'config'}: {error['msg']}"


def set_override(data: dict, assignment: str) -> None:
    """Apply `a.b.c=value` to nested dict `data`; the value is parsed as YAML (so 500, null, [1,2])."""
    if "=" not in assignment:
        raise PipelineError(f"--set expects KEY=VALUE, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise PipelineError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None
) -> Config:
    if data is None:
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise PipelineError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: the top level must be a mapping")
    data = copy.deepcopy(data)
    for assignment in overrides:
        set_override(data, assignment)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [_describe(err, Config) for err in e.errors()]
        raise PipelineError("invalid config: " + "; ".join(lines)) from None


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able data: decides whether a stage's outputs are current."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
