"""Expanding a study's grid into trials, each with a stable id."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from mtforget.bases.specs import tiny_recipe
from mtforget.cache import content_fingerprint, fingerprint
from mtforget.errors import UsageError
from mtforget.mitigations import MITIGATIONS, settings_of
from mtforget.study.checkpoints import CheckpointFolder, check_study, resolve_checkpoints
from mtforget.study.config import EXECUTION_KEYS, StudyConfig, grid_combinations, set_dotted, study_to_dict


@dataclass(frozen=True)
class Trial:
    """One condition × seed: a fully resolved config and the id its directory and rows carry."""

    id: str
    config: StudyConfig
    grid_values: dict  # the grid's values for this trial (dotted key → value)
    checkpoint: CheckpointFolder | None = None  # a checkpoint fine-tuned elsewhere, evaluated instead of training

    @property
    def method(self) -> str:
        """How the model was fine-tuned: ``finetune.method``, or the checkpoint's (``full``, ``lora`` ...)."""
        return self.checkpoint.method if self.checkpoint else self.config.finetune.method

    @property
    def finetune_size(self) -> int:
        """Fine-tuning pairs (0 for a checkpoint made elsewhere: not known here)."""
        return 0 if self.checkpoint else self.config.finetune.size

    @property
    def model_label(self) -> str:
        """``tiny:small`` or the checkpoint's directory/hub name."""
        m = self.config.model
        if m.path:
            return Path(m.path).name or m.path
        return f"tiny:{m.tiny}"

    @property
    def condition(self) -> str:
        """The trial's condition (see :func:`condition_label`)."""
        return condition_label(self.config, self.model_label, self.grid_values, self.checkpoint)


def condition_label(config: StudyConfig, model_label: str, grid_values: dict,
                    checkpoint: CheckpointFolder | None = None) -> str:
    """A trial's condition, the one name tables and plots give it: model, method, data size (or
    the checkpoint made elsewhere), each mitigation that changes training, and any other grid value
    except the seed."""
    if checkpoint is not None:
        parts = [model_label, checkpoint.method, f"ckpt={checkpoint.label}"]
    else:
        parts = [model_label, config.finetune.method, f"n={config.finetune.size}"]
    for m in MITIGATIONS.values():
        settings = settings_of(config, m.key)
        if m.changes_training and m.enabled(settings):
            parts.append(f"{m.short}={m.label(settings)}")
    # A key the study selects per condition (``select``) is chosen within the condition, not part of it.
    shown = ("seed", "model.tiny", "model.path", "finetune.size", "finetune.method", "eval.representations",
             "eval.representation_sentences", *config.select)
    other = {k: v for k, v in grid_values.items()
             if k not in shown and not any(k == m.key or k.startswith(m.key + ".") for m in MITIGATIONS.values())}
    return " ".join(parts + [f"{k}={v}" for k, v in sorted(other.items())])


# How a tiny base is pre-trained, and the value that leaves each unset: no part of a trial that
# starts from model.path, and an error when no trial of the study builds a tiny base.
TINY_PRETRAINING = {"pretrain_steps": None, "pretrain_mix": {}}


def expand(study: StudyConfig) -> list[Trial]:
    """The cross product of the grid over the base config, in grid order; duplicates removed.

    A list grid gives the union of its parts' cross products, in order.

    A trial's id hashes its whole resolved config (grid removed, the study name left out), so
    changing anything that affects a trial's numbers gives it a new id, and renaming a study does
    not invalidate finished trials.
    """
    base = study_to_dict(study)
    combinations = grid_combinations(base.pop("grid")) or [{}]
    trials: dict[str, Trial] = {}
    contents: dict[str, str | None] = {}  # path → content fingerprint: each path walked once
    given: set[str] = set()  # pre-training settings of tiny bases the study sets, and those a trial uses
    used: set[str] = set()
    for chosen in combinations:
        raw = copy.deepcopy(base)
        for axis, value in chosen.items():
            set_dotted(raw, axis, value)
        set_here = {key for key, unset in TINY_PRETRAINING.items() if raw["model"][key] != unset}
        given |= set_here
        if raw["model"]["path"]:
            # A checkpoint replaces the built-in sizes: trials differing only in size collapse.
            raw["model"].update(tiny=None, prebuilt=True, **copy.deepcopy(TINY_PRETRAINING))
            chosen.pop("model.tiny", None)
        else:
            used |= set_here
        if raw["finetune"].get("checkpoints"):
            # Checkpoints made elsewhere: one trial each, evaluated instead of trained.
            check_study(StudyConfig.model_validate({**raw, "grid": {}}))
            for folder in resolve_checkpoints(raw["finetune"]["checkpoints"]):
                one = copy.deepcopy(raw)
                one["finetune"]["checkpoints"] = [folder.path]
                trial = _trial(one, chosen, contents, folder)
                trials.setdefault(trial.id, trial)
            continue
        trial = _trial(raw, chosen, contents)
        trials.setdefault(trial.id, trial)
    if unused := sorted(given - used):
        raise UsageError(f"model.{unused[0]}: every trial starts from model.path, so no tiny base is "
                         "pre-trained; remove the key")
    return list(trials.values())


