"""The training loop: one function, readable top to bottom.

Used twice with different settings: to pre-train the built-in tiny bases on every direction of a
corpus, and to fine-tune a base on a trial's directions with early stopping on their dev set.
Accelerate places the model and optimizer: the CPU, one GPU, or several processes under
``accelerate launch`` (DDP, or FSDP2: see :mod:`mtforget.train.distributed`).

Each optimizer step draws ``batch_size × grad_accumulation`` examples (fewer at the end of an
epoch), sorts them by length and cuts them into ``grad_accumulation`` micro-batches, each of which
is shared out over the processes and cut into ``micro_batches`` pieces. Every piece is
back-propagated on its own, its mean token loss weighted by its share of the target tokens of the
whole step on all processes, so the summed gradient is the one the step's examples would give as a
single batch in one process: N processes take the same steps, on the same examples, to the same
weights. Only one piece's activations are held at once. A callback's term of the same step joins
the last piece's backward pass; a callback's own steps (see :mod:`mtforget.train.callbacks`) are
never split.

With ``checkpoint_dir``, the full training state (weights, optimizer, scheduler, RNG, progress) is
saved every ``checkpoint_every`` steps, and a later call with the same arguments resumes from it:
the batch order is a pure function of (seed, step), so a resumed run sees the same batches.

Callbacks (:mod:`mtforget.train.callbacks`) add to it without the loop naming them: a term of the
loss (a mitigation's penalty or auxiliary objective), steps of their own (alignment's alternating
schedule), checks after each step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import Sampler
from tqdm.auto import tqdm
from transformers import get_scheduler

from mtforget.data.splits import Example
from mtforget.errors import TrialDiverged, UsageError
from mtforget.models.control import BatchEncoder
from mtforget.train.callbacks import StepSchedule, TrainCallback, TrainState, step_schedule
from mtforget.train.checkpoint import load_best, load_checkpoint, save_best, save_checkpoint
from mtforget.train.distributed import ShardedTraining, agree, check_batch_size, fsdp_from_launch, share_of
from mtforget.train.precision import PrecisionPlan, WeightChanges, plan_precision


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train. ``max_steps`` wins over ``epochs`` when both are set.

    Both count translation optimizer steps (of ``batch_size × grad_accumulation`` examples each):
    an alternating auxiliary objective adds its own steps on top.
    """

    lr: float
    batch_size: int  # examples per micro-batch, summed over processes
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
    checkpoint_every: int = 0  # steps between resumable checkpoints (with checkpoint_dir); 0 = never
    group_by_length: bool = True  # batches of similar-length examples: less padding, same examples
    # Each step's batch is sorted by length and cut into this many pieces, whose token-weighted
    # losses sum to the whole batch's loss: the same gradient as one padded batch, with less
    # padding. It suits random (not length-grouped) batches on CPUs, where padding costs as much
    # compute as tokens.
    micro_batches: int = 1
    # Micro-batches of ``batch_size`` back-propagated one after the other before each optimizer
    # step: the step trains on ``batch_size × grad_accumulation`` examples while holding the
    # activations of ``batch_size``. Each micro-batch is then cut into ``micro_batches`` pieces.
    grad_accumulation: int = 1
    # Matrix products in bfloat16 under autocast (weights, gradients and optimizer stay float32):
    # for devices that multiply bf16 natively (see native_bf16), where it is the fastest setting.
    # A model loaded in a half type is under autocast in that type anyway (precision "fp32").
    bf16: bool = False
    # How the trainable weights and the optimizer are kept (mtforget.train.precision): "auto"
    # (= "fp32": float32 master weights), "bf16" (pure bfloat16) or "bf16-kahan".
    precision: str = "auto"
    # Batch widths rounded up to a multiple of this. A CPU's bf16 matrix library builds and keeps a
    # kernel per matrix shape, so fewer distinct widths hold less memory for a little more padding
    # (padded positions are masked and unlabelled: the same loss).
    pad_to_multiple_of: int = 1


