"""Expanding a study's grid into trials, each with a stable id."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from mtforget.bases.specs import tiny_recipe
from mtforget.cache import content_fingerprint, fingerprint
from mtforget.study.config import (EXECUTION_KEYS, FinetuneConfig, StudyConfig, grid_combinations, set_dotted,
                                   study_to_dict)


@dataclass(frozen=True)
class Trial:
    """One condition × seed: a fully resolved config and the id its directory and rows carry."""

    id: str
    config: StudyConfig
    grid_values: dict  # the grid's values for this trial (dotted key → value)

    @property
    def model_label(self) -> str:
        """``tiny:small`` or the checkpoint's directory/hub name."""
        m = self.config.model
        if m.path:
            return Path(m.path).name or m.path
        return f"tiny:{m.tiny}"

    @property
    def alignment_label(self) -> str:
        """The store's ``alignment`` column (see :func:`alignment_label`)."""
        return alignment_label(self.config.finetune)

    @property
    def replay_label(self) -> str:
        """What a condition label appends for replay (see :func:`replay_label`)."""
        return replay_label(self.config.finetune)


def alignment_label(finetune: FinetuneConfig) -> str:
    """``none``, or layer and schedule of the alignment objective: ``mid-alternate``, ``L1-weighted``."""
    a = finetune.alignment
    if not a.enabled:
        return "none"
    return f"{'mid' if a.layer == 'middle' else f'L{a.layer}'}-{a.schedule}"


def replay_label(finetune: FinetuneConfig) -> str:
    """``+replay0.25`` (other directions), ``+replay-copies0.25`` (copies), or ``""`` when off."""
    r = finetune.replay
    if not r.fraction:
        return ""
    return f"+replay{'-copies' if r.source == 'copies' else ''}{r.fraction:g}"


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
    for chosen in combinations:
        raw = copy.deepcopy(base)
        for axis, value in chosen.items():
            set_dotted(raw, axis, value)
        if raw["model"]["path"]:
            # A checkpoint replaces the built-in sizes: trials differing only in size collapse.
            raw["model"]["tiny"] = None
            raw["model"]["pretrain_steps"] = None
            chosen.pop("model.tiny", None)
        config = StudyConfig.model_validate({**raw, "grid": {}})
        identity = {k: v for k, v in study_to_dict(config).items() if k not in EXECUTION_KEYS}
        if config.model.tiny and not config.model.path:
            # A built-in size is its recipe: a new spec or recipe must not reuse old trials.
            identity["tiny_recipe"] = tiny_recipe(config.model.tiny)
        _identify_contents(identity, config, contents)
        trial_id = _readable(config) + "-" + fingerprint(identity, length=8)
        trials.setdefault(trial_id, Trial(trial_id, config, chosen))
    return list(trials.values())


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


def _readable(config: StudyConfig) -> str:
    model = f"tiny-{config.model.tiny}" if config.model.tiny and not config.model.path else "ckpt"
    # Mitigations show in the readable part only when they are on: plain trials keep short names.
    mitigations = f"-align-{alignment_label(config.finetune)}" if config.finetune.alignment.enabled else ""
    mitigations += replay_label(config.finetune).replace("+", "-")
    return f"{model}-{config.finetune.method}-n{config.finetune.size}-s{config.seed}{mitigations}"