def _trial(raw: dict, chosen: dict, contents: dict[str, str | None], checkpoint: CheckpointFolder | None = None) -> Trial:
    """The trial of one resolved config (and the checkpoint made elsewhere it evaluates, if any)."""
    config = StudyConfig.model_validate({**raw, "grid": {}})
    identity = {k: v for k, v in study_to_dict(config).items() if k not in EXECUTION_KEYS}
    if config.model.tiny and not config.model.path:
        # A built-in size is its recipe: a new spec or recipe must not reuse old trials.
        identity["tiny_recipe"] = tiny_recipe(config.model.tiny)
    _identify_contents(identity, config, contents)
    _leave_out_automatic_precision(identity)
    _leave_out_later_keys_unset(identity)
    _leave_out_mitigations_that_are_off(identity, config)
    readable = _readable(config) if checkpoint is None else _readable_checkpoint(config, checkpoint)
    return Trial(readable + "-" + fingerprint(identity, length=8), config, chosen, checkpoint)


def _identify_contents(identity: dict, config: StudyConfig, contents: dict[str, str | None]) -> None:
    """Local checkpoints, corpora and fine-tuning data enter a trial's identity by their contents,
    not their paths: a checkpoint or corpus changed in place must not reuse trials finished on the
    old one, and the same files reached by another path (relative or absolute, moved) are the
    same trial. ``contents`` remembers the fingerprints already taken."""
    for block in (identity["model"], identity["corpus"], *(identity["finetune"].get("data") or [])):
        path = block.get("path")
        if path:
            if path not in contents:
                contents[path] = content_fingerprint(path)
            if contents[path]:
                block["path"] = {"contents": contents[path]}
    if identity["finetune"].get("checkpoints"):
        for i, path in enumerate(identity["finetune"]["checkpoints"]):
            if path not in contents:
                contents[path] = content_fingerprint(path)
            identity["finetune"]["checkpoints"][i] = {"contents": contents[path]}
    else:  # a key that came later: studies without it keep their trial ids
        identity["finetune"].pop("checkpoints", None)


def _leave_out_automatic_precision(identity: dict) -> None:
    """``model.dtype`` and ``finetune.precision`` at ``auto`` are the behaviour trials had before
    the keys existed, so they stay out of the identity and those trials keep their ids; a value
    set explicitly enters it."""
    for section, key in (("model", "dtype"), ("finetune", "precision")):
        if identity[section].get(key) == "auto":
            identity[section].pop(key)


# Keys that came after trials were finished, whose unset value (None) is the behaviour those
# trials had: left out of the identity while unset, so they keep their ids.
LATER_KEYS = ("finetune.steps", "finetune.replay.directions", "finetune.replay.languages")


def _leave_out_later_keys_unset(identity: dict) -> None:
    for key in LATER_KEYS:
        *parents, last = key.split(".")
        node = identity
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last, 0) is None:
            node.pop(last)


def _leave_out_mitigations_that_are_off(identity: dict, config: StudyConfig) -> None:
    """A mitigation that is off changes nothing a trial computes, so its settings stay out of the
    trial's identity (see ``Mitigation.identity_when_off``); so do those of sampling forgetting
    during training when nothing samples, which came later."""
    sampled = config.eval.during_training.every or any(
        m.needs_forgetting_probe and m.enabled(settings_of(config, m.key)) for m in MITIGATIONS.values())
    if not sampled:
        identity["eval"].pop("during_training", None)
    for m in MITIGATIONS.values():
        if not m.identity_when_off and not m.enabled(settings_of(config, m.key)):
            *parents, last = m.key.split(".")
            node = identity
            for part in parents:
                node = node[part]
            node.pop(last, None)


def _readable(config: StudyConfig) -> str:
    model = f"tiny-{config.model.tiny}" if config.model.tiny and not config.model.path else "ckpt"
    # Mitigations show in the readable part only when they change training: plain trials keep short names.
    mitigations = "".join(f"-{m.id_tag(settings_of(config, m.key))}" for m in MITIGATIONS.values()
                          if m.changes_training and m.enabled(settings_of(config, m.key)))
    return f"{model}-{config.finetune.method}-n{config.finetune.size}-s{config.seed}{mitigations}"


def _readable_checkpoint(config: StudyConfig, checkpoint: CheckpointFolder) -> str:
    model = f"tiny-{config.model.tiny}" if config.model.tiny and not config.model.path else "ckpt"
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.label.replace("/", "-"))
    return f"{model}-{checkpoint.method}-{label}"
