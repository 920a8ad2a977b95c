"""Language identification for the off-target rate.

Real languages go through py3langid (its model ships inside the wheel), restricted to the study's
languages; languages of a confusable group (hr/sr/bs, nb/nn/da, ms/id) count as on-target for each
other, and outputs too short to judge are left out. When the study has languages py3langid does not
know (the synthetic world, many low-resource ones), the identifier is trained on the corpus itself:
a multinomial naive Bayes classifier over character 1-4-grams (scikit-learn), kept in the cache
under a hash of the sentences it learned from, since every trial process of a study needs the
same one. Either way its accuracy on held-out sentences is recorded with the results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from py3langid.langid import MODEL_FILE, LanguageIdentifier
from safetensors.numpy import load_file, save_file

from mtforget.cache import cached_dir, fingerprint
from mtforget.data.corpus import Segment

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import HashingVectorizer


CONFUSABLE = ({"hr", "sr", "bs"}, {"nb", "nn", "no", "da"}, {"ms", "id"})


def _base(code: str) -> str:
    return code.split("_")[0].lower()


def same_language(predicted: str | None, target: str) -> bool:
    """Whether an identified language counts as the target (confusable groups count as one)."""
    if predicted is None:
        return False
    p, t = _base(predicted), _base(target)
    return p == t or any(p in group and t in group for group in CONFUSABLE)


class _Scoring:
    """What both identifiers share: off-target rate and held-out accuracy from ``predict``."""

    languages: list[str]
    min_chars: int = 0  # shorter non-empty outputs abstain (are left out of the rate)

    def predict(self, texts: list[str]) -> list[str | None]:  # pragma: no cover - overridden
        raise NotImplementedError

    def off_target_flags(self, texts: list[str], target: str) -> list[float | None]:
        """Per output: 1.0 off-target, 0.0 on target, None abstained (too short to judge).

        Empty outputs count as off-target.
        """
        return [None if t.strip() and len(t.strip()) < self.min_chars else float(not same_language(p, target))
                for t, p in zip(texts, self.predict(texts))]

    def off_target(self, texts: list[str], target: str) -> float:
        """Fraction of judged outputs not in ``target`` (see :meth:`off_target_flags`)."""
        return off_target_rate(self.off_target_flags(texts, target))

    def accuracy(self, segments: tuple[Segment, ...] | list[Segment]) -> float:
        """Fraction of held-out sentences (every language of every segment) identified correctly."""
        texts, labels = [], []
        for seg in segments:
            for lang, text in seg.translation.items():
                if lang in self.languages and len(text) >= self.min_chars:
                    texts.append(text)
                    labels.append(lang)
        predicted = self.predict(texts)
        return sum(same_language(p, g) for p, g in zip(predicted, labels)) / max(len(labels), 1)


@dataclass
class PyLangIdentifier(_Scoring):
    """py3langid restricted to the study's languages (study codes map to their base subtag)."""

    languages: list[str]
    identifier: LanguageIdentifier
    min_chars: int = 12
    name: str = "py3langid"

    @classmethod
    def create(cls, languages: list[str]) -> PyLangIdentifier | None:
        """An identifier that only chooses among ``languages``; None if py3langid lacks one of them."""
        identifier = LanguageIdentifier.from_model_file(MODEL_FILE)  # slow to load: callers keep it
        if not all(_base(lang) in identifier.nb_classes for lang in languages):
            return None
        identifier.set_languages(sorted({_base(lang) for lang in languages}))
        return cls(list(languages), identifier)

    def predict(self, texts: list[str]) -> list[str | None]:
        """The study code whose base language py3langid picks; ``None`` for an empty text."""
        by_base = {_base(lang): lang for lang in self.languages}
        return [by_base.get(self.identifier.classify(t)[0]) if t.strip() else None for t in texts]


