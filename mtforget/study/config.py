"""The study config: a pydantic schema validated at load, ``--set`` overrides, and clear errors.

Every key of a study file maps to a field below; an unknown key is an error that names it and the
closest valid key. Defaults are the embedded synthetic world and the small built-in base.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import itertools
import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from mtforget.data.categories import parse_direction
from mtforget.data.textfile import read_text
from mtforget.errors import UsageError
from mtforget.evaluate.engines.registry import describe_choices, engine_choices
from mtforget.evaluate.metrics import REGISTRY, optional_names
from mtforget.mitigations import MITIGATIONS
from mtforget.study.yamlfile import parse_yaml

# Learning-rate schedules of transformers.get_scheduler that need nothing beyond warm-up and total
# steps (the others take extra arguments or a metric at every step, which the loop does not give).
Schedule = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                   "inverse_sqrt"]
SCHEDULES = get_args(Schedule)


class _Strict(BaseModel):
    # A field's docstring is its description: the generated config reference prints it.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelConfig(_Strict):
    """The base model: a built-in tiny size, or a checkpoint (``path`` wins when both are set)."""

    tiny: Literal["small", "base", "lm", "lm-instruct"] | None = "small"
    """A built-in base, trained here or shipped in the package: the encoder-decoders `small` (0.5M
    parameters) and `base` (2.4M); the decoders `lm` (0.5M, plain prompt) and `lm-instruct` (`lm`
    instruction-tuned through a chat template)."""
    path: str | None = None
    """A checkpoint directory (safetensors) or a Hugging Face hub id; wins over `tiny`."""
    revision: str | None = None
    """A hub model's branch, tag or commit to load. It is resolved to its commit (from the local
    Hugging Face cache, else the hub), which identifies the base and is recorded with each trial:
    unset, the default branch as it is now. An error with a local `path`."""
    trust_remote_code: bool = False
    """Allow custom model code from the checkpoint."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: trade compute for memory on large models."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The dtype the weights load and are evaluated in: `auto` is bfloat16 on a GPU that supports
    it, float32 elsewhere. Set explicitly, it enters the trial id."""
    seed: int = Field(0, ge=0)
    """Initialisation and pre-training order of a tiny base."""
    pretrain_steps: int | None = Field(None, ge=1)
    """Pre-training steps of a tiny base; unset: the size's own budget. An error when every trial
    starts from `path`."""
    prebuilt: bool = True
    """Start from the base shipped in the package when its manifest matches this corpus and
    recipe; false pre-trains it here (`mtforget demo --from-scratch`)."""
    pretrain_mix: dict[str, float] = {}
    """A tiny base's pre-training mix: language → weight in (0, 1], the others weigh 1. A language
    of weight 0.1 is seen about a tenth as often as the others, low-resource as in a real
    multilingual model's mix. Part of the base's cache key; a mix no trial uses is an error."""

    @field_validator("pretrain_mix")
    @classmethod
    def _weights(cls, mix: dict[str, float]) -> dict[str, float]:
        for lang, weight in mix.items():
            if not 0 < weight <= 1:
                raise ValueError(f"the weight of {lang} is {weight}; give a weight in (0, 1]")
        return dict(sorted(mix.items()))

    @model_validator(mode="after")
    def _has_a_base(self) -> ModelConfig:
        if not self.path and not self.tiny:
            raise ValueError("give a base model: model.path (a checkpoint or hub id) or model.tiny "
                             "(small, base, lm or lm-instruct)")
        if self.path is not None and not self.path.strip():
            raise ValueError("model.path is empty; give a checkpoint directory or hub id, or remove the key")
        return self


class SyntheticConfig(_Strict):
    """The synthetic multilingual world used when ``corpus.path`` is absent."""

    languages: int = Field(10, ge=2)
    """Languages of the world, the English-like pivot included (at most 17)."""
    segments: int = Field(20000, ge=100)
    """Multi-parallel segments generated."""
    seed: int = Field(0, ge=0)
    """Lexicons, grammars and sentences."""


class CorpusConfig(_Strict):
    """Where segments come from and how they are split (by segment id)."""

    path: str | None = None
    """A corpus file, folder or dataset name; unset: the synthetic world."""
    format: Literal["jsonl", "flores", "tsv", "hf"] = "jsonl"
    """`jsonl` (the Hugging Face translation convention), `flores` (a FLORES-200 or FLORES+
    folder), `tsv` (bitext), `hf` (a `datasets` name or local JSON)."""
    tsv_languages: list[str] | None = None
    """Format `tsv`: the languages of the two columns, e.g. `[en, de]`."""
    flores_splits: list[str] | None = None
    """Format `flores`: the split folders to read, e.g. `[dev, devtest]`; unset: all."""
    hf_config: str | None = None
    """Format `hf`: the dataset config name (e.g. `de-en`)."""
    hf_split: str = "train"
    """Format `hf`: the split to read."""
    synthetic: SyntheticConfig = SyntheticConfig()
    """The synthetic world, when `path` is unset."""
    languages: list[str] | None = None
    """Restrict the study to these languages; unset: every language of the corpus."""
    max_words: int | None = Field(None, ge=1)
    """Drop segments with a text over this many words (or 8× as many characters)."""
    dev_size: int = Field(200, ge=1)
    """Segments held out for early stopping."""
    test_size: int = Field(100, ge=1)
    """Segments held out for testing."""
    split_seed: int = Field(0, ge=0)
    """Seed of the hash that splits segments into train, dev and test."""


class LoraConfig(_Strict):
    """LoRA adapters (peft). ``target_modules`` unset: attention and MLP projections, found by name."""

    rank: int = Field(8, ge=1)
    """Rank of each adapter."""
    alpha: float = Field(16, gt=0)
    """Scaling: the update is alpha / rank × BA."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[str] | None = None
    """Names of the projections to adapt; unset: found per architecture (`q_proj` … `fc2`,
    `gate_proj` …)."""


