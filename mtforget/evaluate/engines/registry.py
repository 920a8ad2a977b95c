"""The generation engines by name: what ``eval.engine`` may say, and where each engine lives.

Each name maps to the module that defines its ``ENGINE``
(:class:`~mtforget.evaluate.engines.base.EngineSpec`), imported only when the engine is asked
for; a module that cannot be imported here (its library missing) costs nothing until then.
Besides the names, ``eval.engine`` takes :data:`AUTO`, the policy of
:func:`~mtforget.evaluate.engines.base.make_engine`.
"""

from __future__ import annotations

AUTO = "auto"

# name -> module defining ENGINE. Adding an engine: its module, and one line here.
ENGINES: dict[str, str] = {
    "hf": "mtforget.evaluate.engines.hf",
    "ctranslate2": "mtforget.evaluate.engines.ctranslate2",
}


def engine_choices() -> list[str]:
    """Every value ``eval.engine`` accepts, sorted: the registered names and :data:`AUTO`."""
    return sorted([AUTO, *ENGINES])


def describe_choices() -> str:
    """The accepted values for a message: "a, b or c"."""
    choices = engine_choices()
    return f"{', '.join(choices[:-1])} or {choices[-1]}"
