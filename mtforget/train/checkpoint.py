"""Resumable training checkpoints that survive a kill at any instant.

A checkpoint directory holds::

    checkpoint.json           the pointer: which state folder is current, with the outcome and
                              progress of training at that step
    state-0000100/            Accelerate's full training state at step 100
    best-0000075.safetensors  the best dev-loss weights so far (step 75)

A save writes the new state into a folder of its own, flushes it to disk, and only then switches
to it by replacing ``checkpoint.json`` in one ``os.replace``; the folders and best weights the new
pointer does not name are deleted after the switch. So at every instant the pointer names a
complete state, and a resume reads only what it names; anything else in the directory is a
leftover of an interrupted save and is removed. A checkpoint that still cannot be loaded (a
damaged disk, another library version) is a warning: training starts again from the beginning.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from mtforget.atomic import atomic_path, fsync_tree, write_json_atomic

log = logging.getLogger("mtforget")

POINTER = "checkpoint.json"
FORMAT = 1
# What this module writes in a checkpoint directory (the names of earlier versions included);
# nothing else there is touched.
_OURS = re.compile(r"^(state-\d+|best-\d+\.safetensors|\.checkpoint\.json\..*\.tmp|\.best-\d+\.safetensors\..*\.tmp"
                   r"|state|state\.tmp|progress\.json|progress\.json\.tmp|best\.safetensors)$")


def state_name(step: int) -> str:
    """The folder of the training state saved at ``step``."""
    return f"state-{step:07d}"


def best_name(step: int | None) -> str | None:
    """The file of the best dev-loss weights found at ``step`` (None: no dev check yet)."""
    return None if step is None else f"best-{step:07d}.safetensors"


def save_checkpoint(accelerator: Accelerator, directory: Path, step: int, outcome: dict, progress: dict) -> None:
    """Save the full training state at ``step`` and make it the current checkpoint of
    ``directory`` (every process takes part; the main one switches the pointer)."""
    target = directory / state_name(step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and target.exists():
        shutil.rmtree(target)  # a leftover of a save killed at this same step (the pointer names an older one)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(target)
        write_json_atomic(directory / POINTER, {"format": FORMAT, "state": target.name, "outcome": outcome,
                                                "progress": progress})
        _remove_unnamed(directory, _named(directory))
    accelerator.wait_for_everyone()


def save_best(directory: Path, step: int, weights: dict[str, torch.Tensor]) -> None:
    """Keep ``weights`` as the best dev-loss weights of ``step`` (main process only); the best
    weights of earlier steps go, except those the current checkpoint still names."""
    with atomic_path(directory / best_name(step)) as tmp:
        save_file(weights, tmp)
    keep = _named(directory) | {best_name(step)}
    for path in directory.glob("best-*.safetensors"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def load_best(directory: Path, step: int) -> dict[str, torch.Tensor]:
    """The best dev-loss weights that the checkpoint of ``directory`` names for ``step``."""
    return load_file(directory / best_name(step))


def load_checkpoint(accelerator: Accelerator, directory: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler) -> dict | None:
    """Restore the current checkpoint of ``directory`` into the prepared ``model``, ``optimizer``
    and ``scheduler`` (and the random generators); returns its pointer (``outcome``,
    ``progress``), or None when there is none to resume from.

    Leftovers of interrupted saves are removed. A checkpoint that cannot be loaded is logged as
    a warning and discarded, with everything it may have half-restored put back as it was, so
    that training starts again from the beginning rather than failing on every later attempt.
    """
    if not directory.is_dir():
        return None
    pointer = _read_pointer(directory)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _remove_unnamed(directory, _named_by(pointer))
    accelerator.wait_for_everyone()
    if pointer is None:
        return None
    before = _snapshot(accelerator.unwrap_model(model), optimizer, scheduler)
    try:
        accelerator.load_state(str(directory / pointer["state"]))
        best = best_name(pointer["outcome"].get("best_step"))
        if best is not None and not (directory / best).is_file():
            raise FileNotFoundError(f"{directory / best} is missing")
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the remedy is the same
        log.warning("%s: the checkpoint cannot be loaded (%s: %s); training starts again from the beginning",
                    directory, type(exc).__name__, exc)
        _restore(before, accelerator.unwrap_model(model), optimizer, scheduler)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _remove_unnamed(directory, set())
        accelerator.wait_for_everyone()
        return None
    return pointer


def _read_pointer(directory: Path) -> dict | None:
    """The pointer of ``directory``, or None when it has none or it is unreadable (warned)."""
    path = directory / POINTER
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(pointer, dict) and pointer.get("format") == FORMAT
                and isinstance(pointer.get("state"), str) and re.fullmatch(r"state-\d+", pointer["state"])
                and isinstance(pointer.get("outcome"), dict) and isinstance(pointer.get("progress"), dict)):
            raise ValueError("not a checkpoint pointer of this version")
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); training starts again from the beginning", path, exc)
        return None
    return pointer


def _named_by(pointer: dict | None) -> set[str]:
    if pointer is None:
        return set()
    return {POINTER, pointer["state"], best_name(pointer["outcome"].get("best_step"))} - {None}


def _named(directory: Path) -> set[str]:
    """What the current pointer of ``directory`` names (the pointer included)."""
    return _named_by(_read_pointer(directory))


def _remove_unnamed(directory: Path, keep: set[str]) -> None:
    """Delete what this module wrote in ``directory`` that ``keep`` does not name."""
    for path in sorted(directory.iterdir()):
        if path.name in keep or not _OURS.match(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """What loading a checkpoint overwrites, copied (weights to the CPU) so that a failed load can
    be undone."""
    state = {
        "model": _cpu_copy(model.state_dict()),
        # On the CPU too: a copy on the device would double the optimizer's memory there.
        "optimizer": _cpu_copy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _cpu_copy(value):
    """``value`` (a state dict, nested) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu_copy(v) for v in value)
    return copy.deepcopy(value)


def _restore(state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
