"""Writes the generated reference pages at build time (mkdocs-gen-files runs it):

- ``reference/config.md``: every key of the study schema (mtforget.study.config) with its type,
  default, constraint and docstring; a key without a docstring stops the build;
- ``reference/cli.md``: every command and option of ``mtforget`` (mtforget.cli's parser).

Run directly (``python scripts/docs_reference.py OUT``) it writes the same pages into OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


class UndocumentedKey(RuntimeError):
    """A key of the schema has no docstring: the reference would leave it unexplained."""


def _section(annotation) -> type[BaseModel] | None:
    """The nested block a field holds (also an optional one), or None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or unset" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _constraint(field: FieldInfo) -> str:
    bounds = []
    for item in field.metadata:
        for name, symbol in _BOUNDS.items():
            value = getattr(item, name, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
    return ", ".join(bounds)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "–"
    if value is None:
        return "unset"
    return f"`{json.dumps(value, ensure_ascii=False)}`" if isinstance(value, (list, dict, str, bool)) else f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, constraint, description) of every key under ``model``, depth first."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if not field.description:
            raise UndocumentedKey(f"{key}: no docstring in {model.__module__}.{model.__qualname__}")
        section = _section(field.annotation)
        rows.append((key, _type_name(field.annotation), _default(field), _constraint(field), field.description))
        if section is not None:
            rows += config_rows(section, f"{key}.")
    return rows


def config_reference() -> str:
    """The config reference page."""
    from mtforget.study.config import StudyConfig

    lines = ["# Study config", "",
             "Every key a study file accepts, generated from the schema (`mtforget/study/config.py`) when the "
             "site is built. `--set KEY=VALUE` and grid axes take the same dotted keys; values from them are "
             "validated like the file's. An unknown key is exit 2, naming the closest valid one.", "",
             "| key | type | default | constraint | meaning |", "|---|---|---|---|---|"]
    for key, kind, default, constraint, description in config_rows(StudyConfig):
        lines.append(f"| `{key}` | {kind} | {default} | {constraint} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def cli_reference() -> str:
    """The command-line reference page, from the argparse parser."""
    from mtforget.cli import build_parser

    parser = build_parser()
    lines = ["# Command line", "", "Generated from `mtforget`'s argument parser when the site is built.", "",
             "```", parser.format_usage().strip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        lines += [f"## `mtforget {name}`", "", _cell(helps.get(name) or sub.description or ""), "",
                  "```", sub.format_usage().strip(), "```", "", "| argument | meaning | default |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`"
            default = "" if action.default in (None, argparse.SUPPRESS, False) or not action.option_strings \
                else f"`{action.default}`"
            lines.append(f"| {names} | {_cell(action.help or '')} | {default} |")
        lines.append("")
    return "\n".join(lines)


PAGES = {"reference/config.md": config_reference, "reference/cli.md": cli_reference}


def _write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, page in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(page())


if __name__ == "<run_path>":  # how mkdocs-gen-files runs it, during a build
    _write_with_gen_files()
elif __name__ == "__main__":
    for path, page in PAGES.items():
        target = Path(sys.argv[1]) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page(), encoding="utf-8")
