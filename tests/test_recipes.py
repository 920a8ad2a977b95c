"""The paper's study files (examples/paper/): each one validates as written, follows the authors'
recipe, and runs end to end offline on tiny stand-ins of the same model families and data formats.

The stand-ins replace what only a hub or a GPU can give: random checkpoints with the families'
language controls (NLLB codes, M2M-100 ``__xx__`` tokens, a chat template or none), a FLORES-layout
folder with the paper's nine languages, and ALMA-like bitext (a ``translation`` column read through
the ``hf`` format, and the zh-en file that examples/paper/prepare_alma_zh.py writes). Synthetic
languages stand in for the real ones under their codes.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (LlamaConfig, LlamaForCausalLM, M2M100Config, M2M100ForConditionalGeneration, Qwen2Config,
                          Qwen2ForCausalLM)

from mtforget.cli import main
from mtforget.data.synthetic import SyntheticWorld
from mtforget.models.tokenizer import train_tokenizer
from mtforget.study.config import grid_combinations, load_study
from tests.test_families import CHATML

PAPER = Path(__file__).resolve().parents[1] / "examples" / "paper"
ACCELERATE = PAPER / "accelerate_multi_gpu.yaml"
FSDP = PAPER / "accelerate_fsdp.yaml"
RECIPES = sorted(p for p in PAPER.glob("*.yaml") if not p.name.startswith("accelerate_"))

# The paper's languages under their FLORES-200 file names; fine-tuned on the first five with English.
FLORES = {"en": "eng_Latn", "cs": "ces_Latn", "de": "deu_Latn", "is": "isl_Latn", "ru": "rus_Cyrl",
          "zh_Hans": "zho_Hans", "he": "heb_Hebr", "ja": "jpn_Jpan", "uk": "ukr_Cyrl"}
FINETUNED = ["cs", "de", "is", "ru", "zh_Hans"]
UNSEEN = ["he", "ja", "uk"]
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Each hub model of the recipes and the local stand-in of its family that replaces it in the runs.
STAND_INS = {
    "facebook/nllb-200-distilled-600M": "nllb",
    "facebook/m2m100_418M": "m2m",
    "Qwen/Qwen2.5-0.5B": "qwen-plain",
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen-chat",
    "Qwen/Qwen2.5-7B-Instruct": "qwen-chat",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-chat",
}
ALMA = "haoranxu/ALMA-Human-Parallel"


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _prepare_alma_zh():
    spec = importlib.util.spec_from_file_location("prepare_alma_zh", PAPER / "prepare_alma_zh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# The files as written


def test_the_recipes_are_all_there():
    assert {p.name for p in RECIPES} >= {"nllb-600m.yaml", "m2m100-418m.yaml", "qwen2.5-0.5b.yaml",
                                         "qwen2.5-7b-instruct.yaml", "llama3-8b-instruct.yaml",
                                         "llama3-8b-instruct-alignment.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates_and_follows_the_authors_recipe(recipe):
    study = load_study(recipe)  # the file as written, its own grid included
    trials = grid_combinations(study.grid)
    assert trials, "every recipe is a grid of conditions"
    models = {study.model.path} | {t.get("model.path", study.model.path) for t in trials}
    assert models <= set(STAND_INS), f"{recipe.name}: a model without a stand-in in this test: {models}"

    # Evaluation: FLORES-200 over the fine-tuned languages, English and three unseen ones.
    assert study.corpus.format == "flores" and "devtest" in study.corpus.flores_splits
    assert Path(study.corpus.path).name == "flores200"
    assert set(study.corpus.languages) == set(FLORES)
    assert study.eval.max_new_tokens >= 200  # FLORES sentences are long; 64 tokens would cut them

    # Fine-tuning: ALMA's human-written pairs, both ways, one source per language.
    ft = study.finetune
    expected = {f"{x}-en" for x in FINETUNED} | {f"en-{x}" for x in FINETUNED}
    assert set(ft.directions) == expected
    pairs = {s.hf_config or Path(s.path).stem for s in ft.data}
    assert pairs == {f"{x}-en" for x in ("cs", "de", "is", "ru", "zh")}
    assert all(s.path == ALMA for s in ft.data if s.format == "hf")
    sizes = {t.get("finetune.size", ft.size) for t in trials}
    # An even spread over 10 directions: ALMA's 2,009 is-en pairs bound every size.
    assert max(sizes) <= 9700

    # The authors' recipe, for every trial of the grid.
    for chosen in trials:
        method = chosen.get("finetune.method", ft.method)
        lr = chosen.get("finetune.lr", ft.lr)
        if method == "lora":
            assert lr == 5e-4
            assert (ft.lora.rank, ft.lora.alpha, ft.lora.dropout) == (8, 16, 0.1)
            assert ft.lora.target_modules == LORA_MODULES
        else:
            assert lr < 5e-4  # full fine-tuning starts lower than the LoRA rate
    assert ft.batch_size * ft.grad_accumulation == 128
    assert (ft.schedule, ft.warmup_ratio, ft.eval_every, ft.patience, ft.epochs) == ("inverse_sqrt", 0.03, 200, 5, 5)
    assert ft.max_length >= 200
    big = any(name in m for m in models for name in ("7B", "8B"))
    assert study.model.gradient_checkpointing is big


def test_some_recipe_has_an_alignment_contrast():
    found = []
    for recipe in RECIPES:
        study = load_study(recipe)
        values = {t.get("finetune.alignment.enabled", study.finetune.alignment.enabled)
                  for t in grid_combinations(study.grid)}
        if values == {False, True}:
            found.append(recipe.name)
            # Alignment pairs come from the benchmark's training split: it must have one.
            assert "dev" in study.corpus.flores_splits
    assert found


def test_accelerate_config_is_multi_gpu_ddp_in_bf16():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE))
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "bf16"
    assert config.num_processes == 8 and config.num_machines == 1 and not config.use_cpu


def test_fsdp_config_is_fsdp2_in_bf16_with_settings_the_loop_honours():
    from accelerate.commands.config.config_args import load_config_from_file

    from mtforget.train.distributed import FsdpSettings, fsdp_from_launch

    config = load_config_from_file(str(FSDP))
    assert config.distributed_type == "FSDP" and config.mixed_precision == "bf16" and config.num_processes == 8
    fsdp = config.fsdp_config
    # What accelerate launch puts in the environment for these keys (accelerate.utils.launch).
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(fsdp["fsdp_version"]),
           **{f"FSDP_{key.removeprefix('fsdp_').upper()}": str(value).lower() if isinstance(value, bool) else str(value)
              for key, value in fsdp.items() if key != "fsdp_version"}}
    assert fsdp_from_launch(env) == FsdpSettings(reshard_after_forward=True)


# Parameters of each recipe's hub model (from its model card), for the memory check below.
PARAMETERS = {"facebook/nllb-200-distilled-600M": 0.62e9, "facebook/m2m100_418M": 0.48e9,
              "Qwen/Qwen2.5-0.5B": 0.49e9, "Qwen/Qwen2.5-0.5B-Instruct": 0.49e9,
              "Qwen/Qwen2.5-7B-Instruct": 7.62e9, "meta-llama/Meta-Llama-3-8B-Instruct": 8.03e9}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_each_recipe_is_launched_where_its_training_state_fits_an_80_gb_gpu(recipe):
    """The command in a recipe's header runs it on one GPU, under DDP or under FSDP; the state of
    its precision (the memory table in docs/explanation/precision-and-memory.md) must leave room for activations on an 80 GB GPU."""
    from accelerate.commands.config.config_args import load_config_from_file

    from mtforget.train.precision import STATE_BYTES

    header = recipe.read_text(encoding="utf-8")
    launch = next((PAPER / line.split("examples/paper/")[1].split()[0]
                   for line in header.splitlines() if "--config_file" in line), None)
    config = load_config_from_file(str(launch)) if launch else None
    shards = config.num_processes if config and config.distributed_type == "FSDP" else 1
    study = load_study(recipe)
    for trial in grid_combinations(study.grid) or [{}]:
        method = trial.get("finetune.method", study.finetune.method)
        params = PARAMETERS[trial.get("model.path", study.model.path)]
        precision = "fp32" if study.finetune.precision == "auto" else study.finetune.precision
        # LoRA: frozen weights in bfloat16 (float32 when FSDP shards them); full: the precision's state.
        per_param = (4 if shards > 1 else 2) if method == "lora" else STATE_BYTES[precision]
        if shards == 1 and config is not None and method == "full":
            per_param += 4 if precision == "fp32" else 2  # DDP's gradient buckets: one more copy
        assert params * per_param / shards < 64 * 2**30, (recipe.name, method)


# ---------------------------------------------------------------------------------------------
# The files run, on stand-ins


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A FLORES-layout folder (dev and devtest) and ALMA-like bitext for the paper's languages.

    Like ALMA, the bitext also holds the benchmark's own sentences, which the contamination guard
    must drop.
    """
    root = tmp_path_factory.mktemp("paper-data")
    world = SyntheticWorld(seed=0, n_languages=len(FLORES))
    codes = dict(zip((lang.code for lang in world.languages), FLORES))  # synthetic code -> study code
    records = [{code: r["translation"][syn] for syn, code in codes.items()} for r in world.corpus(420, seed=0)]
    splits = {"devtest": records[:40], "dev": records[40:70]}
    for split, rows in splits.items():
        (root / "flores200" / split).mkdir(parents=True)
        for lang, code in FLORES.items():
            (root / "flores200" / split / f"{code}.{split}").write_text("".join(r[lang] + "\n" for r in rows),
                                                                        encoding="utf-8")
    bitext = records[70:] + splits["devtest"] + splits["dev"]
    # The hub dataset's configs as ALMA lays them out: a 'translation' column of {xx, en}, with
    # Chinese under "zh".
    (root / "alma" / "hub").mkdir(parents=True)
    for lang, code in (("cs", "cs"), ("de", "de"), ("is", "is"), ("ru", "ru"), ("zh", "zh_Hans")):
        with (root / "alma" / "hub" / f"{lang}-en.jsonl").open("w", encoding="utf-8") as f:
            for r in bitext:
                f.write(json.dumps({"translation": {lang: r[code], "en": r["en"]}}, ensure_ascii=False) + "\n")
    # The local file the preparation script writes from ALMA's zh-en rows.
    alma_zh = [json.loads(line) for line in (root / "alma" / "hub" / "zh-en.jsonl").read_text(encoding="utf-8").splitlines()]
    assert _prepare_alma_zh().write_pairs(alma_zh, root / "alma" / "zh-en.jsonl") == len(bitext)
    return root