class DataSourceConfig(_Strict):
    """One source of fine-tuning bitext (``finetune.data``): the keys of ``corpus`` that say where
    and how to read it."""

    path: str
    """A file, folder or dataset name, read like `corpus.path`."""
    format: Literal["jsonl", "flores", "tsv", "hf"] = "jsonl"
    """As `corpus.format`."""
    tsv_languages: list[str] | None = None
    """Format `tsv`: the languages of the two columns."""
    flores_splits: list[str] | None = None
    """Format `flores`: the split folders to read; unset: all."""
    hf_config: str | None = None
    """Format `hf`: the dataset config name."""
    hf_split: str = "train"
    """Format `hf`: the split to read."""

    @model_validator(mode="after")
    def _columns_named(self) -> DataSourceConfig:
        if self.format == "tsv" and (not self.tsv_languages or len(self.tsv_languages) != 2):
            raise ValueError("tsv_languages: give the languages of the two columns, e.g. [cs, en]")
        return self


class _FinetuneCore(_Strict):
    """What a trial fine-tunes on, and how (each mitigation's key joins these: FinetuneConfig)."""

    directions: list[str] | None = None
    """Fine-tuning directions, a list of `src-tgt`; unset: English (or the corpus's most frequent
    language) ↔ the first half of the others."""
    data: list[DataSourceConfig] | None = None
    """Bitext sources to fine-tune on, apart from the evaluation corpus (a benchmark such as
    FLORES-200); pairs that repeat an evaluation or dev sentence are dropped and counted. Unset:
    the corpus's training split."""
    size: int = Field(1000, ge=1)
    """Training examples (sentence pairs), spread evenly over the directions; more than the data
    holds is an error."""
    method: Literal["full", "lora"] = "full"
    """`full` fine-tuning, or `lora` (peft adapters, merged into the weights for evaluation)."""
    lora: LoraConfig = LoraConfig()
    """The adapters of `method: lora`."""
    lr: float = Field(1e-4, gt=0)
    """AdamW's learning rate."""
    epochs: float = Field(2.0, gt=0)
    """Passes over the training examples."""
    steps: int | None = Field(None, ge=1)
    """Optimizer steps, whatever the data size: the examples are repeated (a new order each pass)
    as often as needed, so a study can hold the training budget fixed while `size` varies. Unset:
    `epochs` decide; setting both is an error."""
    batch_size: int = Field(32, ge=1)
    """Examples per micro-batch, summed over processes (a multiple of their number under a
    launch). Each optimizer step trains on `batch_size × grad_accumulation` examples with
    token-weighted losses: the gradient of one batch of that size. Steps, epochs, `eval_every` and
    `checkpoint_every` count optimizer steps; alignment batches are not accumulated."""
    grad_accumulation: int = Field(1, ge=1)
    """Micro-batches per optimizer step (`batch_size: 32, grad_accumulation: 4` is the paper's 128)."""
    max_length: int = Field(128, ge=8)
    """Tokens per side, special tokens included, for training, alignment and evaluation inputs: the
    source and the target (encoder-decoder), the prompt and the answer (decoder-only); longer ones
    are cut."""
    schedule: Schedule = "constant_with_warmup"
    """The learning-rate schedule (`transformers.get_scheduler`)."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of the steps spent warming up."""
    eval_every: int = Field(25, ge=1)
    """Steps between dev-loss checks; the best dev weights are kept."""
    patience: int = Field(4, ge=0)
    """Dev checks without improvement before stopping early; 0: never."""
    dev_size: int = Field(200, ge=1)
    """Dev examples of the fine-tuning directions."""
    checkpoint_every: int = Field(100, ge=0)
    """Steps between resumable training checkpoints; 0: none."""
    precision: Literal["auto", "fp32", "bf16", "bf16-kahan"] = "auto"
    """How the trainable weights and AdamW's states are kept: `auto` = `fp32` (float32 master
    weights, autocast in the load dtype), `bf16` (pure bfloat16: updates round away), `bf16-kahan`
    (bfloat16 with Kahan-summed AdamW; the `lowmem` extra). Set explicitly, it enters the trial id."""
    checkpoints: list[str] | None = None
    """Folders (or globs such as `run/checkpoint-*`, expanded in step order) fine-tuned elsewhere
    from `model.path`: full models or PEFT adapters, each a trial that is evaluated, not trained;
    needs `directions`."""

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value  # one folder or glob
        if isinstance(value, list) and (not value or not all(isinstance(v, str) and v.strip() for v in value)):
            raise ValueError("give checkpoint folders or globs, e.g. [run/checkpoint-*]")
        return value

    @field_validator("directions")
    @classmethod
    def _directions(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("give at least one direction like 'en-de'")
            for d in value:
                parse_direction(d)
        return value


class CometConfig(_Strict):
    """COMET through a subprocess in an environment that has unbabel-comet."""

    python: str
    """That environment's interpreter."""
    checkpoint: str
    """A COMET checkpoint file, e.g. `wmt22-comet-da/checkpoints/model.ckpt`."""
    scorer: str | None = None
    """A script following the protocol of the built-in `comet_score.py`; unset: that script."""
    batch_size: int = Field(32, ge=1)
    """Segments per COMET batch."""
    gpus: int = Field(0, ge=0)
    """GPUs COMET may use."""


class BaseGateConfig(_Strict):
    """Which directions the base model cannot translate well enough for a delta to mean anything.

    A direction is flagged when its base chrF is under ``min_chrf``, more than ``max_empty`` of
    its base outputs are empty, more than ``max_off_target`` are in the wrong language, more than
    ``max_repeated`` are one and the same sentence, or it has fewer than ``min_sentences`` test
    sentences. Flagged directions keep their rows (with the
    reason in ``base_flag``) but are left out of every category mean unless ``include_flagged``.
    """

    min_chrf: float = Field(10.0, ge=0, le=100)
    """The base's chrF floor."""
    max_empty: float = Field(0.5, ge=0, le=1)
    """The largest share of empty base outputs."""
    max_off_target: float = Field(0.5, ge=0, le=1)
    """The largest share of base outputs in the wrong language."""
    max_repeated: float = Field(0.5, gt=0, le=1)
    """The largest share of base outputs that are one and the same sentence."""
    min_sentences: int = Field(20, ge=1)
    """Test sentences a direction needs."""
    include_flagged: bool = False
    """Count flagged directions in the category means anyway."""


class DuringTrainingConfig(_Strict):
    """Forgetting sampled while a trial fine-tunes: a fixed, seeded sample of ``directions``
    directions per category and ``sentences`` test sentences each, translated at step 0 and every
    ``every`` steps (0 = off)."""

    every: int = Field(0, ge=0)
    """Steps between samples; 0: off."""
    sentences: int = Field(5, ge=1)
    """Test sentences per sampled direction."""
    directions: int = Field(2, ge=1)
    """Directions sampled per direction category."""


class _EvalCore(_Strict):
    """How every direction is evaluated (greedy decoding); analyses after training join these
    (EvalConfig)."""

    metrics: list[str] = []
    """Optional metrics beyond the ones always computed (chrF, chrF++, BLEU, off-target):
    `comet`, `ter`."""
    comet: CometConfig | None = None
    """COMET's environment and checkpoint, for `metrics: [comet]`."""
    max_sentences: int = Field(50, ge=1)
    """Test sentences per direction."""
    batch_size: int | None = Field(None, ge=1)
    """Sentences per decoding batch at most; unset: 128 on a CPU, as many as free GPU memory holds
    on a GPU."""
    max_new_tokens: int = Field(64, ge=1)
    """New tokens per greedy translation."""
    engine: str = "auto"
    """The generation engine: `auto` (CTranslate2 once it has translated a probe sentence on the
    model's device, else Hugging Face `generate`, the reason logged), `ctranslate2` (exit 2 when
    it cannot translate), `hf`."""
    compute_type: Literal["default", "float32", "int8", "int8_float32"] = "default"
    """CTranslate2's arithmetic: `default` is float32 on a CPU (the Hugging Face model's numbers)
    and the model's half precision on a GPU; the int8 types trade exactness for speed."""
    bootstrap_resamples: int = Field(2000, ge=100)
    """Resamples of the report's intervals over directions and seeds."""
    paired_resamples: int = Field(1000, ge=100)
    """Resamples of the paired bootstrap over test sentences, per direction."""
    representations: bool = True
    """Layer-wise cross-lingual retrieval of the base and the fine-tuned model."""
    representation_sentences: int = Field(100, ge=2)
    """Test sentences per language for the representations."""
    base_gate: BaseGateConfig = BaseGateConfig()
    """When a direction's base cannot translate well enough to be scored."""
    during_training: DuringTrainingConfig = DuringTrainingConfig()
    """Forgetting sampled while a trial fine-tunes."""

    @field_validator("metrics")
    @classmethod
    def _registered(cls, value: list[str]) -> list[str]:
        known = optional_names()
        for name in value:
            if name not in known:
                always = " (it is always computed)" if name in REGISTRY else ""
                raise ValueError(f"unknown optional metric {name!r}{always}; the optional metrics are "
                                 f"{', '.join(known)}")
        return value

    @field_validator("engine")
    @classmethod
    def _engine(cls, value: str) -> str:
        if value not in engine_choices():
            raise ValueError(f"unknown engine {value!r} ({describe_choices()})")
        return value


def _with_mitigations(name: str, core: type[_Strict], section: str) -> type[_Strict]:
    """``core`` plus a field for each mitigation whose key lives in ``section`` (registry order):
    a mitigation declares its own key and settings, so adding one does not touch this file."""
    fields = {m.key.split(".", 1)[1]: (m.settings_type, Field(default_factory=lambda m=m: copy.deepcopy(m.default),
                                                              description=inspect.cleandoc(m.__doc__ or "")))
              for m in MITIGATIONS.values() if m.key.split(".", 1)[0] == section}
    return create_model(name, __base__=core, __module__=__name__, **fields)


FinetuneConfig = _with_mitigations("FinetuneConfig", _FinetuneCore, "finetune")
EvalConfig = _with_mitigations("EvalConfig", _EvalCore, "eval")


class RayConfig(_Strict):
    """Where Ray runs trials."""

    address: str | None = None
    """The address of a running Ray cluster; unset: a local Ray."""


class ResourcesConfig(_Strict):
    """What one trial needs; the executor reserves it (Ray) and gives the trial that many threads.

    The thread count changes the order of floating-point sums, so set ``cpus`` to compare numbers
    across runs and executors bit for bit.
    """

    cpus: int | None = Field(None, ge=1)
    """Cores (threads) per trial; unset: the cores free when the study starts for an in-process
    trial, an equal share of them per worker process, one core per Ray task."""
    gpus: float = Field(0, ge=0)
    """GPUs per trial (Ray)."""
    fresh_process: bool = True
    """A trial that runs outside the scheduling process (`workers` > 1, Ray) gets a process of its
    own that exits after it, so its memory goes back to the system; false keeps the workers for the
    whole study and saves their start-up."""


class ReportConfig(_Strict):
    """How the report reads a study (not part of any trial's identity)."""

    matched_gain: float | None = None
    """The supervised chrF gain at which each contrast's forgetting is read off the conditions'
    learning–forgetting frontiers; unset: the largest gain that every condition of the contrast
    reaches."""


# Rules that pick one value of a swept key per condition, from finished trials alone.
SelectRule = Literal["dev_loss"]


def _check_comet(study: StudyConfig) -> None:
    if "comet" in study.eval.metrics and study.eval.comet is None:
        raise ValueError("eval.comet: 'comet' is in eval.metrics; give eval.comet.python and eval.comet.checkpoint")


class StudyConfig(_Strict):
    """A study: one base config and a grid of values whose cross product is the set of trials.

    ``grid`` may also be a list of such mappings: the trials are then the union of their cross
    products, so a study can cross size × data size and add other conditions at one data size.

    ``executor``, ``workers``, ``ray``, ``resources`` and ``tensorboard`` say how trials run, not
    what they compute: they are not part of a trial's identity.
    """

    name: str = "study"
    """The study's label (not part of trial identity)."""
    seed: int = Field(0, ge=0)
    """The fine-tuning data sample and the training order."""
    model: ModelConfig = ModelConfig()
    """The base model."""
    corpus: CorpusConfig = CorpusConfig()
    """The evaluation corpus (and the fine-tuning data, unless `finetune.data`)."""
    finetune: FinetuneConfig = FinetuneConfig()
    """What each trial fine-tunes on and how, with its mitigations."""
    eval: EvalConfig = EvalConfig()
    """How every direction is evaluated, and the analyses after training."""
    grid: dict[str, list[Any]] | list[dict[str, list[Any]]] = {}
    """Dotted key → list of values; the cross product is the set of trials. A list of such
    mappings: the union of their cross products."""
    executor: Literal["local", "ray"] = "local"
    """Where trials run: in this process or local worker processes (`workers`), or on Ray."""
    workers: int = Field(1, ge=1)
    """Local executor: trials in this many separate processes when more than 1."""
    ray: RayConfig = RayConfig()
    """The Ray cluster of `executor: ray`."""
    resources: ResourcesConfig = ResourcesConfig()
    """What one trial reserves."""
    tensorboard: bool = False
    """Also log training curves for TensorBoard under `trials/<id>/tensorboard`."""
    select: dict[Literal["finetune.lr"], SelectRule] = {}
    """A key swept by the grid, chosen per condition: `{finetune.lr: dev_loss}` takes, for every
    combination of the other keys (model, method, mitigations, size, seed), the trial with the
    lowest dev loss on the fine-tuning directions (never looking at the other directions). The
    report's headline tables and contrasts use the selected trials; every rate stays in the store,
    in the sensitivity table and on the frontiers."""
    report: ReportConfig = ReportConfig()
    """How the report reads the study."""

    @model_validator(mode="after")
    def _metrics_have_settings(self) -> StudyConfig:
        _check_comet(self)
        return self


# How a study runs or is read, not what a trial computes (excluded from trial ids).
EXECUTION_KEYS = ("name", "grid", "executor", "workers", "ray", "resources", "tensorboard", "select", "report")


def valid_keys(model: type[BaseModel] = StudyConfig, prefix: str = "") -> list[str]:
    """Every dotted key a study accepts (``finetune.size``, ``corpus.synthetic.seed`` ...)."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        # A nested block, also an optional one (``CometConfig | None``), has keys of its own.
        for annotation in (field.annotation, *get_args(field.annotation)):
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys += valid_keys(annotation, f"{key}.")
                break
    return keys


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, [k for k in valid_keys() if k != key], n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}"


def _check_key(key: str, where: str) -> None:
    """``key`` must be a study key that a grid axis or ``--set`` can name."""
    if key == "grid" or key.startswith("grid."):
        raise UsageError(f"{where}: a grid axis is a study key such as finetune.size; 'grid' itself cannot be one")
    if key not in valid_keys():
        raise UsageError(f"{where}: {_unknown_key_message(key)}")


def grid_parts(grid: Any) -> list:
    """The mappings of a grid: itself, or each item of a list grid (nothing for no grid)."""
    if isinstance(grid, list):
        return grid
    return [grid] if grid else []


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict, creating levels as needed."""
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


# Keys that hold paths. A relative path in a study file is relative to the file's folder; one given
# with --set (or to the demo) is relative to the working directory. Model and dataset names of the
# hub look like relative paths too, so those keys take a value as a path only when it exists there
# or plainly is one (./, ../, ~); a corpus file (not format hf) and the COMET scorer files always are.
PATH_KEYS = ("model.path", "corpus.path", "eval.comet.python", "eval.comet.checkpoint", "eval.comet.scorer")


def resolve_path(key: str, value: Any, base: Path, raw: dict) -> Any:
    """``value`` of path key ``key`` made absolute against ``base`` where it names a local path."""
    if not isinstance(value, str) or not value.strip():
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base / path
    corpus = raw.get("corpus") if isinstance(raw.get("corpus"), dict) else {}
    if key == "corpus.path":
        always_local = corpus.get("format", "jsonl") != "hf"
    elif key == "eval.comet.python":
        always_local = "/" in value  # a bare name is a command on PATH
    else:
        always_local = key.startswith("eval.comet.")
    if always_local or candidate.exists() or value.startswith(("./", "../", "~")):
        return os.path.normpath(os.path.abspath(candidate))
    return value


def resolve_value(key: str, value: Any, base: Path, raw: dict) -> Any:
    """The value of ``key`` with its relative paths made absolute against ``base``: a path key's
    value, or each source's ``path`` of ``finetune.data`` (read like ``corpus.path``)."""
    if key in PATH_KEYS:
        return resolve_path(key, value, base, raw)
    if key == "finetune.checkpoints" and isinstance(value, (list, str)):  # always local folders (or globs)
        return [os.path.normpath(os.path.abspath(base / Path(v).expanduser())) if isinstance(v, str) and v.strip()
                else v for v in ([value] if isinstance(value, str) else value)]
    if key == "finetune.data" and isinstance(value, list):
        return [{**s, "path": resolve_path("corpus.path", s["path"], base, {"corpus": s})}
                if isinstance(s, dict) and "path" in s else s for s in value]
    return value


def resolve_paths(raw: dict, base: Path) -> dict:
    """``raw`` with the relative paths of its path-bearing keys (and of its grid's values for
    them) made absolute against ``base``."""
    raw = _deep_copy(raw)
    for key in (*PATH_KEYS, "finetune.data", "finetune.checkpoints"):
        node: Any = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = resolve_value(key, node[leaf], base, raw)
    for part in grid_parts(raw.get("grid")):
        for key, values in part.items() if isinstance(part, dict) else ():
            if isinstance(values, list):
                part[key] = [resolve_value(key, v, base, raw) for v in values]
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``--set KEY=VALUE`` strings (values parsed as YAML: ``1e-4``, ``[100, 1000]``, ``lora``).

    ``--set grid.finetune.size=[10,100]`` sets one grid axis (in every part of a list grid).
    """
    raw = _deep_copy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set {item}: expected KEY=VALUE, e.g. --set finetune.size=1000")
        value = parse_yaml(text, f"--set {item}", lines=False) if text.strip() else None
        if key == "grid":
            # The whole grid replaced (None or {} removes it); parse_study checks its shape.
            raw["grid"] = resolve_paths({**raw, "grid": value}, Path.cwd())["grid"] if value is not None else {}
        elif key.startswith("grid."):
            axis = key.removeprefix("grid.")
            _check_key(axis, f"--set {item}")
            # Paths typed on the command line are relative to the working directory.
            values = [resolve_value(axis, v, Path.cwd(), raw) for v in (value if isinstance(value, list) else [value])]
            parts = grid_parts(raw.get("grid"))
            if not parts:  # no grid yet: this axis starts one
                raw["grid"] = {}
                parts = [raw["grid"]]
            for part in parts:
                part[axis] = values
        else:
            _check_key(key, f"--set {item}")
            set_dotted(raw, key, resolve_value(key, value, Path.cwd(), raw))
            # A value set on the command line replaces the grid axis of the same key.
            for part in grid_parts(raw.get("grid")):
                part.pop(key, None)
    return raw


def parse_study(raw: dict, source: str, overrides: list[str] | None = None) -> StudyConfig:
    """Validate a raw mapping; every problem is a :class:`UsageError` naming the key, and the
    ``--set`` item (of ``overrides``) that gave its value rather than ``source`` when one did."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: a study file must be a YAML mapping of keys to values")
    grid = raw.get("grid") or {}
    if not isinstance(grid, (dict, list)) or not all(isinstance(part, dict) for part in grid_parts(grid)):
        raise UsageError(f"{source}: grid: expected a mapping from dotted keys to lists of values "
                         "(or a list of such mappings)")
    for part in grid_parts(grid):
        for axis, values in part.items():
            where = _blame(source, f"grid.{axis}", overrides)
            _check_key(str(axis), where if where != source else f"{source}: grid")
            if not isinstance(values, list) or not values:
                raise UsageError(f"{where}: grid.{axis}: expected a non-empty list of values")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{_blame(source, _error_key(exc), overrides)}: {_describe(exc)}") from None
    for key in study.select:
        if not any(key in part for part in grid_parts(grid)):
            raise UsageError(f"{_blame(source, 'select', overrides)}: select.{key}: {key} is not swept by the grid; "
                             f"give its values to choose from, e.g. grid: {{{key}: [3e-4, 1e-3]}}")
    # Every trial the grid makes must be a valid config too (values can conflict only in
    # combination): check them all before any trial runs.
    for chosen in grid_combinations(grid) or [{}]:
        probe = _deep_copy(raw)
        probe.pop("grid", None)
        for axis, value in chosen.items():
            set_dotted(probe, axis, value)
        finetune = probe.get("finetune") if isinstance(probe.get("finetune"), dict) else {}
        if finetune.get("steps") is not None and "epochs" in finetune:
            # Both given by the user (a resolved config always holds epochs, so not a schema rule).
            where = next((b for b in (_blame(source, f"grid.{axis}", overrides) for axis in chosen) if b != source),
                         _blame(source, "finetune.steps", overrides))
            raise UsageError(f"{where}: finetune.steps: give finetune.steps or finetune.epochs, not both")
        try:
            StudyConfig.model_validate(probe)
        except ValidationError as exc:
            where = ", ".join(f"{axis}={value!r}" for axis, value in chosen.items())
            blamed = next((b for b in (_blame(source, f"grid.{axis}", overrides) for axis in chosen) if b != source),
                          _blame(source, _error_key(exc), overrides))
            raise UsageError(f"{blamed}: grid ({where}): {_describe(exc)}") from None
    return study


