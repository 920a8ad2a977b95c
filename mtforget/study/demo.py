"""The built-in demo study: tiny bases on the synthetic world, every condition of the study once.

Its bases are the pretrained ones shipped in the package (:mod:`mtforget.bases.prebuilt`),
pre-trained with the fine-tuning languages low-resource (:data:`PRETRAIN_MIX`), so fine-tuning
has something to teach them; every base clears the base-quality gate on every direction, and
the contrasts compare bases of matched quality. ``model.prebuilt: false`` pre-trains them
instead. It fine-tunes on English ↔ the first half of the other languages (the default
directions, the low-resource ones) and measures what every direction loses. The grid is a union
of parts, so the study's axes are covered without crossing all of them:

1. model size × fine-tuning data size (two encoder-decoder sizes, data sizes spanning 200×);
2. encoder-decoder vs decoder-only at similar size, and plain-prompt vs instruction-tuned, at the
   largest size (:data:`LARGEST`), where every base gains most and forgetting is strongest;
3. full fine-tuning vs LoRA, each at its own learning rate;
4. the mitigations: cross-lingual alignment and replay (of the directions with an unseen
   language of :data:`REHEARSED`, so the other unseen directions stay untouched).

Parts 3–4 run on the small model at :data:`MITIGATION_SIZE` (half the largest, for the demo's
wall time), where it already gains and forgets, beside a plain trial of the small model at that
size. Each trial of parts 2–4 differs from a plain trial in one key, so the report's controlled
contrasts pair them. The largest size of part 1 also sweeps weight interpolation with the base.
``full`` sweeps
every part's learning rate (:data:`FULL_RATES`, :data:`LORA_RATES`) over :data:`FULL_SEEDS`
fine-tuning seeds (the bases stay the same) and selects a rate per condition and seed by dev
loss, so the report's intervals are over seeds and directions and its contrasts read each
condition at its own rate; the main demo trains each condition at the rate ``full`` selected
(:data:`SELECTED_BY_FULL`). ``quick`` is the CI-sized variant: the shipped
``tiny:small`` at two data sizes, fewer test sentences.
"""

from __future__ import annotations

# Chosen by the demo's runs (docs/explanation/demo-world.md): at 5,000 pairs the bases
# gain about +10 chrF on their supervised directions, at 10,000 about +13.
LARGEST = 10000
MITIGATION_SIZE = 5000
# The learning rates ``--full`` sweeps, per method; it selects one per condition and seed
# (``select: {finetune.lr: dev_loss}``: the lowest dev loss on the fine-tuning directions, a
# choice that never looks at what the other directions lose).
FULL_RATES = [3e-4, 1e-3, 3e-3]
LORA_RATES = [1e-3, 3e-3, 1e-2]
FULL_SEEDS = [0, 1, 2]
# The rates the main demo and ``--quick`` train each condition at: the rate ``mtforget demo
# --full`` selected for it on most of its seeds (its report's learning-rate sensitivity table;
# docs/explanation/findings.md). Keyed by the part of the grid below.
SELECTED_BY_FULL = {"small": 1e-3, "base": 3e-4, "lm": 1e-3, "lm-instruct": 1e-3,
                    "small n=50": 1e-3, "base n=50": 1e-3, "small n=500": 1e-3, "base n=500": 3e-4,
                    "lora": 3e-3, "alignment": 1e-3, "replay": 1e-3, "plain": 1e-3}
# The fine-tuning languages are low-resource in the bases' pre-training, as in every real
# multilingual model: each is drawn a hundredth as often as the other languages, so the bases are
# mediocre on them and strong elsewhere, and fine-tuning has something to teach. Chosen by the
# pilot in docs/explanation/demo-world.md: at a tenth, the bases already translate them and
# fine-tuning teaches nothing.
LOW_RESOURCE = ("xa", "xb", "xc", "xd")
PRETRAIN_MIX = {lang: 0.01 for lang in LOW_RESOURCE}
# Replay rehearses the directions with one of these unseen languages on either side, and leaves
# the other unseen directions untouched: the report shows both (category replayed, and the
# unseen categories of directions it never trained on).
WORLD_LANGUAGES = ("en", *LOW_RESOURCE, "xe", "xf", "xg", "xh", "xi")
REHEARSED = ("xe", "xf")
REPLAYED_DIRECTIONS = [f"{s}-{t}" for s in WORLD_LANGUAGES for t in WORLD_LANGUAGES
                       if s != t and (s in REHEARSED or t in REHEARSED)]


