"""What the built-in tiny bases are: sizes, pre-training recipes and their versions.

Kept apart from the code that builds them (:mod:`mtforget.bases.tiny_seq2seq`,
:mod:`mtforget.bases.tiny_decoder`) so that expanding a study's grid, which needs a base's
recipe for the trial's identity, does not import PyTorch: the process that schedules trials on a
pool of workers then stays small.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class TinySpec:
    """Architecture and pre-training recipe of one built-in size."""

    d_model: int
    layers: int  # encoder layers = decoder layers
    heads: int
    ffn_dim: int
    vocab_size: int
    steps: int
    batch_size: int
    lr: float
    dropout: float = 0.0  # the synthetic world has far more examples than a tiny model can memorise


# Bumped whenever the pre-training recipe (tokenizer, architecture defaults, training loop)
# changes the weights it produces, so cached bases from older recipes are not reused.
RECIPE_VERSION = 4

# Step counts, not wall time, bound pre-training, so a base is the same on every machine.
# The sizes differ by more than 4x in parameters and see the same pre-training examples (same
# steps and batch size), so the demo's size contrast varies the model alone. A language that is
# rare in the mix is learned from few examples, late in training: a shorter budget for the larger
# size, enough on an even mix, leaves it far behind on the rare languages (the shipped bases'
# manifest, mtforget/bases/prebuilt/manifest.json, records what each reached).
TINY_SPECS: dict[str, TinySpec] = {
    "small": TinySpec(d_model=96, layers=2, heads=4, ffn_dim=192, vocab_size=1500, steps=6000, batch_size=64, lr=3e-3),
    "base": TinySpec(d_model=224, layers=2, heads=4, ffn_dim=448, vocab_size=1500, steps=6000, batch_size=64, lr=1.5e-3),
}


@dataclass(frozen=True)
class DecoderSpec:
    """Architecture and training recipe of the built-in decoder-only bases."""

    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    vocab_size: int
    steps: int  # plain-prompt pre-training (tiny:lm)
    batch_size: int
    lr: float
    instruct_steps: int  # instruction tuning on top (tiny:lm-instruct)
    instruct_lr: float
    task_share: float  # share of non-translation tasks in instruction tuning


# Bumped whenever the recipe changes the weights it produces (see RECIPE_VERSION).
DECODER_RECIPE_VERSION = 4

# Four decoder layers of width 96: about tiny:small's size, so the architecture is the contrast.
# A decoder-only model learns translation later than an encoder-decoder of its size (it must
# find the source in its own context), most of all between the mix's rare languages, so its
# budget runs well past its drop in loss. The instruction tuning on top is shorter, as an -Instruct
# model is a brief tuning of its base; the chat format for a rare target language is learned from
# the few chat examples that have it, so its budget, not its rate, decides how much of the base's
# quality on those languages it keeps (docs/explanation/demo-world.md).
DECODER_SPEC = DecoderSpec(d_model=96, layers=4, heads=4, ffn_dim=192, vocab_size=1500, steps=10000,
                           batch_size=64, lr=3e-3, instruct_steps=6000, instruct_lr=1e-3, task_share=0.25)
DECODER_STYLES = {"lm": "plain prompt", "lm-instruct": "chat template"}


TINY_NAMES = ("small", "base", "lm", "lm-instruct")  # encoder-decoder sizes, then decoder-only styles
INSTRUCT_FIELDS = ("instruct_steps", "instruct_lr", "task_share")


def plain_decoder_recipe(spec: DecoderSpec) -> dict:
    """The fields of ``spec`` that decide ``tiny:lm``'s weights: all but the instruction tuning's,
    so that retuning ``tiny:lm-instruct`` keeps the plain base it starts from."""
    return {k: v for k, v in asdict(spec).items() if k not in INSTRUCT_FIELDS}


def tiny_recipe(name: str) -> list:
    """What determines a built-in base's weights besides the corpus (part of trial identity)."""
    if name in TINY_SPECS:
        return [RECIPE_VERSION, asdict(TINY_SPECS[name])]
    if name == "lm":
        return [DECODER_RECIPE_VERSION, name, plain_decoder_recipe(DECODER_SPEC)]
    return [DECODER_RECIPE_VERSION, name, asdict(DECODER_SPEC)]
