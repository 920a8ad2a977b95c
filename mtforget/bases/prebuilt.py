"""The demo's tiny bases, shipped inside the package as pretrained artefacts.

``mtforget/bases/prebuilt/`` holds one directory per built-in base (half-precision safetensors,
config and tokenizer files) and ``manifest.json``, which records for each base the recipe it was
built with (:func:`~mtforget.bases.specs.tiny_recipe`), the fingerprint of the synthetic world it
was pre-trained on, the seed, the library versions, its size and its mean chrF over the demo's
directions. ``mtforget bases build`` writes them (:mod:`mtforget.study.prebuilt`).

A study that asks for a built-in base gets the shipped one only when the manifest says it is the
base the study would pre-train itself: same recipe, same world (corpus, training split, languages
and their names), same seed and the recipe's own step budget. Anything else (another corpus, a
changed recipe, ``model.pretrain_steps``, ``model.prebuilt: false``, a damaged file) pre-trains
from scratch as before. Library versions and the pre-training precision are recorded, not
compared: they change the weights' last bits, not what the base is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mtforget.bases.specs import DECODER_SPEC, TINY_SPECS, tiny_recipe
from mtforget.cache import file_digest, fingerprint
from mtforget.data.corpus import Corpus
from mtforget.data.languages import language_name
from mtforget.data.splits import Splits

log = logging.getLogger("mtforget")

PREBUILT_DIR = Path(__file__).with_name("prebuilt")
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
# The budget for every shipped file together (decimal megabytes, the stricter reading).
MAX_BYTES = 12_000_000


def world_fingerprint(corpus: Corpus, splits: Splits, names: dict[str, str] | None) -> str:
    """What a built-in base learns from besides its recipe: the corpus's contents, the segments of
    its training split, its languages and the names the decoder-only prompts give them."""
    languages = list(corpus.languages)
    return fingerprint({
        "corpus": corpus.fingerprint(),
        "train_ids": fingerprint([s.id for s in splits.train]),
        "languages": languages,
        "names": {lang: language_name(lang, names) for lang in languages},
    })


def normalized_recipe(name: str) -> list:
    """``tiny_recipe(name)`` as it reads back from JSON, so it compares equal to a manifest's."""
    return json.loads(json.dumps(tiny_recipe(name)))


def default_steps(name: str) -> int:
    """The recipe's own pre-training budget of base ``name``."""
    return TINY_SPECS[name].steps if name in TINY_SPECS else DECODER_SPEC.steps


def load_manifest(root: Path = PREBUILT_DIR) -> dict | None:
    """The manifest under ``root``, or None when there is none (a checkout without shipped bases)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def mismatch(name: str, entry: dict | None, world: str, seed: int, root: Path = PREBUILT_DIR,
             mix: dict[str, float] | None = None) -> str | None:
    """Why the shipped base ``name`` (its manifest ``entry``) is not the one a study would build on
    ``world`` with ``seed`` and the pre-training language ``mix``; None when it is."""
    if entry is None:
        return "no shipped base of that name"
    if entry.get("recipe") != normalized_recipe(name):
        return "its recipe differs from mtforget.bases.specs"
    if entry.get("world") != world:
        return "it was pre-trained on another corpus, split or language names"
    if entry.get("seed") != seed:
        return f"it was pre-trained with model.seed {entry.get('seed')}"
    if (entry.get("pretrain_mix") or {}) != json.loads(json.dumps(mix or {})):
        return f"it was pre-trained with model.pretrain_mix {entry.get('pretrain_mix') or {}}"
    for file, digest in entry.get("files", {}).items():
        path = root / name / file
        if not path.is_file() or file_digest(path) != digest:
            return f"{path} is missing or differs from the manifest"
    return None


def prebuilt_base(name: str, corpus: Corpus, splits: Splits, seed: int, steps: int | None,
                  names: dict[str, str] | None, root: Path = PREBUILT_DIR,
                  mix: dict[str, float] | None = None) -> Path | None:
    """The shipped directory of base ``name`` when it is the base this study would pre-train,
    else None (logged when it is the demo's world but not its base)."""
    manifest = load_manifest(root)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return None
    if steps is not None and steps != default_steps(name):
        return None  # a budget of the study's own: the shipped base is not what it asks for
    entry = manifest.get("bases", {}).get(name)
    world = world_fingerprint(corpus, splits, names)
    reason = mismatch(name, entry, world, seed, root, mix)
    if reason is None:
        return root / name
    if entry is not None and entry.get("world") == world:
        # The demo's own world with a stale base: worth saying why minutes go to pre-training.
        log.warning("tiny:%s: not using the shipped base (%s); pre-training it from scratch. "
                    "`mtforget bases build` rebuilds the shipped bases", name, reason)
    return None
