"""The gettext corpus builder, on a wheel made here (no download)."""

import json
import zipfile

import polib

from mtforget.cache import cache_root
from mtforget.data.gettext import build_gettext_corpus, clean_pair, read_catalogs

MESSAGES = {
    "de": {"Save the changes to this file": "Änderungen an dieser Datei speichern",
           "Delete %s items from the list": "%s Elemente löschen",
           "Open": "Öffnen",
           "Show the <b>hidden</b> files now": "Versteckte Dateien jetzt anzeigen",
           "Send the invoice by email": "Rechnung per E-Mail senden"},
    "pt_BR": {"Save the changes to this file": "Salvar as alterações neste arquivo",
              "Send the invoice by email": "Enviar a fatura por e-mail"},
    "en_GB": {"Save the changes to this file": "Save the changes to this file"},
}


def _wheel(path):
    with zipfile.ZipFile(path, "w") as zf:
        for lang, messages in MESSAGES.items():
            po = polib.POFile()
            for msgid, msgstr in messages.items():
                po.append(polib.POEntry(msgid=msgid, msgstr=msgstr))
            po.append(polib.POEntry(msgid="A fuzzy one that is long enough", msgstr="Unsicher", flags=["fuzzy"]))
            zf.writestr(f"fake/locale/{lang}/LC_MESSAGES/fake.po", str(po))


def test_cleaning_rules():
    assert clean_pair("Save the _changes to this file", "Änderungen speichern") == (
        "Save the changes to this file", "Änderungen speichern")
    assert clean_pair("Open", "Öffnen") is None  # fewer than four words
    assert clean_pair("Delete %s items from the list", "%s löschen") is None
    assert clean_pair("Delete {count} items from the list", "löschen") is None
    assert clean_pair("Show the <b>hidden</b> files now", "anzeigen") is None
    assert clean_pair("Send the invoice by email", "x") is None  # length ratio


def test_builds_a_multi_parallel_corpus_from_catalogs(tmp_path):
    wheels = cache_root() / "gettext" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    _wheel(wheels / "fake-1.0-py3-none-any.whl")
    assert set(read_catalogs(wheels / "fake-1.0-py3-none-any.whl")) == {"de", "pt_BR"}  # en_GB is English
    counts = build_gettext_corpus(tmp_path / "c.jsonl", ["fake"])
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert counts == {"en": 2, "de": 2, "pt_BR": 2}
    assert {r["translation"]["en"] for r in records} == {"Save the changes to this file", "Send the invoice by email"}
    assert all(r["id"].startswith("g") for r in records)
