"""How N processes train as one: each step's examples shared out, one verdict on failure, FSDP2.

A trial launched on N processes (``accelerate launch``: DDP, or FSDP2) must compute what one
process computes. Three things make that so, and the training loop (:mod:`mtforget.train.loop`)
uses all three:

- **Every example once.** :func:`share_of` gives each process its slice of a step's examples,
  as even as the processes allow (a short last batch too), with no example repeated to fill a
  slice; a process whose slice is empty still takes part in every collective.
- **The one-process gradient.** Each piece's mean token loss is weighted by its share of the
  step's target tokens summed over all processes (:func:`agree` sums the counts), and multiplied
  by N, so that DDP's or FSDP's averaging over processes gives the gradient of the whole batch.
- **One verdict.** :func:`agree` is the one collective at which the processes also share a
  failure: a process that raised (an exception, out of memory) or saw a non-finite loss takes
  part with its reason, and every process then raises the same error, so the trial fails
  everywhere with one reason and the next trial starts on all of them together.

Under a launch with FSDP (``distributed_type: FSDP`` with ``fsdp_version: 2`` in an Accelerate
config, or ``accelerate launch --use_fsdp --fsdp_version 2``), :class:`ShardedTraining` trains a
sharded twin of the model (``torch.distributed.fsdp.fully_shard``: one unit per transformer
block, the root holding the rest), and gathers the full weights back into the model itself
whenever one process needs them whole: the best dev weights, a forgetting check, the end of
training. The model the caller holds is then a plain module with the trained weights on every
process, which evaluation, interpolation and representations use as in one process.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from mtforget.errors import TrialDiverged, UsageError

# The failures a process may share with the others (by name): they are raised again as they were.
_SHARED_AS = {"UsageError": UsageError, "TrialDiverged": TrialDiverged}


class ProcessFailed(RuntimeError):
    """Another process of the launch (or this one) failed the step: every process raises this with
    the same ``reason``, written as a trial's failure reason is (``Type: message``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(error: BaseException) -> str:
    """A failure as a trial records it: ``Type: message`` (a shared failure: the failing process's)."""
    return error.reason if isinstance(error, ProcessFailed) else f"{type(error).__name__}: {error}"


def agree(values: torch.Tensor, error: BaseException | None, world: int) -> torch.Tensor:
    """``values`` summed over the ``world`` processes, once every process got this far.

    ``error`` is what this process raised since the last agreement (None if nothing). When any
    process brings one, all of them raise the first failing process's: a :class:`UsageError` or
    :class:`TrialDiverged` as such, anything else as :class:`ProcessFailed` with its reason.
    With one process, ``error`` is raised as it is.
    """
    if world <= 1:
        if error is not None:
            raise error
        return values
    import torch.distributed as dist

    packed = torch.cat([values.detach().reshape(-1).to(torch.float64),
                        torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=values.device)])
    dist.all_reduce(packed)
    if packed[-1].item() > 0:  # every process knows now, so all of them take part in the exchange
        reasons: list = [None] * world
        dist.all_gather_object(reasons, None if error is None else (type(error).__name__, str(error)))
        rank, (kind, message) = next((r, reason) for r, reason in enumerate(reasons) if reason is not None)
        shared = _SHARED_AS.get(kind)
        failure = shared(message) if shared else ProcessFailed(f"{kind}: {message}")
        failure.agreed = True  # every process raises it at this same point
        if error is not None and rank == dist.get_rank():
            raise failure from error
        raise failure
    return packed[:-1].to(values.dtype)


def share_of(examples: list, rank: int, world: int) -> list:
    """This process's slice of one micro-batch's ``examples`` (sorted by length): every
    ``world``-th example from ``rank`` on. Slices differ in size by one at most, hold examples
    of every length, and together hold every example exactly once."""
    return examples[rank::world]


def check_batch_size(batch_size: int, world: int, key: str = "finetune.batch_size") -> None:
    """A batch that the processes cannot share evenly is a :class:`UsageError` naming ``key``."""
    if world > 1 and batch_size % world:
        raise UsageError(f"{key}: {batch_size} examples per micro-batch cannot be shared evenly by {world} "
                         f"processes; use a multiple of {world}")


@dataclass(frozen=True)
class FsdpSettings:
    """The FSDP2 settings of a launch (from the Accelerate config's ``fsdp_config``)."""

    reshard_after_forward: bool = True
    # Class names of the modules that each become a unit; empty: the model's ``_no_split_modules``
    # (its transformer blocks). None: no units, the root alone (NO_WRAP).
    layer_classes: tuple[str, ...] | None = ()


