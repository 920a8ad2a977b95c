"""The training loop: one function, readable top to bottom.

Used twice with different settings: to pre-train the built-in tiny bases on every direction of a
corpus, and to fine-tune a base on a trial's directions with early stopping on their dev set.
Accelerate places the model, optimizer and batches (CPU, one GPU, or several processes under
``accelerate launch``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from mtforget.data.splits import Example
from mtforget.errors import TrialDiverged
from mtforget.models.language import LanguageTokens


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train. ``max_steps`` wins over ``epochs`` when both are set."""

    lr: float
    batch_size: int
    epochs: float = 1.0
    max_steps: int | None = None
    schedule: str = "linear"  # any name transformers.get_scheduler knows
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 0  # steps between dev evaluations; 0 = never
    patience: int = 0  # dev evaluations without improvement before stopping; 0 = never stop early
    seed: int = 0
    log_every: int = 50


@dataclass
class TrainOutcome:
    """What happened during training (kept with the trial)."""

    steps: int
    seconds: float
    train_loss: float
    best_dev_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)


def train(
    model: torch.nn.Module,
    control: LanguageTokens,
    examples: list[Example],
    settings: TrainSettings,
    dev: list[Example] | None = None,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> TrainOutcome:
    """Train ``model`` in place on ``examples``; restore the best dev checkpoint if ``dev`` is given.

    ``on_step(step, loss)`` is called after every optimizer step (tests use it to inject faults).
    Raises :class:`TrialDiverged` on a non-finite loss.
    """
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(settings.seed)
    accelerator = Accelerator()
    loader = DataLoader(
        examples,
        batch_size=settings.batch_size,
        shuffle=True,
        collate_fn=control.batch,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(
        settings.schedule,
        optimizer,
        num_warmup_steps=int(settings.warmup_ratio * total),
        num_training_steps=total,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    dev_batches = [control.batch(dev[i : i + 64]) for i in range(0, len(dev), 64)] if dev else []

    outcome = TrainOutcome(steps=0, seconds=0.0, train_loss=float("nan"))
    best_state: dict[str, torch.Tensor] | None = None
    evals_without_gain = 0
    running, running_n = torch.zeros((), device=accelerator.device), 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", leave=False, disable=not progress)
    batches = _cycle(loader)
    model.train()
    for step in range(1, total + 1):
        batch = next(batches)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            bar.close()
            raise TrialDiverged(f"non-finite training loss ({loss.item()}) at step {step}")
        accelerator.backward(loss)
        if settings.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.detach()
        running_n += 1
        if on_step is not None:
            on_step(step, loss)
        bar.update(1)
        outcome.steps = step

        if step % settings.log_every == 0 or step == total:
            # .item() syncs with the device: only at log points, not every step.
            outcome.train_loss = (running / running_n).item()
            outcome.history.append({"step": step, "train_loss": round(outcome.train_loss, 5)})
            bar.set_postfix(loss=f"{outcome.train_loss:.3f}")
            running, running_n = torch.zeros((), device=accelerator.device), 0

        if dev_batches and settings.eval_every and (step % settings.eval_every == 0 or step == total):
            dev_loss = _dev_loss(model, dev_batches, accelerator)
            outcome.history.append({"step": step, "dev_loss": round(dev_loss, 5)})
            if outcome.best_dev_loss is None or dev_loss < outcome.best_dev_loss:
                outcome.best_dev_loss, outcome.best_step = dev_loss, step
                best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
                evals_without_gain = 0
            else:
                evals_without_gain += 1
                if settings.patience and evals_without_gain >= settings.patience:
                    outcome.stopped_early = True
                    break
    bar.close()
    if running_n:
        outcome.train_loss = (running / running_n).item()
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    unwrapped.eval()
    outcome.seconds = time.perf_counter() - start
    accelerator.free_memory()
    return outcome


def _cycle(loader: DataLoader):
    """Endless batches; each pass over the data is a new shuffle from the loader's generator."""
    while True:
        yield from loader


@torch.no_grad()
def _dev_loss(model: torch.nn.Module, batches: list[dict], accelerator: Accelerator) -> float:
    """Token-weighted mean loss over the dev batches."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        n = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    model.train()
    return total / max(tokens, 1)
