"""The report: its tables and files, escaping of data, and a real headless browser rendering it."""

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtforget.cli import main
from mtforget.data.synthetic import SyntheticWorld, write_jsonl
from mtforget.report.tables import log_fit
from mtforget.study.config import parse_study
from tests.conftest import run_and_report, tiny_study

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "runs" / "test-artifacts" / "report-screenshot.png"
MARKUP = ' <script>window.__pwned = 1; alert("pwned")</script> <b>bold</b> & <img src=x onerror="alert(2)">'
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("MTFORGET_CHROMIUM") or shutil.which("chromium")
    assert path, "Chromium is missing: scripts/install_browser.sh installs it (make test runs it)"
    return path


def _open(page_path: Path):
    """Load a page in headless Chromium; returns (page facts, console errors, dialogs) after closing."""
    from playwright.sync_api import sync_playwright

    errors, dialogs = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(page_path.as_uri(), wait_until="load")
        facts = page.evaluate("""() => ({
            images: [...document.images].map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})),
            text: document.body.innerText,
            pwned: window.__pwned === 1,
            scripts: document.scripts.length,
        })""")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(page_path.parent / "screenshot.png"), full_page=True)
        browser.close()
    return facts, errors, dialogs


def test_quick_demo_report_renders_in_a_browser(tmp_path, capsys):
    out = tmp_path / "demo"
    # The quick demo with a shortened pre-training and small data sizes, so the test stays fast,
    # crossed with alignment on/off and an interpolation point so every section has data. A
    # 60-step base fails the base-quality gate, so its directions are counted anyway: this test is
    # about rendering every section.
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--set", "model.pretrain_steps=60",
                 "--set", "grid.finetune.size=[50,300]", "--set", "grid.finetune.alignment.enabled=[false,true]",
                 "--set", "eval.interpolation=[0.5]", "--set", "eval.base_gate.include_flagged=true"]) == 0
    report = out / "report" / "index.html"
    facts, errors, dialogs = _open(report)
    assert errors == [] and dialogs == []
    assert len(facts["images"]) >= 6 and all(i["ok"] for i in facts["images"]), facts["images"]
    names = {i["src"] for i in facts["images"]}
    assert {"interpolation.png", "layer_retrieval.png", "frontiers.png", "drift_0.png"} <= names, names
    for heading in ("chrF delta", "off-target rate delta", "Gain on fine-tuned directions", "Example translations",
                    "chrF delta per direction", "Controlled contrasts", "Weight interpolation with the base",
                    "Layer-wise cross-lingual retrieval", "Base model quality", "Trials", "Run metadata",
                    "At matched gain", "Learning–forgetting frontiers", "Where unseen targets drift",
                    "Forgetting per unseen language", "Directions by exposure", "chrF on target delta"):
        assert heading in facts["text"]
    shutil.copyfile(out / "report" / "screenshot.png", SCREENSHOT)
    with capsys.disabled():
        print(f"\nreport screenshot: {SCREENSHOT}")
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert len(table) == sum(1 for _ in (out / "results.csv").open()) - 1
    assert {"trial_id", "category", "metric", "delta"} <= set(table[0])


def test_markup_in_the_corpus_is_shown_escaped_and_never_runs(tmp_path):
    records = SyntheticWorld(seed=0, n_languages=5).corpus(600, seed=0)
    for record in records:
        record["translation"] = {lang: text + MARKUP for lang, text in record["translation"].items()}
    corpus = tmp_path / "markup.jsonl"
    write_jsonl(records, corpus)
    raw = tiny_study(**{"finetune.size": [16]})
    raw["corpus"] = {**raw["corpus"], "path": str(corpus)}
    raw["finetune"]["directions"] = ["en-xa", "xa-en", "xa-xb"]
    out = tmp_path / "study"
    assert run_and_report(parse_study(raw, "t"), out, progress=False) == 0
    html_text = (out / "report" / "index.html").read_text()
    assert "<script>window.__pwned" not in html_text and "&lt;script&gt;window.__pwned" in html_text

    facts, errors, dialogs = _open(out / "report" / "index.html")
    assert dialogs == [] and not facts["pwned"] and facts["scripts"] == 0
    assert '<script>window.__pwned = 1; alert("pwned")</script>' in facts["text"]  # shown as text
    assert not any(i["src"] == "x" for i in facts["images"])
    assert errors == []


def test_log_fit_recovers_a_known_slope():
    xs = [0.1, 1, 10, 100, 1000]
    fit = log_fit(xs, [5 - 3 * i for i in range(5)])
    assert fit["slope"] == pytest.approx(-3) and fit["intercept"] == pytest.approx(2)
    assert (fit["low"] <= fit["y"] + 1e-9).all() and (fit["high"] >= fit["y"] - 1e-9).all()
    assert log_fit([1, 1, 1], [1, 2, 3]) is None


def test_report_records_tokens_per_parameter(tmp_path):
    out = tmp_path / "s"
    assert run_and_report(parse_study(tiny_study(), "t"), out, progress=False) == 0
    infos = [json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json")]
    for info in infos:
        assert info["train"]["tokens"] > 0 and info["parameters"] > 0
    assert "forgetting_vs_scale.png" in (out / "report" / "index.html").read_text()


def test_a_method_at_its_own_learning_rate_is_one_contrast():
    from mtforget.report.tables import _contrast_groups

    def flat(method, lr, size=100):
        return {"finetune.method": json.dumps(method), "finetune.lr": json.dumps(lr), "finetune.size": json.dumps(size)}

    groups = dict(_contrast_groups({"full": flat("full", 3e-4), "lora": flat("lora", 1e-3),
                                    "lora-same-lr": flat("lora", 3e-4), "bigger": flat("full", 3e-4, 200)}))
    assert groups["finetune.method+finetune.lr"] == {"full": "method full at lr 0.0003",
                                                     "lora": "method lora at lr 0.001",
                                                     "lora-same-lr": "method lora at lr 0.0003"}
    assert groups["finetune.method"] == {"full": "full", "lora-same-lr": "lora"}  # one key: not tied
    assert groups["finetune.lr"] == {"lora": 0.001, "lora-same-lr": 0.0003}
    assert groups["finetune.size"] == {"full": 100, "bigger": 200}
