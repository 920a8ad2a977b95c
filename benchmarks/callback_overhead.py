"""What ``ForgettingCallback`` costs a user's own ``transformers.Trainer`` run.

The same Trainer run (the shipped tiny M2M-100 base, full fine-tuning on three directions of the
synthetic world, ``--steps`` optimizer steps) three times, in this order:

- without the callback (the baseline);
- with ``ForgettingCallback(every=--every)`` and an empty cache: the base is evaluated on every
  direction of the study once (what a first run pays), then the sample is translated at step 0
  and every ``--every`` steps;
- with the callback again, the base evaluation now cached (what every later run pays);
- without the callback again: the baseline is the mean of both runs without it, so that a
  machine whose load drifts during the benchmark biases the ratio less.

Each run prints the seconds of ``trainer.train()`` and the ratio against the baseline, and for
the callback its start (the base's evaluation, the language identifier it needs, the sample and
step 0) and the mean seconds of a later check.

    python benchmarks/callback_overhead.py [--steps 40] [--every 10] [--languages 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml


def study(languages: int) -> dict:
    """The study the callback reads: the shipped small base on the world it was pre-trained on."""
    from mtforget.bases.prebuilt import PREBUILT_DIR

    codes = ["en", "xa", "xb", "xc", "xd", "xe", "xf", "xg", "xh", "xi"][:languages]
    return {"model": {"path": str(PREBUILT_DIR / "small")}, "corpus": {"languages": codes, "test_size": 40},
            "finetune": {"directions": ["en-xa", "xa-en", "en-xb"]},
            "eval": {"max_sentences": 20, "max_new_tokens": 32, "engine": "hf",
                     "during_training": {"directions": 2, "sentences": 5}}}


def one_run(study_file: Path, out: Path, steps: int, every: int | None) -> tuple[float, int]:
    """Seconds of ``trainer.train()`` (model loading and data excluded) and the checks made."""
    from transformers import Trainer, TrainingArguments

    from mtforget.bases.prebuilt import PREBUILT_DIR
    from mtforget.data.splits import sample_directions
    from mtforget.models.loading import load_model, make_control
    from mtforget.study.config import load_study
    from mtforget.study.trial import TrialMemo, study_data

    TimedCallback = _timed_callback()
    data = study_data(load_study(study_file), TrialMemo())
    model, tokenizer = load_model(PREBUILT_DIR / "small")
    control, _ = make_control(model, tokenizer, data.languages, {}, 64)
    examples = sample_directions(data.splits.train, data.directions, 16 * steps, seed=0)
    callbacks = [TimedCallback(study_file, every=every)] if every else []
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=16, learning_rate=1e-3,
                             save_strategy="no", logging_steps=10, report_to="none", use_cpu=True, seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=control.batch, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    checks = sum(1 for h in trainer.state.log_history if any(k.startswith("forgetting/") for k in h))
    timed = callbacks[0] if callbacks else None
    return seconds, checks, timed.start_s if timed else None, timed.mean_check_s() if timed else None


def _timed_callback():
    """ForgettingCallback that times its start and its later checks."""
    from mtforget.integrations.transformers import ForgettingCallback

    class Timed(ForgettingCallback):
        start_s: float | None = None

        def on_train_begin(self, *args, **kwargs):
            start = time.perf_counter()
            control = super().on_train_begin(*args, **kwargs)
            self.start_s = time.perf_counter() - start
            return control

        def on_step_end(self, args, state, control, **kwargs):
            start = time.perf_counter()
            control = super().on_step_end(args, state, control, **kwargs)
            if state.global_step % self.every == 0 or state.global_step == state.max_steps:
                self.check_s = [*getattr(self, "check_s", []), time.perf_counter() - start]
            return control

        def mean_check_s(self) -> float | None:
            checks = getattr(self, "check_s", [])
            return sum(checks) / len(checks) if checks else None

    return Timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--languages", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MTFORGET_CACHE"] = str(Path(tmp) / "cache")  # a first run's cost, then a cached one's
        study_file = Path(tmp) / "study.yaml"
        study_file.write_text(yaml.safe_dump(study(args.languages)))
        from mtforget.study.config import load_study
        from mtforget.study.trial import TrialMemo, study_data

        study_data(load_study(study_file), TrialMemo())  # the corpus is cached before any timing
        runs = [("without the callback", None), (f"callback every {args.every}, base evaluation uncached", args.every),
                (f"callback every {args.every}, base evaluation cached", args.every), ("without the callback", None)]
        results = [(name, *one_run(study_file, Path(tmp) / f"run{i}", args.steps, every))
                   for i, (name, every) in enumerate(runs)]
    plain = [r[1] for r in results if r[3] is None]
    baseline = sum(plain) / len(plain)
    print(f"\nTrainer run: {args.steps} steps, batch 16, tiny:small base, {args.languages} languages "
          f"({args.languages * (args.languages - 1)} directions), {args.threads} threads; baseline "
          f"{baseline:.1f} s (mean of the runs without the callback)\n")
    print("| run | checks | train() s | ratio | callback start s | s per later check |\n|---|---|---|---|---|---|")
    for name, seconds, checks, start, check in results:
        print(f"| {name} | {checks} | {seconds:.1f} | {seconds / baseline:.2f} | "
              f"{'–' if start is None else f'{start:.1f}'} | {'–' if check is None else f'{check:.2f}'} |")


if __name__ == "__main__":
    main()