@dataclass
class TrainOutcome:
    """What happened during training (kept with the trial)."""

    steps: int
    seconds: float
    train_loss: float
    best_dev_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False  # dev loss stopped improving (patience)
    stop_reason: str | None = None  # why training ended before its last step (patience, a callback)
    resumed_from: int | None = None
    tokens: int = 0  # source + target tokens of translation batches (padding excluded), all processes
    precision: str = "fp32"  # the arithmetic of training (see training_precision)
    precision_mode: str = "fp32"  # the PrecisionPlan that ran: fp32 (master weights), bf16 or bf16-kahan
    processes: int = 1  # processes that trained together
    sharding: str = "none"  # how they shared the model: none (one process), ddp or fsdp2
    # Share of trainable entries that training changed (see WeightChanges), as trained and once
    # cast back to the dtype they had before training (what is evaluated); None when sharded.
    weights_changed: float | None = None
    weights_changed_evaluated: float | None = None
    # LoRA: of the base entries the adapters change, the share still changed once merged into the
    # base's dtype (what is evaluated); set by the trial (mtforget.models.lora.merge_survival).
    merge_survival: float | None = None
    # The callbacks' logged losses (e.g. ``align_loss``) at the last log point, or since it.
    extra_losses: dict[str, float] = field(default_factory=dict)
    # Log points {"step", "train_loss" (translation), and what callbacks log} and dev checks.
    history: list[dict] = field(default_factory=list)


_NOT_TEXT = ("id", "src_lang", "tgt_lang", "lang")  # example fields that are labels, not text


def _length(example) -> int:
    """Characters of an example's texts (not its ids or language codes): the sort key of
    length-grouped batches."""
    return sum(len(v) for k, v in vars(example).items() if isinstance(v, str) and k not in _NOT_TEXT)