def fsdp_from_launch(env: Mapping[str, str] | None = None) -> FsdpSettings | None:
    """The FSDP settings that ``accelerate launch`` passed in the environment, or None when the
    launch is not FSDP. A setting this loop cannot honour is a :class:`UsageError` naming its key
    in the Accelerate config."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    if env.get("FSDP_VERSION", "1") != "2":
        raise UsageError("accelerate config fsdp_config.fsdp_version: mtforget trains with FSDP2 "
                         "(torch.distributed.fsdp.fully_shard); set fsdp_version: 2")
    refused = {"FSDP_OFFLOAD_PARAMS": "fsdp_offload_params", "FSDP_ACTIVATION_CHECKPOINTING":
               "fsdp_activation_checkpointing", "FSDP_CPU_RAM_EFFICIENT_LOADING": "fsdp_cpu_ram_efficient_loading"}
    for var, key in refused.items():
        if env.get(var, "false").lower() == "true":
            raise UsageError(f"accelerate config fsdp_config.{key}: true is not supported by mtforget's "
                             "training loop (every process loads the model and keeps its shard on the device); "
                             "set it to false")
    if env.get("FSDP_IGNORED_MODULES"):
        raise UsageError("accelerate config fsdp_config.fsdp_ignored_modules: not supported; remove it")
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").upper()
    if reshard not in ("TRUE", "FALSE", "FULL_SHARD", "SHARD_GRAD_OP"):
        raise UsageError(f"accelerate config fsdp_config.fsdp_reshard_after_forward: {reshard.lower()!r} is not "
                         "an FSDP2 setting; use true or false")
    policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper()
    if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise UsageError(f"accelerate config fsdp_config.fsdp_auto_wrap_policy: {policy} is not supported; "
                         "use TRANSFORMER_BASED_WRAP (one unit per transformer block) or NO_WRAP")
    classes = tuple(c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip())
    return FsdpSettings(reshard_after_forward=reshard in ("TRUE", "FULL_SHARD"),
                        layer_classes=None if policy == "NO_WRAP" else classes)


def _block_classes(model: torch.nn.Module, settings: FsdpSettings) -> set[str]:
    """The class names that become FSDP units in ``model``."""
    if settings.layer_classes is None:
        return set()
    if settings.layer_classes:
        names = set(settings.layer_classes)
    else:
        names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}
    present = {type(m).__name__ for m in model.modules()}
    missing = names - present
    if settings.layer_classes and missing:
        raise UsageError(f"accelerate config fsdp_config.fsdp_transformer_layer_cls_to_wrap: {sorted(missing)} "
                         f"not in the model ({type(model).__name__})")
    if not names & present:
        raise UsageError(f"FSDP: {type(model).__name__} names no transformer block (_no_split_modules); set "
                         "fsdp_transformer_layer_cls_to_wrap in the Accelerate config")
    return names & present


class ShardedTraining:
    """A sharded twin of ``model`` that trains in its place, and the way back to whole weights.

    The twin shares no storage with ``model``: it is built on the meta device, sharded, then
    given ``model``'s weights, and ``model``'s parameters are emptied while the twin trains
    (each process then holds 1/N of the weights, gradients and optimizer state). :meth:`gather`
    puts the twin's current weights back into ``model`` on every process.
    """

    def __init__(self, model: torch.nn.Module, settings: FsdpSettings, device: torch.device,
                 compute_dtype: torch.dtype | None = None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.model, self.device = model, device
        self.optimizer: torch.optim.Optimizer | None = None  # the twin's, set by the loop once it made one
        params = list(model.parameters())
        # Parameters become meta tensors of the same shape (nothing copied); buffers are copied.
        memo = {id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                for p in params}
        twin = copy.deepcopy(model, memo)
        policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
        blocks = _block_classes(model, settings)
        for module in twin.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, reshard_after_forward=settings.reshard_after_forward, mp_policy=policy)
        fully_shard(twin, reshard_after_forward=settings.reshard_after_forward, mp_policy=policy)
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        twin.to_empty(device=device)
        for name, value in buffers.items():  # to_empty left them uninitialised
            twin.get_buffer(name).copy_(value.to(device))
        set_model_state_dict(twin, model.state_dict(), options=StateDictOptions(full_state_dict=True, strict=True))
        self.twin = twin
        self._park()

    def _park(self) -> None:
        """Empty ``model``'s parameters (their shapes and dtypes stay known to the twin)."""
        for param in self.model.parameters():
            param.data = torch.empty(0, dtype=param.dtype, device=param.device)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The twin's weights, whole, on the CPU of every process (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.twin, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().to("cpu", copy=True) for k, v in full.items()}

    def load_into_model(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Give ``model`` these whole weights (its tied parameters once)."""
        for name, param in self.model.named_parameters():
            param.data = weights[name].to(device=self.device, dtype=param.dtype)

    def gather(self) -> torch.nn.Module:
        """``model`` with the twin's current weights, on every process (a collective)."""
        self.load_into_model(self.full_state_dict())
        return self.model

    @contextmanager
    def whole(self) -> Iterator[torch.nn.Module]:
        """``model`` with the current weights for the duration of the block, emptied again after."""
        model = self.gather()
        try:
            yield model
        finally:
            self._park()

    def state_dict(self) -> dict:
        """The twin's and its optimizer's state, whole (for a resumable checkpoint; a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        model_state, optimizer_state = get_state_dict(self.twin, self.optimizer,
                                                      options=StateDictOptions(full_state_dict=True))
        return {"model": _to_cpu(model_state), "optimizer": _to_cpu(optimizer_state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned, on every process."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(self.twin, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return copy.deepcopy(value)