def _stand_in_source(source, data: Path) -> dict:
    """The local stand-in of one of a recipe's ``finetune.data`` sources, in the same format."""
    if source.format == "hf" and source.path == ALMA:
        return {"path": str(data / "alma" / "hub" / f"{source.hf_config}.jsonl"), "format": "hf"}
    return {"path": str(data / "alma" / Path(source.path).name), "format": source.format}


def test_alma_zh_is_renamed_to_the_flores_code(data):
    rows = [json.loads(line) for line in (data / "alma" / "zh-en.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {tuple(sorted(r["translation"])) for r in rows} == {("en", "zh_Hans")}
    assert len({r["id"] for r in rows}) == len(rows)


def _texts():
    world = SyntheticWorld(seed=0, n_languages=len(FLORES))
    texts = [t for r in world.corpus(400, seed=0) for t in r["translation"].values()]
    # Real tokenizers cover instruction text and newlines; so must these stand-ins.
    return texts + ["Translate the following sentence from Icelandic to Hebrew.\nCzech: x\nJapanese: "
                    "German Russian Chinese Ukrainian English system user assistant"] * 5


def _build(family: str, path: Path) -> str:
    """A tiny random checkpoint of ``family`` with that family's language control."""
    torch.manual_seed(0)
    texts = _texts()
    small = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1100)
    causal = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=1100, tie_word_embeddings=True)
    if family == "nllb":  # every FLORES code of the study, as NLLB's tokenizer has them
        tok = train_tokenizer(texts, [], 500, extra_special_tokens=tuple(FLORES.values()))
    elif family == "m2m":  # M2M-100's tokens; its Chinese is __zh__
        tok = train_tokenizer(texts, ["en", "cs", "de", "is", "ru", "zh", "he", "ja", "uk"], 500)
    else:
        tok = train_tokenizer(texts, [], 500, extra_special_tokens=("<|im_start|>", "<|im_end|>"))
        tok.chat_template = CHATML if family.endswith("-chat") else None
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    if family in ("nllb", "m2m"):
        model = M2M100ForConditionalGeneration(M2M100Config(vocab_size=len(tok), decoder_start_token_id=tok.eos_token_id,
                                                            **small, **ids))
    elif family.startswith("qwen"):
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), **causal, **ids))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **causal, **ids))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("stand-ins")
    return {family: _build(family, root / family) for family in sorted(set(STAND_INS.values()))}


