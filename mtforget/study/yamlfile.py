"""Reading a study file's YAML strictly: every problem is a :class:`UsageError` naming the file and
line, and nothing is expanded before it is checked.

- A key given twice in one mapping is an error naming both lines (plain YAML keeps the last one
  silently, so a second ``finetune:`` block would replace the first whole).
- Anchors and aliases are allowed, but a document whose aliases expand to more than
  ``MAX_VALUES`` values is refused before anything is built from it: the parser shares an
  aliased value, while every later step (path resolution, validation, the grid) copies it.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from mtforget.errors import UsageError

# Values (scalars, lists, mappings) a study file may expand to: orders of magnitude above any
# real study (a grid of thousands of trials is a few hundred values), far below what slows a check.
MAX_VALUES = 200_000


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # merged keys may be overridden: that is their use
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str, lines: bool = True) -> Any:
    """The YAML document in ``text`` as plain data; ``source`` names it in errors (a file, or
    ``--set KEY=VALUE`` with ``lines`` False: a one-line text has no line to name)."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_VALUES:
            raise UsageError(f"{source}: expands to more than {MAX_VALUES:,} values through YAML aliases; "
                             "a study file this large is refused before it is read further")
        return loader.construct_document(node)
    except _DuplicateKey as exc:
        where = f"{source}:{exc.second}" if lines else source
        first = f" (first on line {exc.first})" if lines else ""
        raise UsageError(f"{where}: duplicate key {exc.key!r}{first}; give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None and lines else ""
        problem = getattr(exc, "problem", None)
        raise UsageError(f"{source}{line}: not valid YAML" + (f" ({problem})" if problem else "")) from None
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply to be a study file") from None
    finally:
        loader.dispose()


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    """The number of values ``node`` stands for once every alias is copied out (memoised over the
    shared nodes, so it costs one visit per distinct node; a node that contains itself counts as
    too large)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_VALUES + 1  # while it is being counted: reaching it again means a cycle
    if isinstance(node, SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size
