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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: engines read the thread count from torch, results must not
    depend on it, and on models this small synchronising threads costs more than it saves."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Kill(BaseException):
    """Stands for a kill signal in the middle of training (not an Exception, so nothing catches it)."""


def tiny_study(**grid) -> dict:
    """A study small enough to run end to end in seconds: 5 languages, a 40-step base."""
    return {
        "name": "tiny",
        "model": {"tiny": "small", "pretrain_steps": 40},
        "corpus": {"synthetic": {"languages": 5, "segments": 600}, "dev_size": 40, "test_size": 12},
        "finetune": {"directions": ["en-xa", "xa-en"], "size": 32, "batch_size": 16, "epochs": 1,
                     "eval_every": 2, "lr": 1e-3},
        # A 40-step base on 6 sentences per direction fails the base-quality gate everywhere; these
        # tests check the pipeline, so its directions are counted anyway (the gate has tests of its own).
        "eval": {"max_sentences": 6, "max_new_tokens": 12, "bootstrap_resamples": 200,
                 "base_gate": {"include_flagged": True}},
        "grid": grid or {"finetune.size": [16, 32]},
        # A fixed thread count: the default follows the machine's load, and tests that compare two
        # runs need the same floating-point sums in both.
        "resources": {"cpus": 1},
    }


def run_and_report(study, out, **kwargs) -> int:
    """``run_study`` and then the report, as the command line runs a study; the exit code."""
    from mtforget.report.build import build_report
    from mtforget.study.runner import run_study

    code = run_study(study, out, **kwargs)
    build_report(out)
    return code


def resume_and_check(study, out, finished, reference_rows, rows_of) -> None:
    """Run ``study`` again in ``out``: ``finished`` (a trial dir) must not train again, and the
    result table must equal ``reference_rows``."""
    from mtforget.study.runner import run_study

    stamp = (finished / "result.json").stat().st_mtime_ns
    trained = []

    def record(trial, step, loss):
        trained.append(trial.id)
        return loss

    assert run_study(study, out, progress=False, loss_hook=record) == 0
    assert finished.name not in trained  # the finished trial was not trained again
    assert (finished / "result.json").stat().st_mtime_ns == stamp
    assert rows_of(out) == reference_rows


def tiny_world(n_languages: int, segments: int, n_examples: int):
    """A small synthetic corpus, its languages, a 300-token tokenizer and ``n_examples`` random
    training examples in every direction (for tests that train a model directly)."""
    from mtforget.data.corpus import corpus_from_records
    from mtforget.data.splits import sample_all_directions
    from mtforget.data.synthetic import SyntheticWorld
    from mtforget.models.tokenizer import train_tokenizer

    corpus = corpus_from_records(SyntheticWorld(seed=0, n_languages=n_languages).corpus(segments, seed=0), "w")
    languages = list(corpus.languages)
    tokenizer = train_tokenizer((t for s in corpus.segments for t in s.translation.values()), languages, 300)
    return corpus, languages, tokenizer, sample_all_directions(corpus.segments, languages, n_examples, seed=0)
