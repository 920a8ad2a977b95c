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
damaged disk, another library version) is a warning and :class:`CheckpointUnusable`: the load may
have changed the model already, so the caller starts again from the weights it began with (a
trial reloads its base) rather than this module keeping a copy of the model and optimizer to undo
it with.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

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


class CheckpointUnusable(RuntimeError):
    """The current checkpoint cannot be loaded; it has been cleared. What it was loaded into may be
    half-changed: train again from the start, on the weights training began with."""


def load_checkpoint(accelerator: Accelerator, directory: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler) -> dict | None:
    """Restore the current checkpoint of ``directory`` into the prepared ``model``, ``optimizer``
    and ``scheduler`` (and the random generators); returns its pointer (``outcome``,
    ``progress``), or None when there is none to resume from.

    Leftovers of interrupted saves are removed. A checkpoint that cannot be loaded (on any process
    of a launch) is logged as a warning and cleared, and :class:`CheckpointUnusable` is raised on
    every process.
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
    reason = ""
    try:
        accelerator.load_state(str(directory / pointer["state"]))
        best = best_name(pointer["outcome"].get("best_step"))
        if best is not None and not (directory / best).is_file():
            raise FileNotFoundError(f"{directory / best} is missing")
    except Exception as exc:  # noqa: BLE001 - whatever the reason, the remedy is the same
        reason = f"{type(exc).__name__}: {exc}"
    failed = torch.tensor([1.0 if reason else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        failed = accelerator.reduce(failed, "sum")  # one process's failure is every process's
    if failed.item():
        log.warning("%s: the checkpoint cannot be loaded (%s); training starts again from the beginning",
                    directory, reason or "on another process")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (directory / POINTER).unlink(missing_ok=True)  # first: without it, the rest is a leftover
            _remove_unnamed(directory, set())
        accelerator.wait_for_everyone()
        raise CheckpointUnusable(f"{directory}: {reason or 'unusable on another process'}")
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