# The character n-grams the corpus identifier counts; part of its cache key.
NGRAMS = {"analyzer": "char_wb", "ngram_range": (1, 4), "n_features": 2**18, "lowercase": True}
SMOOTHING = 0.01  # naive Bayes' additive smoothing (alpha)


def _vectorizer() -> HashingVectorizer:
    # Imported here: scikit-learn brings SciPy and pandas into memory, which a process that
    # identifies real languages, or only pre-trains a base, does not need. Hashing keeps the model
    # a fixed size whatever the number of languages and scripts.
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(**NGRAMS, alternate_sign=False, norm=None)


@dataclass
class CorpusLanguageIdentifier(_Scoring):
    """A character n-gram classifier over the languages of a corpus: multinomial naive Bayes,
    held as its fitted log-probabilities (classes × hashed n-gram features) and log-priors."""

    languages: list[str]
    classes: list[str]
    log_prior: np.ndarray
    log_likelihood: np.ndarray
    name: str = "corpus character n-grams"

    @classmethod
    def train(cls, segments: tuple[Segment, ...] | list[Segment], languages: list[str],
              max_per_language: int = 2000) -> CorpusLanguageIdentifier:
        """Fit on up to ``max_per_language`` sentences of each language (in corpus order), or load
        the identifier fitted on the same sentences from the cache."""
        import sklearn

        texts: list[str] = []
        labels: list[str] = []
        counts = dict.fromkeys(languages, 0)
        for seg in segments:
            for lang, text in seg.translation.items():
                if lang in counts and counts[lang] < max_per_language:
                    texts.append(text)
                    labels.append(lang)
                    counts[lang] += 1
        key = fingerprint([texts, labels, NGRAMS, SMOOTHING, sklearn.__version__])
        directory = cached_dir("identifiers", key, lambda out: cls._fit(texts, labels, languages).save(out))
        return cls.load(directory, languages)

    @classmethod
    def _fit(cls, texts: list[str], labels: list[str], languages: list[str]) -> CorpusLanguageIdentifier:
        from sklearn.naive_bayes import MultinomialNB

        classifier = MultinomialNB(alpha=SMOOTHING).fit(_vectorizer().transform(texts), labels)
        return cls(list(languages), [str(c) for c in classifier.classes_], classifier.class_log_prior_,
                   classifier.feature_log_prob_)

    def save(self, directory: Path) -> None:
        """Write the fitted model to ``directory`` (safetensors and its class names)."""
        save_file({"log_prior": self.log_prior, "log_likelihood": self.log_likelihood},
                  str(directory / "identifier.safetensors"))
        (directory / "classes.json").write_text(json.dumps(self.classes), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, languages: list[str]) -> CorpusLanguageIdentifier:
        """The identifier ``save`` wrote to ``directory``."""
        arrays = load_file(str(directory / "identifier.safetensors"))
        classes = json.loads((directory / "classes.json").read_text(encoding="utf-8"))
        return cls(list(languages), classes, arrays["log_prior"], arrays["log_likelihood"])

    def predict(self, texts: list[str]) -> list[str | None]:
        """The most likely language of each text; ``None`` for an empty text."""
        out: list[str | None] = [None] * len(texts)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        if idx:
            # naive Bayes' joint log-likelihood of each class, as scikit-learn's predict scores it
            scores = _vectorizer().transform([texts[i] for i in idx]) @ self.log_likelihood.T + self.log_prior
            for i, best in zip(idx, np.argmax(scores, axis=1)):
                out[i] = self.classes[best]
        return out


def off_target_rate(flags: list[float | None]) -> float:
    """Mean of the judged flags (0 when every output abstained)."""
    judged = [f for f in flags if f is not None]
    return sum(judged) / len(judged) if judged else 0.0


def make_identifier(segments: tuple[Segment, ...] | list[Segment], languages: list[str]) -> _Scoring:
    """py3langid when it knows every study language, else a classifier trained on ``segments``."""
    return PyLangIdentifier.create(languages) or CorpusLanguageIdentifier.train(segments, languages)