class StepBatches(Sampler[list[int]]):
    """Batches of example indices for steps ``start+1 .. total``.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, so the batch of any step is known without
    replaying the steps before it; that is what makes a resumed run identical to an uninterrupted one.

    With ``lengths``, batches are length-grouped: each window of ``GROUP`` batches of the epoch's
    permutation is sorted by length before it is cut into batches, and the batches are then
    shuffled, so a batch holds sentences of similar length and pads little while the order of
    lengths stays random.
    """

    GROUP = 16  # batches per sorting window: wide enough to group, narrow enough to stay random

    def __init__(self, n: int, batch_size: int, seed: int, start: int, total: int,
                 lengths: list[int] | None = None) -> None:
        self.n, self.batch_size, self.seed, self.start, self.total = n, batch_size, seed, start, total
        self.lengths = lengths
        self.per_epoch = math.ceil(n / batch_size)

    def __len__(self) -> int:
        return self.total - self.start

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every batch of ``epoch``, in training order (a pure function of seed and epoch)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.lengths is None:
            return [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        window = self.batch_size * self.GROUP
        batches = []
        for start in range(0, self.n, window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffled]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batches = -1, []
        for step in range(self.start, self.total):
            e, i = divmod(step, self.per_epoch)
            if e != epoch:
                epoch, batches = e, self.epoch_batches(e)
            yield batches[i]


def train(
    model: torch.nn.Module,
    control: BatchEncoder,
    examples: list[Example],
    settings: TrainSettings,
    dev: list[Example] | None = None,
    desc: str = "train",
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    log_dir: Path | None = None,
    callbacks: list[TrainCallback] | tuple[TrainCallback, ...] = (),
) -> TrainOutcome:
    """Train ``model`` in place on ``examples``; restore the best dev checkpoint if ``dev`` is given.

    With ``log_dir``, training and dev losses are also logged for TensorBoard there.
    ``callbacks`` (:mod:`mtforget.train.callbacks`) add losses, steps of their own and checks;
    early stopping watches the dev translation loss only.
    Raises :class:`TrialDiverged` on a non-finite loss. Under a launch of several processes, every
    process raises the same error when any of them fails (:func:`mtforget.train.distributed.agree`),
    and ``model`` holds the trained weights on every process when it returns.
    """
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(settings.seed)
    plan = plan_precision(model, settings.precision, settings.bf16)
    # Before a resumed run loads its checkpoint: the count is against the weights training started from.
    changes = WeightChanges(model)
    for callback in callbacks:
        callback.on_train_start(model)
    run = _start(model, control, examples, settings, desc, log_dir, checkpoint_dir, list(callbacks), plan)
    run.changes = changes
    unwrapped = run.accelerator.unwrap_model(run.model)
    for callback in callbacks:
        callback.on_steps_start(unwrapped, run.state)
    dev_batches = [control.batch(dev[i : i + 64]) for i in range(0, len(dev), 64)] if dev else []
    bar = tqdm(total=run.total, initial=run.outcome.steps, desc=desc, unit="step", leave=False,
               disable=not progress or not run.accelerator.is_main_process)
    run.model.train()
    try:
        for step in range(run.outcome.steps + 1, run.total + 1):
            _train_step(run, step)
            bar.update(1)
            run.outcome.steps = step
            for callback in callbacks:
                callback.on_step_end(step, unwrapped, run.state)
            if step % settings.log_every == 0 or step == run.total:
                bar.set_postfix({k: f"{v:.3f}" for k, v in _log_point(run, step).items()})
            if run.state.stop_reason:
                run.outcome.stop_reason = run.state.stop_reason
                break
            dev_check = dev_batches and settings.eval_every and (step % settings.eval_every == 0 or step == run.total)
            if dev_check and _dev_check(run, step, dev_batches, checkpoint_dir):
                run.outcome.stopped_early = True
                run.outcome.stop_reason = f"dev loss did not improve in {settings.patience} checks"
                break
            if (checkpoint_dir and settings.checkpoint_every and step % settings.checkpoint_every == 0
                    and step < run.total):
                run.progress["elapsed"] = time.perf_counter() - run.start
                run.outcome.tokens += int(run.accelerator.reduce(run.tokens, "sum"))
                run.tokens.zero_()
                save_checkpoint(run.accelerator, checkpoint_dir, run.outcome.steps, asdict(run.outcome),
                                run.progress)
    except BaseException as exc:
        if run.sharded is not None and getattr(exc, "agreed", False):
            run.sharded.gather()  # every process is here: the model keeps the weights it got to, as in one process
        raise
    finally:
        bar.close()
    return _finish(run, checkpoint_dir)


@dataclass
class _Run:
    """The state of one training run between its steps."""

    accelerator: Accelerator
    model: torch.nn.Module  # what trains: DDP's wrapper, FSDP's sharded twin, or the model itself
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: Iterator[list[int]]  # each translation step's example indices (all processes')
    examples: list[Example]
    control: BatchEncoder
    schedule: StepSchedule
    callbacks: list[TrainCallback]
    settings: TrainSettings
    outcome: TrainOutcome
    progress: dict  # evals without gain and elapsed seconds: saved with a checkpoint
    total: int
    first_label: int  # a causal LM's loss averages over the labels after the first position
    log_dir: Path | None
    plan: PrecisionPlan
    scaler: torch.amp.GradScaler | None = None  # float16 autocast only
    sharded: ShardedTraining | None = None  # under FSDP: the twin that trains and the way back to whole weights
    changes: WeightChanges | None = None
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)  # trainable weights' dtypes before training
    start: float = 0.0
    best: dict[str, torch.Tensor] | None = None
    running: torch.Tensor | None = None
    running_n: int = 0
    tokens: torch.Tensor | None = None
    state: TrainState | None = None

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def _start(model: torch.nn.Module, control: BatchEncoder, examples: list[Example], settings: TrainSettings,
           desc: str, log_dir: Path | None, checkpoint_dir: Path | None, callbacks: list[TrainCallback],
           plan: PrecisionPlan) -> _Run:
    """Accelerator, optimizer, schedule and batches of a run, resumed from ``checkpoint_dir`` when
    it holds a checkpoint."""
    # A launch's mixed precision comes from its environment (accelerate launch --mixed_precision),
    # never from an Accelerator that other code in this process made before (a Trainer with
    # bf16=True): inheriting it would train this run under autocast without a word. A clash is
    # accelerate's ValueError, and the trial fails with it.
    launched_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    accelerator = Accelerator(mixed_precision=launched_precision,
                              # The loop shares the batches out itself; split_batches only keeps the
                              # prepared scheduler at one step per optimizer step.
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              # Buffers are never trained, so they agree on every process already; a
                              # broadcast in every forward would be a collective between the loop's
                              # agreement points (see mtforget.train.distributed).
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
                              log_with="tensorboard" if log_dir else None,
                              project_dir=str(log_dir) if log_dir else None)
    if log_dir:
        accelerator.init_trackers(desc.split()[0])
    fsdp = fsdp_from_launch() if accelerator.num_processes > 1 else None
    _check_distribution(accelerator, settings, callbacks, fsdp is not None)
    schedule = step_schedule(callbacks)
    step_size = settings.batch_size * settings.grad_accumulation  # examples per optimizer step
    steps_per_epoch = math.ceil(len(examples) / step_size)
    translation_total = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    total = schedule.total_steps(translation_total)
    dtypes = plan.apply(model, uniform=fsdp is not None)
    sharded = None
    if fsdp is not None:
        # Sharded by the loop itself (Accelerate's FSDP refuses CPUs, so the tested path would
        # not be the one that runs), with the launch's mixed precision as FSDP's compute dtype.
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(launched_precision)
        sharded = ShardedTraining(model, fsdp, accelerator.device, compute)
        trained = sharded.twin
        optimizer = plan.optimizer(trained.parameters(), settings.lr, settings.weight_decay)
        sharded.optimizer = optimizer
        scheduler = get_scheduler(settings.schedule, optimizer,
                                  num_warmup_steps=int(settings.warmup_ratio * total), num_training_steps=total)
        accelerator.register_for_checkpointing(sharded, scheduler)
        launched = launched_precision if compute is not None else None
    else:
        optimizer = plan.optimizer(model.parameters(), settings.lr, settings.weight_decay)
        scheduler = get_scheduler(settings.schedule, optimizer,
                                  num_warmup_steps=int(settings.warmup_ratio * total), num_training_steps=total)
        trained, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
        # ``accelerate launch --mixed_precision`` puts the model's forward under autocast too.
        launched = accelerator.mixed_precision if accelerator.mixed_precision != "no" else None
    autocast = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(plan.autocast, launched)
    outcome = TrainOutcome(steps=0, seconds=0.0, train_loss=float("nan"),
                           precision=training_precision(model if sharded is None else trained, autocast),
                           precision_mode=plan.mode, processes=accelerator.num_processes,
                           sharding="fsdp2" if sharded else "ddp" if accelerator.num_processes > 1 else "none")
    progress = {"evals_without_gain": 0, "elapsed": 0.0}
    own_state = [(c, c.state_dict()) for c in callbacks if c.checkpointed] if checkpoint_dir else []
    for callback, _ in own_state:  # saved and restored with the training state
        accelerator.register_for_checkpointing(callback)
    saved = load_checkpoint(accelerator, checkpoint_dir, trained, optimizer, scheduler) if checkpoint_dir else None
    if not saved:  # a checkpoint that failed to load may have restored some of it: start afresh
        for callback, state in own_state:
            callback.load_state_dict(state)
    if saved:
        outcome = TrainOutcome(**{**saved["outcome"], "precision": outcome.precision,
                                  "precision_mode": outcome.precision_mode, "processes": outcome.processes,
                                  "sharding": outcome.sharding})
        outcome.resumed_from = outcome.steps
        progress = saved["progress"]
    batches = iter(StepBatches(len(examples), step_size, settings.seed, schedule.translation_steps_done(outcome.steps),
                               translation_total,
                               [_length(ex) for ex in examples] if settings.group_by_length else None))
    first_label = 0 if getattr(accelerator.unwrap_model(trained).config, "is_encoder_decoder", False) else 1
    zero = torch.zeros((), device=accelerator.device)
    run = _Run(accelerator, trained, optimizer, scheduler, batches, examples, control, schedule, callbacks, settings,
               outcome, progress, total, first_label, log_dir, plan, plan.scaler(accelerator.device), sharded,
               dtypes=dtypes, start=time.perf_counter() - progress["elapsed"],
               running=zero.clone(), tokens=torch.zeros((), dtype=torch.long, device=accelerator.device))
    run.state = TrainState(outcome, total, lambda: outcome.tokens + int(accelerator.reduce(run.tokens, "sum")),
                           gather=sharded.whole if sharded is not None else None)
    return run


