"""Language identification for the off-target rate.

The synthetic languages (and many low-resource ones) are unknown to off-the-shelf identifiers, so
the identifier is trained on the corpus itself: a multinomial naive Bayes classifier over
character 1-4-grams (scikit-learn). Its accuracy on held-out sentences is recorded with results.
"""

from __future__ import annotations

from dataclasses import dataclass

from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.naive_bayes import MultinomialNB

from mtforget.data.corpus import Segment


@dataclass
class CorpusLanguageIdentifier:
    """A character n-gram classifier over the languages of a corpus."""

    languages: list[str]
    vectorizer: HashingVectorizer
    classifier: MultinomialNB

    @classmethod
    def train(cls, segments: tuple[Segment, ...] | list[Segment], languages: list[str],
              max_per_language: int = 2000) -> CorpusLanguageIdentifier:
        """Fit on up to ``max_per_language`` sentences of each language (in corpus order)."""
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

    def accuracy(self, segments: tuple[Segment, ...] | list[Segment]) -> float:
        """Fraction of held-out sentences (every language of every segment) identified correctly."""
        texts, labels = [], []
        for seg in segments:
            for lang, text in seg.translation.items():
                if lang in self.languages:
                    texts.append(text)
                    labels.append(lang)
        predicted = self.predict(texts)
        return sum(p == g for p, g in zip(predicted, labels)) / max(len(labels), 1)


def off_target_rate(identified: list[str | None], target: str) -> float:
    """Fraction of outputs not identified as ``target`` (empty outputs count as off-target)."""
    return sum(lang != target for lang in identified) / max(len(identified), 1)
