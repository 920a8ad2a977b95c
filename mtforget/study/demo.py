"""The built-in demo study: tiny bases on the synthetic world, two sizes × three data sizes.

It fine-tunes on English ↔ the first half of the other languages (the default directions) and
measures what every direction loses. ``quick`` is the CI-sized variant: fewer languages, a short
pre-training, two data sizes.
"""

from __future__ import annotations


def demo_study(quick: bool = False) -> dict:
    """The demo study as a raw config mapping (``--set`` overrides apply on top)."""
    if quick:
        return {
            "name": "demo-quick",
            "model": {"tiny": "small", "pretrain_steps": 1200},
            "corpus": {"synthetic": {"languages": 6, "segments": 6000}, "dev_size": 100, "test_size": 40},
            "finetune": {"lr": 3e-4, "epochs": 2, "eval_every": 20},
            "eval": {"max_sentences": 20},
            "grid": {"finetune.size": [50, 3000]},
        }
    return {
        "name": "demo",
        "model": {"tiny": "small"},
        "corpus": {"synthetic": {"languages": 10, "segments": 20000}, "dev_size": 200, "test_size": 40},
        "finetune": {"lr": 3e-4, "epochs": 2, "eval_every": 25},
        "eval": {"max_sentences": 40, "paired_resamples": 500},
        "grid": {"model.tiny": ["small", "base"], "finetune.size": [100, 1000, 10000]},
    }