def _check_distribution(accelerator: Accelerator, settings: TrainSettings, callbacks: list[TrainCallback],
                        fsdp: bool) -> None:
    """Refuse settings the distributed engine in use cannot honour."""
    whole = [type(c).__name__ for c in callbacks if c.needs_whole_model]
    engine = "FSDP" if fsdp else accelerator.distributed_type
    if whole and (fsdp or accelerator.distributed_type not in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                               DistributedType.MULTI_CPU)):
        # Such a term runs the unwrapped model; sharded parameters (FSDP, DeepSpeed) are not there.
        raise UsageError(f"{', '.join(whole)} needs one process or DDP, not {engine}: launch with DDP "
                         "(examples/paper/accelerate_multi_gpu.yaml)")
    if settings.grad_accumulation < 1:
        raise ValueError(f"grad_accumulation must be at least 1, not {settings.grad_accumulation}")
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        # Those engines step, scale and shard at their own boundaries, which this loop's pieces,
        # weighted by the whole step's token count, would not respect.
        raise UsageError(f"mtforget trains with one process, DDP or FSDP2, not {accelerator.distributed_type}")
    check_batch_size(settings.batch_size, accelerator.num_processes)


def _train_step(run: _Run, step: int) -> None:
    """One optimizer step: this process's pieces of the step's translation examples (each
    back-propagated on its own, the last one once every process agrees the step is sound), the
    callbacks' terms, the update."""
    accelerator, settings = run.accelerator, run.settings
    kind = run.schedule.kind(step)
    pieces: list[dict[str, torch.Tensor] | None] = []
    error: BaseException | None = None
    if kind in ("translation", "both"):
        indices = next(run.batches)
        try:
            pieces = _step_micro_batches(run.control, settings.grad_accumulation, settings.micro_batches,
                                         settings.pad_to_multiple_of, [run.examples[i] for i in indices],
                                         accelerator.process_index, run.world)
            pieces = [None if p is None else {k: v.to(accelerator.device) for k, v in p.items()}
                      for micro in pieces for p in micro]
        except Exception as exc:  # noqa: BLE001 - shared with the other processes below
            error, pieces = exc, []
    counts = [None if p is None else (p["labels"][:, run.first_label:] != -100).sum() for p in pieces]
    local = sum((n for n in counts if n is not None), torch.zeros((), dtype=torch.long, device=accelerator.device))
    # The step's target tokens on every process: each piece's weight, and a first agreement.
    step_targets = agree(local.reshape(1), error, run.world).clamp(min=1)[0]
    translation = torch.zeros((), device=accelerator.device)  # this process's part of the step's mean loss
    earlier = torch.zeros((), device=accelerator.device)  # the pieces back-propagated already (detached)
    loss = torch.zeros((), device=accelerator.device)  # what the step's last backward pass takes
    try:
        dummy = None
        for i, (piece, n) in enumerate(zip(pieces, counts)):
            if piece is None:  # no examples here: a forward all the same, weighted 0
                dummy = dummy or _dummy_piece(run, indices)
                piece, n = dummy, torch.zeros((), device=accelerator.device)
            # Under DDP the gradients of all but the last piece stay local; FSDP reduces every
            # backward pass, which adds up to the same.
            last = i == len(pieces) - 1
            with nullcontext() if last or run.sharded is not None else accelerator.no_sync(run.model):
                part = _piece_loss(run, piece, n, None if run.world == 1 and len(pieces) == 1 else step_targets)
                if not last:
                    accelerator.backward(_scaled(run, part))
                    earlier += part.detach()
            if last:
                loss = part
            translation += part.detach() / run.world
        run.tokens += sum((p["attention_mask"].sum() + (p["labels"] != -100).sum() for p in pieces if p is not None),
                          torch.zeros((), dtype=torch.long, device=accelerator.device))
        for callback in run.callbacks:
            with accelerator.autocast(), run.plan.autocasting(accelerator.device):
                # The unwrapped model: a term may stop the forward midway, which DDP's forward cannot do.
                extra = callback.extra_loss(accelerator.unwrap_model(run.model), step)
            if extra is not None:
                loss = loss + extra
        for callback in run.callbacks:
            loss = callback.on_loss(step, loss)
        if not torch.isfinite(earlier + loss.detach()):
            raise TrialDiverged(f"non-finite training loss ({(earlier + loss.detach()).item()}) at step {step}")
    except Exception as exc:  # noqa: BLE001 - shared with the other processes below
        error = exc
    # Every process has its part of the loss and nothing left to back-propagate but the last piece,
    # whose backward pass (under DDP) is a collective: all of them go on, or all of them fail.
    step_loss = agree(translation.reshape(1), error, run.world)[0]
    if kind != "own":
        run.running += step_loss
        run.running_n += 1
    accelerator.backward(_scaled(run, loss))
    if kind == "own" and run.world > 1:
        _average_gradients(run.model)  # DDP only averages what went through its own forward
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients
    if settings.grad_clip:
        if run.sharded is not None:  # parameters the loop sharded itself: DTensors, whose norm is global
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), settings.grad_clip)
        else:
            accelerator.clip_grad_norm_(run.model.parameters(), settings.grad_clip)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)  # skipped when a scaled gradient overflowed
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _dummy_piece(run: _Run, indices: list[int]) -> dict[str, torch.Tensor]:
    """A one-example piece for a process with no examples in a slot of the step: its forward and
    backward keep the processes' collectives in step, its weight of 0 keeps it out of the gradient."""
    batch = run.control.batch([run.examples[indices[0]]], run.settings.pad_to_multiple_of)
    return {k: v.to(run.accelerator.device) for k, v in batch.items()}


