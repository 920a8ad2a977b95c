"""What a finished trial records about itself besides its rows: written by the trial into
``result.json`` and the store, read back by the report."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class TrialResult:
    """Facts about one done trial (all of them JSON-serialisable)."""

    model: str  # the condition's model label (``tiny:small``, a checkpoint's name)
    base_dir: str  # where the base came from: a checkpoint directory or hub id
    parameters: int
    trainable_parameters: int
    method: str  # full or lora
    architecture: str  # encoder-decoder or decoder-only
    language_control: str  # language tokens' convention, chat template or plain prompt
    finetune_directions: list[str]
    finetune_examples: int
    languages: list[str]
    added_language_tokens: list[str]
    train: dict  # the fine-tuning run's TrainOutcome
    precision: str  # finetune.precision as it ran: fp32 (master weights), bf16 or bf16-kahan
    grad_accumulation: int | None  # None: not trained here (finetune.checkpoints)
    effective_batch_size: int | None
    max_length: int
    overlap_dropped: int  # finetune.data pairs dropped for repeating an evaluation or dev sentence
    missing_directions: list[str]  # directions without test sentences
    category_ci: dict  # metric → category → paired interval of the mean delta
    lid: str
    lid_accuracy: float
    metric_signatures: dict[str, str]
    device: str
    gpu: str | None
    engine: str
    engine_fallback_reason: str | None
    processes: int
    threads: int
    pid: int
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    finetune_data: dict | None = None  # sources and available pairs when finetune.data is set
    mitigations: dict[str, dict] = field(default_factory=dict)  # each mitigation that is on: what it kept
    representations: dict | None = None  # layer-wise retrieval, base and fine-tuned
    # Sampled during training (eval.during_training): {"step", "tokens", <category>: chrF change}
    # from step 0, and the proxy loss on unseen dev pairs with its correlation to that change.
    forgetting_curve: list[dict] | None = None
    forgetting_proxy: dict | None = None
    # Per curve point: {"step", "directions": {"src-tgt": [category, chrF change]}}.
    forgetting_curve_by_direction: list[dict] | None = None
    dtype: str | None = None  # model.dtype as resolved: the weights' dtype when loaded and evaluated
    eval_processes: int | None = None  # processes that translated the fine-tuned evaluation
    # A checkpoint fine-tuned elsewhere (finetune.checkpoints), evaluated instead of trained: its
    # folder, kind (full or adapter), method, Trainer step and tokens, run folder and tokenizer.
    checkpoint: dict | None = None
    base_revision: str | None = None  # a hub base's commit (model.revision as resolved); None for a local one
    # What the mitigations trained on beyond the fine-tuning directions (Exposure.to_dict).
    exposure: dict | None = None
    pivot: str | None = None  # the study's pivot language
    # Per direction, how many outputs the identifier put in each language, base and fine-tuned
    # (mtforget.evaluate.drift.output_languages).
    output_languages: dict | None = None
    # Per study language: family, script and pre-training weight where known.
    language_facts: dict | None = None

    def to_dict(self) -> dict:
        """Plain data for ``result.json`` and the store."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrialResult:
        """The result stored as ``data``; keys it does not know (written by another version) are
        ignored, and facts that version did not record take their defaults or None."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name, f in known.items():
            if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[name] = None
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | None) -> TrialResult | None:
        """The result stored as JSON ``text`` (None for a trial without one)."""
        return cls.from_dict(json.loads(text)) if text else None

    @property
    def tokens_per_parameter(self) -> float | None:
        """Fine-tuning tokens divided by model parameters (the study's first axis)."""
        tokens = (self.train or {}).get("tokens")
        return tokens / self.parameters if tokens and self.parameters else None
