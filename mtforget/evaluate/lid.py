"""Language identification for the off-target rate.

Real languages go through py3langid (its model ships inside the wheel), restricted to the study's
languages; languages of a confusable group (hr/sr/bs, nb/nn/da, ms/id) count as on-target for each
other, and outputs too short to judge are left out. When the study has languages py3langid does not
know (the synthetic world, many low-resource ones), the identifier is trained on the corpus itself:
a multinomial naive Bayes classifier over character 1-4-grams (scikit-learn). Either way its
accuracy on held-out sentences is recorded with the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from py3langid.langid import MODEL_FILE, LanguageIdentifier

from mtforget.data.corpus import Segment

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.naive_bayes import MultinomialNB


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


@dataclass
class CorpusLanguageIdentifier(_Scoring):
    """A character n-gram classifier over the languages of a corpus."""

    languages: list[str]
    vectorizer: HashingVectorizer
    classifier: MultinomialNB
    name: str = "corpus character n-grams"

    @classmethod
    def train(cls, segments: tuple[Segment, ...] | list[Segment], languages: list[str],
              max_per_language: int = 2000) -> CorpusLanguageIdentifier:
        """Fit on up to ``max_per_language`` sentences of each language (in corpus order)."""
        # Imported here: scikit-learn brings SciPy and pandas into memory, which a process that
        # identifies real languages, or only pre-trains a base, does not need.
        from sklearn.feature_extraction.text import HashingVectorizer
        from sklearn.naive_bayes import MultinomialNB

        texts: list[str] = []
        labels: list[str] = []
        counts = dict.fromkeys(languages, 0)
        for seg in segments:
            for lang, text in seg.translation.items():
                if lang in counts and counts[lang] < max_per_language:
                    texts.append(text)
                    labels.append(lang)
                    counts[lang] += 1
        # Hashing keeps the model a fixed size whatever the number of languages and scripts.
        vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(1, 4), n_features=2**18,
                                       alternate_sign=False, norm=None, lowercase=True)
        classifier = MultinomialNB(alpha=0.01)
        classifier.fit(vectorizer.transform(texts), labels)
        return cls(list(languages), vectorizer, classifier)

    def predict(self, texts: list[str]) -> list[str | None]:
        """The most likely language of each text; ``None`` for an empty text."""
        out: list[str | None] = [None] * len(texts)
        idx = [i for i, t in enumerate(texts) if t.strip()]
        if idx:
            for i, lang in zip(idx, self.classifier.predict(self.vectorizer.transform([texts[i] for i in idx]))):
                out[i] = str(lang)
        return out


def off_target_rate(flags: list[float | None]) -> float:
    """Mean of the judged flags (0 when every output abstained)."""
    judged = [f for f in flags if f is not None]
    return sum(judged) / len(judged) if judged else 0.0


def make_identifier(segments: tuple[Segment, ...] | list[Segment], languages: list[str]) -> _Scoring:
    """py3langid when it knows every study language, else a classifier trained on ``segments``."""
    return PyLangIdentifier.create(languages) or CorpusLanguageIdentifier.train(segments, languages)