def _piece_loss(run: _Run, piece: dict[str, torch.Tensor], targets: torch.Tensor,
                step_targets: torch.Tensor | None) -> torch.Tensor:
    """A piece's mean token loss weighted by its share ``targets / step_targets`` of the step's
    target tokens on all processes, times the number of processes (which DDP and FSDP average);
    the mean itself when ``step_targets`` is None (the whole step)."""
    with run.plan.autocasting(run.accelerator.device):
        mean = run.model(**piece).loss
        if step_targets is None:
            return mean  # the step's only piece in one process: its mean is the step's loss already
        # Multiplied and divided in the loss's own dtype: a float32 ratio would round the weights of a
        # float64 run, and the pieces would no longer add up to the whole batch's mean.
        return mean * (targets.to(mean.dtype) * run.world) / step_targets.to(mean.dtype)


def _log_point(run: _Run, step: int) -> dict[str, float]:
    """Record the mean losses since the last log point in the history; returns them."""
    # .item() syncs with the device: only at log points, not every step.
    logged: dict[str, float] = {}
    if run.running_n:
        run.outcome.train_loss = logged["train_loss"] = (run.running / run.running_n).item()
    for callback in run.callbacks:
        values = callback.logged()
        run.outcome.extra_losses.update(values)
        logged.update(values)
    run.outcome.history.append({"step": step, **{k: round(v, 5) for k, v in logged.items()}})
    if run.log_dir:
        run.accelerator.log(logged, step=step)
    run.running, run.running_n = torch.zeros((), device=run.accelerator.device), 0
    return logged


