"""Shared fixtures: a private cache per test session and a tiny study config."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' bases and corpora out of the user's cache (and share them across tests)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MTFORGET_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    mp.undo()


def tiny_study(**grid) -> dict:
    """A study small enough to run end to end in seconds: 5 languages, a 40-step base."""
    return {
        "name": "tiny",
        "model": {"tiny": "small", "pretrain_steps": 40},
        "corpus": {"synthetic": {"languages": 5, "segments": 600}, "dev_size": 40, "test_size": 12},
        "finetune": {"directions": ["en-xa", "xa-en"], "size": 32, "batch_size": 16, "epochs": 1,
                     "eval_every": 2, "lr": 1e-3},
        "eval": {"max_sentences": 6, "max_new_tokens": 12, "bootstrap_resamples": 200},
        "grid": grid or {"finetune.size": [16, 32]},
    }