def _parts(rates) -> list[dict]:
    """The demo's grid; ``rates(name, method)`` gives the learning rates of the part ``name``."""
    interpolation = {"eval.interpolation": [[0.25, 0.5, 0.75]]}
    parts = []
    for tiny in ("small", "base"):
        for size in (50, 500):
            parts.append({"model.tiny": [tiny], "finetune.size": [size], "finetune.lr": rates(f"{tiny} n={size}")})
        # Interpolation with the base where forgetting is largest (it does not change the trial's
        # own scores, so these trials still pair with the ones below).
        parts.append({"model.tiny": [tiny], "finetune.size": [LARGEST], **interpolation, "finetune.lr": rates(tiny)})
    for tiny in ("lm", "lm-instruct"):
        parts.append({"model.tiny": [tiny], "finetune.size": [LARGEST], "finetune.lr": rates(tiny)})
    parts += [
        {"finetune.size": [MITIGATION_SIZE], "finetune.lr": rates("plain")},
        {"finetune.method": ["lora"], "finetune.size": [MITIGATION_SIZE], "finetune.lr": rates("lora", "lora")},
        {"finetune.alignment.enabled": [True], "finetune.size": [MITIGATION_SIZE], "finetune.lr": rates("alignment")},
        {"finetune.replay": [{"fraction": 0.25, "directions": REPLAYED_DIRECTIONS}], "finetune.size": [MITIGATION_SIZE],
         "finetune.lr": rates("replay")},
    ]
    return parts


def demo_study(quick: bool = False, full: bool = False) -> dict:
    """The demo study as a raw config mapping (``--set`` overrides apply on top); ``full`` sweeps
    the learning rates and repeats every condition over :data:`FULL_SEEDS`."""
    world = {"synthetic": {"languages": 10, "segments": 20000}, "dev_size": 200, "test_size": 40}
    if quick:
        # The demo's world, so the shipped tiny:small serves (no pre-training), with two data sizes
        # and fewer test sentences per direction.
        return {
            "name": "demo-quick",
            "model": {"tiny": "small", "pretrain_mix": dict(PRETRAIN_MIX)},
            "corpus": world,
            "finetune": {"lr": SELECTED_BY_FULL["small"], "epochs": 1, "eval_every": 20},
            # 20 sentences: the base-quality gate needs 20 per direction. The curve samples
            # forgetting while each trial trains (a budget, --set
            # finetune.forgetting_budget.max_drop=N, stops a trial on it).
            "eval": {"max_sentences": 20, "during_training": {"every": 20}},
            "grid": {"finetune.size": [50, 3000]},
        }
    if full:
        parts = [{**part, "seed": FULL_SEEDS} for part in
                 _parts(lambda name, method="full": LORA_RATES if method == "lora" else FULL_RATES)]
    else:
        parts = _parts(lambda name, method="full": [SELECTED_BY_FULL[name]])
    return {
        "name": "demo-full" if full else "demo",
        "model": {"tiny": "small", "pretrain_mix": dict(PRETRAIN_MIX)},
        "corpus": world,
        "finetune": {"epochs": 1, "eval_every": 25},
        # The curve's sample (3 directions per category, 20 sentences each) is also the frontier's
        # step points, each with its interval.
        "eval": {"max_sentences": 40, "paired_resamples": 500,
                 "during_training": {"every": 50, "directions": 3, "sentences": 20}},
        "select": {"finetune.lr": "dev_loss"},
        # Two worker processes of one thread each: on two cores they run two trials at once,
        # which is faster than one process with two threads (small matrices scale poorly). They
        # stay for the whole demo: a new process per trial would import PyTorch and transformers
        # again for each of its small trials (benchmarks/demo_wall.py measures both).
        "workers": 2,
        "resources": {"fresh_process": False},
        "grid": parts,
    }


def fit_to_corpus(raw: dict, overrides: list[str]) -> dict:
    """The demo config ``raw`` (overrides applied) without its pre-training mix when the user gave a
    corpus (``corpus.path``) or a base (``model.path``) of their own and no mix: the mix names the
    synthetic world's languages, a user's corpus pre-trains its bases evenly unless asked
    otherwise, and a checkpoint is not pre-trained here at all."""
    own_mix = any(item.partition("=")[0].strip().startswith("model.pretrain_mix") for item in overrides)
    if ("path" in raw.get("corpus", {}) or raw["model"].get("path")) and not own_mix:
        raw = {**raw, "model": {k: v for k, v in raw["model"].items() if k != "pretrain_mix"}}
    return raw