def _dev_check(run: _Run, step: int, dev_batches: list[dict], checkpoint_dir: Path | None) -> bool:
    """Evaluate the dev loss, keep the best weights; returns True when patience ran out."""
    outcome, accelerator = run.outcome, run.accelerator
    error, dev_loss = None, float("nan")
    try:
        dev_loss = mean_token_loss(run.model, dev_batches, accelerator.device)
    except Exception as exc:  # noqa: BLE001 - shared with the other processes below
        error = exc
    # Every process computed it on the same weights; the main one's value decides for all of them,
    # so early stopping cannot part them even where a device's sums are not deterministic.
    mine = torch.tensor([dev_loss if accelerator.is_main_process else 0.0], dtype=torch.float64,
                        device=accelerator.device)
    dev_loss = float(agree(mine, error, run.world)[0])
    outcome.history.append({"step": step, "dev_loss": round(dev_loss, 5)})
    if run.log_dir:
        accelerator.log({"dev_loss": dev_loss}, step=step)
    for callback in run.callbacks:
        callback.on_dev_check(step, accelerator.unwrap_model(run.model), dev_loss, run.state)
    if outcome.best_dev_loss is None or dev_loss < outcome.best_dev_loss:
        outcome.best_dev_loss, outcome.best_step = dev_loss, step
        run.progress["evals_without_gain"] = 0
        # The trainable weights only (the rest does not change): for LoRA, the adapters.
        trainable = {n for n, p in accelerator.unwrap_model(run.model).named_parameters() if p.requires_grad}
        weights = run.sharded.full_state_dict() if run.sharded is not None else accelerator.get_state_dict(run.model)
        run.best = {k: v.detach().cpu().clone() for k, v in weights.items() if k in trainable}
    else:
        run.progress["evals_without_gain"] += 1
        if run.settings.patience and run.progress["evals_without_gain"] >= run.settings.patience:
            return True
    # On disk only for a resumable run, which may need them after a restart.
    if checkpoint_dir and run.settings.checkpoint_every and outcome.best_step == step and accelerator.is_main_process:
        save_best(checkpoint_dir, step, run.best)
    return False


