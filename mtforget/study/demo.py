"""The built-in demo study: tiny bases on the synthetic world, every condition of the study once.

It fine-tunes on English ↔ the first half of the other languages (the default directions) and
measures what every direction loses. The grid is a union of parts, so the study's axes are covered
without crossing all of them:

1. model size × fine-tuning data size (two encoder-decoder sizes, three data sizes spanning 100×);
2. encoder-decoder vs decoder-only at similar size, and plain-prompt vs instruction-tuned;
3. full fine-tuning vs LoRA;
4. the mitigations: cross-lingual alignment and replay.

Parts 2–4 run at the largest data size, where forgetting is strongest, on the small model; each
of their trials differs from a part-1 trial in one key, so the report's controlled contrasts pair
them. The largest size of part 1 also sweeps weight interpolation with the base. ``quick`` is the CI-sized variant: fewer languages, a short pre-training, two data sizes.
"""

from __future__ import annotations

LARGEST = 5000


def demo_study(quick: bool = False) -> dict:
    """The demo study as a raw config mapping (``--set`` overrides apply on top)."""
    if quick:
        return {
            "name": "demo-quick",
            "model": {"tiny": "small", "pretrain_steps": 400},
            "corpus": {"synthetic": {"languages": 6, "segments": 6000}, "dev_size": 100, "test_size": 40},
            "finetune": {"lr": 3e-4, "epochs": 2, "eval_every": 20},
            "eval": {"max_sentences": 20},
            "grid": {"finetune.size": [50, 3000]},
        }
    return {
        "name": "demo",
        "model": {"tiny": "small"},
        "corpus": {"synthetic": {"languages": 10, "segments": 20000}, "dev_size": 200, "test_size": 40},
        "finetune": {"lr": 3e-4, "epochs": 1, "eval_every": 25},
        "eval": {"max_sentences": 40, "paired_resamples": 500},
        # Two worker processes of one thread each: on two cores they pre-train two bases at once,
        # which is faster than one process with two threads (small matrices scale poorly).
        "workers": 2,
        "grid": [
            {"model.tiny": ["small", "base"], "finetune.size": [50, 500]},
            # Interpolation with the base where forgetting is largest (it does not change the
            # trial's own scores, so these trials still pair with the ones below).
            {"model.tiny": ["small", "base"], "finetune.size": [LARGEST],
             "eval.interpolation": [[0.25, 0.5, 0.75]]},
            {"model.tiny": ["lm", "lm-instruct"], "finetune.size": [LARGEST]},
            {"finetune.method": ["lora"], "finetune.size": [LARGEST]},
            {"finetune.alignment.enabled": [True], "finetune.size": [LARGEST]},
            {"finetune.replay.fraction": [0.25], "finetune.size": [LARGEST]},
        ],
    }
