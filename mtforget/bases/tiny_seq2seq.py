"""Built-in tiny encoder-decoder bases, trained from scratch on a corpus and cached.

A tiny base is an M2M-100-class model (Hugging Face ``M2M100ForConditionalGeneration``) with a
BPE tokenizer trained on the corpus and one language token per language, pre-trained on a random
mix of every direction. It plays the part of the multilingual foundation model: the study then
fine-tunes it on a few directions and measures what the others lose.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import transformers
from transformers import M2M100Config, M2M100ForConditionalGeneration

from mtforget.bases.pretraining import PIECES, pretraining_precision
from mtforget.bases.specs import RECIPE_VERSION, TINY_SPECS, TinySpec
from mtforget.cache import cached_dir, fingerprint
from mtforget.data.corpus import Corpus
from mtforget.data.splits import Splits, sample_all_directions
from mtforget.models.language import LanguageTokens
from mtforget.models.loading import count_parameters
from mtforget.models.tokenizer import train_tokenizer
from mtforget.train.loop import TrainSettings, train


def build_model(spec: TinySpec, tokenizer, attention: str = "sdpa") -> M2M100ForConditionalGeneration:
    """A randomly initialised M2M-100 model sized by ``spec`` for ``tokenizer`` (``attention``:
    a transformers attention implementation)."""
    config = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=spec.d_model,
        encoder_layers=spec.layers,
        decoder_layers=spec.layers,
        encoder_attention_heads=spec.heads,
        decoder_attention_heads=spec.heads,
        encoder_ffn_dim=spec.ffn_dim,
        decoder_ffn_dim=spec.ffn_dim,
        max_position_embeddings=256,
        dropout=spec.dropout,
        attention_dropout=0.0,
        activation_dropout=0.0,
        # M2M100's default layerdrop (0.05) can skip every layer of a 2-layer tiny model.
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        scale_embedding=True,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        attn_implementation=attention,
    )
    return M2M100ForConditionalGeneration(config)


def tiny_seq2seq_base(name: str, corpus: Corpus, splits: Splits, seed: int, steps: int | None = None,
                      progress: bool = True, mix: dict[str, float] | None = None) -> Path:
    """The directory of the encoder-decoder tiny base ``name`` (a :data:`TINY_SPECS` size) trained on
    ``corpus`` (built and cached if missing).

    The cache key covers the spec, the training examples (corpus content and split, the language
    ``mix`` of :func:`~mtforget.data.splits.sample_all_directions`), the seed and the library
    versions that could change the weights.
    """
    spec = TINY_SPECS[name]
    steps = steps or spec.steps
    precision = pretraining_precision()
    train_ids = fingerprint([s.id for s in splits.train])
    key = fingerprint(
        {
            "recipe": RECIPE_VERSION,
            "spec": asdict(spec),
            "steps": steps,
            "corpus": corpus.fingerprint(),
            "train_ids": train_ids,
            "languages": corpus.languages,
            "seed": seed,
            "precision": asdict(precision),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            # Only an uneven mix enters the key, so the even mix keeps the keys it always had.
            **({"mix": mix} if mix else {}),
        }
    )

    def build(out: Path) -> None:
        languages = list(corpus.languages)
        texts = (text for seg in splits.train for text in seg.translation.values())
        tokenizer = train_tokenizer(texts, languages, spec.vocab_size)
        torch.manual_seed(seed)
        model = build_model(spec, tokenizer, precision.attention)
        examples = sample_all_directions(splits.train, languages, steps * spec.batch_size, seed, mix)
        # Random (not length-grouped) batches: a base pre-trained on length-grouped batches for the
        # same steps stayed before its jump in quality (tiny:base: mean chrF 22.7 against 96.0).
        settings = TrainSettings(
            lr=spec.lr, batch_size=spec.batch_size, max_steps=steps, warmup_ratio=0.06,
            schedule="linear", seed=seed, log_every=100, group_by_length=False, micro_batches=PIECES,
            bf16=precision.bf16, pad_to_multiple_of=precision.pad_to_multiple_of,
        )
        outcome = train(model, LanguageTokens(tokenizer), examples, settings,
                        desc=f"pre-train tiny:{name}", progress=progress)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        meta = {
            "tiny": name,
            "spec": asdict(spec),
            "steps": outcome.steps,
            "seed": seed,
            "precision": precision.name,
            "pad_to_multiple_of": precision.pad_to_multiple_of,
            "parameters": count_parameters(model),
            "train_seconds": round(outcome.seconds, 2),
            "final_train_loss": outcome.train_loss,
            "languages": languages,
            "corpus": corpus.fingerprint(),
            **({"pretrain_mix": mix} if mix else {}),
        }
        (out / "mtforget_base.json").write_text(json.dumps(meta, indent=2))

    return cached_dir("bases", f"tiny-{name}-{key}", build)