def _finish(run: _Run, checkpoint_dir: Path | None) -> TrainOutcome:
    """Final losses and token count, the best dev weights restored, the accelerator released."""
    outcome, accelerator = run.outcome, run.accelerator
    if run.running_n:
        outcome.train_loss = (run.running / run.running_n).item()
    for callback in run.callbacks:
        outcome.extra_losses.update(callback.logged())
    outcome.tokens += int(accelerator.reduce(run.tokens, "sum"))
    run.tokens.zero_()
    best = None
    if outcome.best_step is not None:
        best = run.best if run.best is not None else load_best(checkpoint_dir, outcome.best_step)
    if run.sharded is not None:
        # The model the caller holds gets the whole weights on every process, and the twin goes.
        run.sharded.load_into_model({**run.sharded.full_state_dict(), **(best or {})})
        unwrapped = run.sharded.model
        run.model = run.sharded.twin = None
    else:
        # Without the autocast patch that a launch's mixed precision put on forward: the trained
        # model is evaluated in the same arithmetic as its base.
        unwrapped = accelerator.unwrap_model(run.model, keep_fp32_wrapper=False)
        if best is not None:  # from disk when resumed after the best step
            unexpected = unwrapped.load_state_dict(best, strict=False).unexpected_keys
            if unexpected:
                raise RuntimeError(f"the best dev weights name weights the model does not have: {unexpected[:3]}")
    unwrapped.eval()
    for callback in run.callbacks:
        callback.on_train_end(unwrapped, run.state)
    outcome.weights_changed = run.changes.fraction(unwrapped) if run.changes else None
    run.plan.restore(unwrapped, run.dtypes)
    outcome.weights_changed_evaluated = run.changes.fraction(unwrapped) if run.changes else None
    outcome.seconds = time.perf_counter() - run.start
    accelerator.wait_for_everyone()
    if run.log_dir:
        accelerator.end_training()
    accelerator.free_memory()
    return outcome