def _expected_categories(languages: list[str], directions: list[str]) -> set[str]:
    trained = {tuple(d.split("-")) for d in directions}
    seen = {lang for d in trained for lang in d}
    found = set()
    for s in languages:
        for t in languages:
            if s == t:
                continue
            if (s, t) in trained:
                found.add("supervised")
            elif s in seen and t in seen:
                found.add("zero_shot_seen")
            else:
                found.add({(False, True): "unseen_source", (True, False): "unseen_target",
                           (False, False): "unseen_both"}[(s in seen, t in seen)])
    return found


def _grid_models(raw: dict) -> list[list[str]]:
    """The ``model.path`` lists of a recipe's grid parts that name models."""
    return [part["model.path"] for part in ([raw["grid"]] if isinstance(raw["grid"], dict) else raw["grid"])
            if "model.path" in part]


def _stand_in_args(recipe: Path, data: Path, checkpoints: dict, out: Path) -> list[str]:
    """``mtforget run`` of ``recipe`` at tiny size on the stand-ins: its models, data and sizes
    overridden with ``--set``, the file itself as it is."""
    raw = _raw(recipe)
    study = load_study(recipe)
    overrides = [f"corpus.path={data / 'flores200'}", "corpus.test_size=24", "corpus.dev_size=4",
                 "finetune.size=40", "finetune.dev_size=10", "finetune.epochs=1", "finetune.batch_size=8",
                 "finetune.grad_accumulation=2", "finetune.eval_every=2",
                 "finetune.alignment.pairs_per_language=20",
                 "eval.max_sentences=3", "eval.max_new_tokens=6", "eval.representation_sentences=6",
                 "eval.bootstrap_resamples=100", "eval.paired_resamples=100",
                 "eval.base_gate.include_flagged=true"]  # random stand-ins cannot translate
    # The recipe's own fine-tuning sources, each replaced by the stand-in of the same pair and format.
    sources = [_stand_in_source(s, data) for s in study.finetune.data]
    overrides.append("finetune.data=" + json.dumps(sources))
    # Every model of the recipe, replaced by its family's stand-in.
    grid_models = _grid_models(raw)
    if grid_models:
        overrides.append("grid.model.path=" + json.dumps([checkpoints[STAND_INS[m]] for m in grid_models[0]]))
    else:
        overrides.append(f"model.path={checkpoints[STAND_INS[study.model.path]]}")
    args = ["run", str(recipe), "--out", str(out), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_end_to_end_on_stand_ins(recipe, data, checkpoints, tmp_path):
    study = load_study(recipe)
    out = tmp_path / "out"
    assert main(_stand_in_args(recipe, data, checkpoints, out)) == 0

    # One trial per condition of the recipe's grid, its sizes folded into the one size set here.
    n_trials = len({tuple((k, str(v)) for k, v in t.items() if k != "finetune.size")
                    for t in grid_combinations(study.grid)})
    with (out / "results.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    languages = list(FLORES)
    assert {r["category"] for r in rows} == _expected_categories(languages, study.finetune.directions)
    assert len({(r["src"], r["tgt"]) for r in rows}) == len(languages) * (len(languages) - 1)
    assert len(rows) == n_trials * 72 * 5  # trials x directions x (chrf, chrf++, bleu, off_target, chrf_on_target)
    assert {r["finetune_size"] for r in rows} == {"40"}

    infos = [json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json")]
    assert len(infos) == n_trials
    for info in infos:
        assert info["finetune_examples"] == 40 and info["missing_directions"] == []
        # The stand-in bitext holds the benchmark's test and dev sentences, as ALMA holds FLORES's.
        assert info["overlap_dropped"] > 0
        assert info["effective_batch_size"] == 16
    methods = {t.get("finetune.method", study.finetune.method) for t in grid_combinations(study.grid)}
    assert {i["method"] for i in infos} == methods
    for info in infos:
        if info["method"] == "lora":
            assert 0 < info["trainable_parameters"] < info["parameters"]
    controls = {i["language_control"] for i in infos}
    grid_models = _grid_models(_raw(recipe))
    family = {STAND_INS[m] for m in ([study.model.path] if not grid_models else grid_models[0])}
    if family == {"nllb"}:
        assert controls == {"nllb"} and infos[0]["added_language_tokens"] == []
    elif family == {"m2m"}:
        # M2M-100 writes Simplified Chinese __zh__: the study's zh_Hans uses it, nothing is added.
        assert controls == {"m2m"} and infos[0]["added_language_tokens"] == []
    elif family == {"qwen-plain", "qwen-chat"}:
        assert controls == {"plain prompt", "chat template"}
    else:
        assert controls == {"chat template"}
    aligned = [i for i in infos if "alignment" in i["mitigations"]]
    if any(t.get("finetune.alignment.enabled") for t in grid_combinations(study.grid)):
        assert len(aligned) == 1 and len(infos) == 2


LAUNCHED = [r for r in RECIPES if "--config_file" in r.read_text(encoding="utf-8")]


@pytest.mark.parametrize("recipe", LAUNCHED, ids=lambda p: p.stem)
def test_launched_recipe_runs_under_its_accelerate_config_on_two_cpu_processes(recipe, data, checkpoints, tmp_path):
    """The launch in a recipe's header (its Accelerate config: FSDP2 or DDP, bf16), with two CPU
    processes over gloo instead of eight GPUs: every trial done, under the sharding it names."""
    import os
    import shutil
    import subprocess
    import sys

    from accelerate.commands.config.config_args import load_config_from_file

    config = next(PAPER / line.split("examples/paper/")[1].split()[0]
                  for line in recipe.read_text(encoding="utf-8").splitlines() if "--config_file" in line)
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    out = tmp_path / "out"
    done = subprocess.run([accelerate, "launch", "--config_file", str(config), "--num_processes", "2",
                           "-m", "mtforget.cli", *_stand_in_args(recipe, data, checkpoints, out)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    infos = [json.loads(p.read_text())["info"] for p in (out / "trials").glob("*/result.json")]
    sharding = "fsdp2" if load_config_from_file(str(config)).distributed_type == "FSDP" else "ddp"
    assert infos and all(i["train"]["processes"] == 2 and i["train"]["sharding"] == sharding for i in infos)
