"""The documentation: a config reference that lists every key of the schema, examples that parse,
a short README whose links resolve."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from mtforget.study.config import parse_study, valid_keys

ROOT = Path(__file__).resolve().parent.parent


def _reference_module():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_config_reference_lists_every_key_of_the_schema():
    page = _reference_module().config_reference()
    listed = re.findall(r"^\| `([^`]+)` \|", page, flags=re.MULTILINE)
    assert sorted(listed) == sorted(valid_keys())
    assert "finetune.alignment.layer" in listed and "eval.base_gate.min_chrf" in listed


def test_a_key_without_a_docstring_stops_the_reference():
    from pydantic import BaseModel, ConfigDict

    class Documented(BaseModel):
        model_config = ConfigDict(use_attribute_docstrings=True)

        size: int = 1
        """Documented."""
        lr: float = 0.1

    module = _reference_module()
    with pytest.raises(module.UndocumentedKey, match="lr"):
        module.config_rows(Documented)


def test_the_cli_reference_has_every_command():
    page = _reference_module().cli_reference()
    for command in ("demo", "run", "report", "bases", "data"):
        assert f"## `mtforget {command}`" in page
    assert "`--set`" in page and "`--retry-failed`" in page


@pytest.mark.parametrize("study", sorted((ROOT / "examples").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_example_study_parses(study):
    raw = yaml.safe_load(study.read_text(encoding="utf-8"))
    if study.name.startswith("accelerate_"):  # an Accelerate launch config, not a study
        assert "distributed_type" in raw
        return
    parse_study(raw, str(study))


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", ""))["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    generated = set(_reference_module().PAGES)
    for page in pages(nav):  # every page of the site exists, or is generated at build time
        assert page in generated or (ROOT / "docs" / page).is_file(), page