@torch.no_grad()
def _average_gradients(model: torch.nn.Module) -> None:
    """Average every gradient over the processes, as DDP does for a pass through its forward."""
    world = torch.distributed.get_world_size()
    for param in model.parameters():
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad)
            param.grad /= world


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware, so that bf16 autocast speeds
    training up (elsewhere it is emulated and slower): a CUDA GPU with bf16, or a CPU with the
    AVX-512 BF16 or AMX instructions (read from /proc/cpuinfo, so Linux only)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_precision(model: torch.nn.Module, autocast: str | None = None) -> str:
    """The arithmetic a training run uses, for its record: ``fp32``; ``bf16`` (weights loaded in
    bfloat16, as on a GPU); ``bf16 autocast`` (float32 weights, matrix products in the ``autocast``
    type); with frozen weights of another type (adapters), e.g. ``fp32 (frozen weights bf16)``."""
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad} - trainable
    described = _dtype_names(trainable) or "none"
    if autocast and trainable == {torch.float32}:
        described = f"{autocast} autocast"
    if frozen:
        described += f" (frozen weights {_dtype_names(frozen)})"
    return described


def _dtype_names(dtypes: set[torch.dtype]) -> str:
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return "+".join(sorted(names.get(d, str(d).removeprefix("torch.")) for d in dtypes))


def _scaled(run: _Run, loss: torch.Tensor) -> torch.Tensor:
    """``loss`` multiplied by the float16 loss scale (unchanged without a scaler)."""
    return run.scaler.scale(loss) if run.scaler is not None else loss


def _step_micro_batches(control: BatchEncoder, accumulation: int, pieces: int, multiple: int,
                        examples: list[Example], rank: int = 0,
                        world: int = 1) -> list[list[dict[str, torch.Tensor] | None]]:
    """This process's share of one optimizer step's examples as ``accumulation`` micro-batches
    (one if 1), each a list of ``pieces`` padded batches (see :func:`_sorted_pieces`). The examples
    are sorted by length before they are cut, so that each micro-batch pads little, and each
    micro-batch is shared out over the ``world`` processes (:func:`share_of`). With several
    processes every one of them gets exactly ``accumulation × pieces`` slots, None where it has no
    examples for one (a short last batch), so that all of them run the same forward passes."""
    ordered = sorted(examples, key=_length) if accumulation > 1 or world > 1 else examples
    size = math.ceil(len(ordered) / accumulation)
    micro = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    if world <= 1:
        return [_sorted_pieces(control, pieces, multiple, m) for m in micro]
    micro += [[]] * (accumulation - len(micro))
    shares = [share_of(m, rank, world) for m in micro]
    out = []
    for share in shares:
        batches: list[dict[str, torch.Tensor] | None] = _sorted_pieces(control, pieces, multiple, share) if share else []
        out.append(batches + [None] * (pieces - len(batches)))
    return out


def _sorted_pieces(control: BatchEncoder, pieces: int, multiple: int,
                   examples: list[Example]) -> list[dict[str, torch.Tensor]]:
    """One step's examples as ``pieces`` padded batches of similar length (one batch if 1), their
    widths rounded up to a multiple of ``multiple``."""
    if pieces <= 1:
        return [control.batch(examples, multiple)]
    ordered = sorted(examples, key=_length)
    size = math.ceil(len(ordered) / pieces)
    return [control.batch(ordered[i : i + size], multiple) for i in range(0, len(ordered), size)]


@torch.no_grad()
def mean_token_loss(model: torch.nn.Module, batches: list[dict], device: torch.device) -> float:
    """Token-weighted mean teacher-forced loss over ``batches`` (in eval mode; the model is left in
    the mode it was in)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        n = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * n
        tokens += n
    model.train(was_training)
    return total / max(tokens, 1)
