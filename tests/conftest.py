"""Shared fixtures: a private cache per test session and a tiny study config."""

from __future__ import annotations

import pytest

from mtforget.train.callbacks import TrainCallback


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep the tests' bases and corpora out of the user's cache (and share them across tests)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MTFORGET_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps one state per process: a test whose Trainer ran under bf16 (TRL's default)
    must not hand its mixed precision to the next test's Accelerator."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: engines read the thread count from torch, results must not
    depend on it, and on models this small synchronising threads costs more than it saves."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Accumulation, batching and splitting over processes change the order in which a gradient is
# summed, never its value. In float32 that order shows at the level of the kernels' rounding, which
# differs between CPU kernel sets, and Adam magnifies it where gradients are near zero; so these
# equivalences are checked in float64, where that rounding sits about nine orders of magnitude lower.
# The tolerance is far above float64 rounding carried through a few Adam steps, and far below what a
# real error moves (an example counted twice, a piece weighted wrongly, a float32 ratio in the weights).
EQUIVALENCE_ATOL = 1e-9


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


class OnLoss(TrainCallback):
    """A training callback that hands every step's loss to ``fn(step, loss) -> loss`` (tests use it
    to watch steps or inject faults: a NaN, an exception, a kill)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def on_loss(self, step, loss):
        return self.fn(step, loss)


def watch_trials(monkeypatch, fn) -> None:
    """Every fine-tuning step of the trials this process runs calls ``fn(trial_id, step, loss)``,
    which returns the loss to use (trials in worker processes are not watched)."""
    import mtforget.study.trial as trial_module

    real = trial_module.train

    def train(*args, desc="train", callbacks=(), **kwargs):
        trial_id = desc.removeprefix("fine-tune ")
        return real(*args, desc=desc, callbacks=[*callbacks, OnLoss(lambda step, loss: fn(trial_id, step, loss))],
                    **kwargs)

    monkeypatch.setattr(trial_module, "train", train)


def run_and_report(study, out, **kwargs) -> int:
    """``run_study`` and then the report, as the command line runs a study; the exit code."""
    from mtforget.report.build import build_report
    from mtforget.study.runner import run_study

    code = run_study(study, out, **kwargs)
    build_report(out)
    return code


def resume_and_check(monkeypatch, study, out, finished, reference_rows, rows_of) -> None:
    """Run ``study`` again in ``out``: ``finished`` (a trial dir) must not train again, and the
    result table must equal ``reference_rows``."""
    from mtforget.study.runner import run_study

    stamp = (finished / "result.json").stat().st_mtime_ns
    trained = []

    def record(trial_id, step, loss):
        trained.append(trial_id)
        return loss

    with monkeypatch.context() as patch:
        watch_trials(patch, record)
        assert run_study(study, out, progress=False) == 0
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