def _blame(source: str, key: str, overrides: list[str] | None) -> str:
    """Who gave the value of dotted ``key``: the last ``--set`` item that set it (or a block or a
    key inside it), else ``source``."""
    for item in reversed(overrides or []):
        given = item.partition("=")[0].strip()
        if key == given or key.startswith(given + ".") or given.startswith(key + ".") and key:
            return f"--set {item}"
    return source


def _error_key(exc: ValidationError) -> str:
    return ".".join(str(p) for p in exc.errors()[0]["loc"])


def grid_combinations(grid: Any) -> list[dict[str, Any]]:
    """The grid's trials as ``{dotted key: value}`` mappings: each part's cross product, in order."""
    return [dict(zip(part, values)) for part in grid_parts(grid) for values in itertools.product(*part.values())]


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Read a study YAML file, apply ``--set`` overrides and validate."""
    path = Path(path)
    raw = parse_yaml(read_text(path, "study file"), str(path))
    if raw is None or raw == {}:
        # Every key has a default, so an empty file would silently run the default study.
        raise UsageError(f"{path}: the study file is empty; give at least one key (e.g. model.tiny or "
                         "model.path), or run the built-in study with 'mtforget demo'")
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: a study file must be a YAML mapping of keys to values")
    return parse_study(apply_overrides(resolve_paths(raw, path.parent), overrides or []), str(path), overrides)


def study_to_dict(study: StudyConfig) -> dict:
    """The resolved study as plain data (for ``study.yaml`` and trial configs)."""
    return study.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return _unknown_key_message(key)
    message = err["msg"].removeprefix("Value error, ")
    return f"{key}: {message}" if key else message


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw
