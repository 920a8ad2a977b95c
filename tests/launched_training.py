"""One training run, for tests/test_launch.py to start in one process or under ``accelerate launch``.

    python -m tests.launched_training OUT [--dtype float64|float32] [--fail-on-rank R --fail-at-step S]
                                          [--checkpoint DIR [--stop-at-step S]]

Trains a tiny encoder-decoder for 2 epochs on 75 examples, 16 a step (a size the batch does not
divide: every epoch ends with a short batch), with dev checks and the best dev weights restored,
then writes what the test compares: the outcome and, from every process, the weights it holds
afterwards (``weights-<rank>.safetensors``). With ``--fail-on-rank``, that process alone raises
at step S; each process writes the reason it failed with and the seconds it took to fail, then
trains a second run, as the next trial of a study would. With ``--checkpoint``, training state is
saved every 3 steps there, and ``--stop-at-step`` ends every process at step S as a kill would
(exit code 3); the same command without it resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from mtforget.bases.specs import TinySpec
from mtforget.bases.tiny_seq2seq import build_model
from mtforget.models.language import LanguageTokens
from mtforget.train.distributed import describe
from mtforget.train.loop import TrainSettings, train
from tests.conftest import OnLoss, tiny_world

SPEC = TinySpec(d_model=32, layers=2, heads=2, ffn_dim=64, vocab_size=300, steps=1, batch_size=8, lr=1e-3)


def _run(out: Path, dtype: torch.dtype, fail_on_rank: int | None, fail_at_step: int, checkpoint: Path | None,
         stop_at_step: int | None) -> None:
    rank = int(os.environ.get("RANK", "0"))
    _, _, tokenizer, examples = tiny_world(n_languages=3, segments=200, n_examples=95)
    train_examples, dev = examples[:75], examples[75:95]
    torch.manual_seed(0)
    model = build_model(SPEC, tokenizer).to(dtype)
    settings = TrainSettings(lr=3e-3, batch_size=16, epochs=2, eval_every=3, seed=0, log_every=2,
                             checkpoint_every=3 if checkpoint else 0)

    def fail(step: int, loss: torch.Tensor) -> torch.Tensor:
        if rank == fail_on_rank and step == fail_at_step:
            raise RuntimeError(f"injected on rank {rank}")
        if step == stop_at_step:
            raise SystemExit(3)  # not an Exception: nothing in the loop catches it, as with a kill
        return loss

    callbacks = [OnLoss(fail)] if fail_on_rank is not None or stop_at_step is not None else []
    started = time.perf_counter()
    try:
        outcome = train(model, LanguageTokens(tokenizer), train_examples, settings, dev=dev, progress=False,
                        callbacks=callbacks, checkpoint_dir=checkpoint)
    except Exception as exc:  # noqa: BLE001 - the test reads the reason each process got
        (out / f"failed-{rank}.json").write_text(json.dumps({"reason": describe(exc),
                                                              "seconds": time.perf_counter() - started}))
        # The next trial: every process trains it, together.
        outcome = train(model, LanguageTokens(tokenizer), train_examples, settings, dev=dev, progress=False)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out / f"weights-{rank}.safetensors")
    if rank == 0:
        (out / "outcome.json").write_text(json.dumps(asdict(outcome)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--fail-on-rank", type=int)
    parser.add_argument("--fail-at-step", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--stop-at-step", type=int)
    args = parser.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState(cpu=True)  # the gloo group, as the study runner forms it
    args.out.mkdir(parents=True, exist_ok=True)
    _run(args.out, getattr(torch, args.dtype), args.fail_on_rank, args.fail_at_step, args.checkpoint,
         args.stop_at_step)


if __name__ == "__main__":
    main()
