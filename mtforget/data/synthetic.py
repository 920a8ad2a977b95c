"""A synthetic multilingual world: one shared meaning, many artificial languages.

Every segment of the corpus starts as a small structured *meaning* (a
:class:`Meaning`): one or two clauses, each a subject noun phrase, a verb in
the present or past tense, an optional object and an optional location
("near the river"). Noun phrases carry a determiner (definite, indefinite or a
numeral 1-4), an optional adjective and a noun. There are 53 content concepts
(20 nouns, 12 adjectives, 12 verbs, 4 numerals, 5 adpositions) plus "and" and
a handful of grammatical morphemes (definite, indefinite, plural, accusative,
past, plural agreement), so the world is small enough for a tiny transformer
to learn from scratch in minutes, yet has far more than 10^5 distinct meanings.

Each meaning is realised deterministically in every language:

* ``en`` is the pivot: real English words with regular English morphology
  ("the big dog saw two red cats near the river").
* ``xa``, ``xb``, ... are artificial languages grouped into families of three
  (up to four families; a fourth member each when more than 13 languages are
  asked for). A family has a phoneme inventory and a proto-root for every
  concept; each member derives its words from the proto-roots by regular sound
  changes (consonant and vowel shifts, intervocalic voicing, loss of final
  vowels, a noun or verb affix), so relatives have visibly related words while
  different families have unrelated ones.
* Grammar differs per language: word order, adjective and numeral position,
  plural marking (suffix, prefix, reduplication; optionally dropped after
  numerals), object case, past tense as affix or particle, definiteness as an
  article before/after the noun phrase or as a suffix, pre- or postpositions.
  Feature values are dealt from shuffled decks so that every value occurs
  once enough languages exist (the default world has six word orders).
* Most languages are written in Latin letters; some are written in Cyrillic or
  Greek letters through a one-to-one transliteration of their Latin form.

Determinism: all randomness comes from ``random.Random`` instances seeded with
strings derived from the world seed (string seeds are hashed with SHA-512 by
``random``, unaffected by ``PYTHONHASHSEED``), consumed in a fixed order; no
set or hash order is ever iterated. The properties of language ``xa`` depend
only on the world seed, not on how many languages were asked for. Within a
language a meaning has exactly one realisation, and definiteness, number,
tense and roles are always marked, so every language is as expressive as
English and translation between any two languages is well defined. Where
sound changes or affixation would make two different word forms coincide
(hill+DEF = tree+PL+DEF), a word is lengthened until all forms are distinct,
so distinct meanings also get distinct sentences in every language.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ADJECTIVES",
    "ADPOSITIONS",
    "CONCEPTS",
    "DETERMINERS",
    "INTRANSITIVE_VERBS",
    "MAX_LANGUAGES",
    "MAX_SENTENCE_WORDS",
    "NOUNS",
    "NUMERALS",
    "TRANSITIVE_VERBS",
    "VERBS",
    "Clause",
    "Meaning",
    "NounPhrase",
    "SyntheticLanguage",
    "SyntheticWorld",
    "write_jsonl",
]

# --------------------------------------------------------------------------
# Concepts. Keys are the English lemmas; tuples fix the order in which roots
# are drawn, which is what makes lexicons reproducible.
# --------------------------------------------------------------------------

NOUNS: tuple[str, ...] = (
    "dog", "cat", "bird", "horse", "goat", "frog", "boy", "girl", "king", "farmer",
    "tree", "house", "river", "stone", "boat", "apple", "cake", "book", "hill", "box",
)
ADJECTIVES: tuple[str, ...] = (
    "big", "small", "tall", "old", "young", "happy",
    "red", "blue", "green", "black", "white", "yellow",
)
TRANSITIVE_VERBS: tuple[str, ...] = (
    "see", "eat", "find", "carry", "like", "follow", "push", "watch",
)
INTRANSITIVE_VERBS: tuple[str, ...] = ("sleep", "run", "jump", "sing")
VERBS: tuple[str, ...] = TRANSITIVE_VERBS + INTRANSITIVE_VERBS
NUMERALS: tuple[str, ...] = ("one", "two", "three", "four")
ADPOSITIONS: tuple[str, ...] = ("near", "in", "under", "behind", "on")
#: Concepts that have a free-standing word in every language (see ``SyntheticWorld.word``).
CONCEPTS: tuple[str, ...] = NOUNS + ADJECTIVES + VERBS + NUMERALS + ADPOSITIONS + ("and",)

#: Noun-phrase determiners: definite singular/plural, indefinite singular, numerals.
DETERMINERS: tuple[str, ...] = ("the", "the_pl", "a") + NUMERALS
_PLURAL_DETERMINERS = ("the_pl", "two", "three", "four")
_DEFINITE_DETERMINERS = ("the", "the_pl")

# Grammatical morphemes get proto-roots like content words (so they too are
# cognate within a family); SELF only names the language.
_MORPHEMES: tuple[str, ...] = ("DEF", "INDEF", "PL", "ACC", "PAST", "AGR", "SELF")
_ALL_CONCEPTS: tuple[str, ...] = CONCEPTS + _MORPHEMES

#: Upper bound on English words per sentence (the lower bound, 3, follows from the grammar).
MAX_SENTENCE_WORDS = 12

# Sampling weights, by repetition so that a single ``rng.choice`` suffices.
# "the" dominates as in real text; adjectives, objects and locations are
# frequent enough to be learnable but keep the mean length near 7 words.
_DETERMINER_DECK = ("the", "the", "the", "the_pl", "a", "a", "one", "two", "three", "four")
_P_ADJECTIVE = 0.4
_P_OBJECT = 0.75
_P_LOCATION = 0.35
_P_TWO_CLAUSES = 0.15

# --------------------------------------------------------------------------
# English (pivot) morphology: regular rules plus a small irregular table.
# --------------------------------------------------------------------------

_EN_PLURAL = {noun: noun + ("es" if noun.endswith("x") else "s") for noun in NOUNS}
_EN_IRREGULAR_PAST = {"see": "saw", "eat": "ate", "find": "found", "sleep": "slept",
                      "run": "ran", "sing": "sang"}


def _en_past(verb: str) -> str:
    if verb in _EN_IRREGULAR_PAST:
        return _EN_IRREGULAR_PAST[verb]
    if verb.endswith("y"):
        return verb[:-1] + "ied"
    if verb.endswith("e"):
        return verb + "d"
    return verb + "ed"


def _en_third_singular(verb: str) -> str:
    if verb.endswith("y"):
        return verb[:-1] + "ies"
    if verb.endswith(("sh", "ch", "x", "s")):
        return verb + "es"
    return verb + "s"


_EN_PAST = {verb: _en_past(verb) for verb in VERBS}
_EN_3SG = {verb: _en_third_singular(verb) for verb in VERBS}

# --------------------------------------------------------------------------
# Phonology of the artificial languages. Every phoneme is one Latin letter so
# that transliteration into other scripts is a plain one-to-one mapping.
# c = "ts", x = "sh", y = the palatal glide.
# --------------------------------------------------------------------------

_CONSONANTS: tuple[str, ...] = ("p", "t", "k", "b", "d", "g", "m", "n", "s", "z",
                                "l", "r", "f", "v", "h", "w", "y", "c", "x")
_VOWELS: tuple[str, ...] = ("a", "e", "i", "o", "u")
_CODAS: tuple[str, ...] = ("n", "m", "s", "r", "l", "k", "t")
_VOWEL_SET = frozenset(_VOWELS)  # membership only, never iterated

# Natural-looking sound changes; a language picks a few that its family's
# inventory can actually undergo.
_CONSONANT_SHIFTS: tuple[tuple[str, str], ...] = (
    ("p", "f"), ("t", "s"), ("k", "h"), ("b", "v"), ("d", "z"), ("g", "k"), ("s", "h"),
    ("l", "r"), ("r", "l"), ("m", "n"), ("k", "c"), ("t", "c"), ("w", "v"), ("y", "z"),
    ("x", "s"), ("f", "h"), ("p", "b"), ("t", "d"),
)
_VOWEL_SHIFTS: tuple[tuple[str, str], ...] = (
    ("a", "o"), ("o", "u"), ("e", "i"), ("i", "e"), ("u", "o"), ("a", "e"), ("o", "a"), ("u", "i"),
)
_VOICING = {"p": "b", "t": "d", "k": "g", "s": "z", "f": "v", "c": "z", "x": "z"}

# Proto-root lengths in syllables, by kind of concept (repetition = weight).
_SYLLABLES_NOUN = (1, 2, 2, 2, 3)
_SYLLABLES_ADJECTIVE = (2, 2, 3)
_SYLLABLES_VERB = (1, 2, 2)
_SYLLABLES_SHORT = (1, 2)

_CYRILLIC = str.maketrans({
    "a": "а", "b": "б", "c": "ц", "d": "д", "e": "е", "f": "ф", "g": "г", "h": "х",
    "i": "и", "j": "ж", "k": "к", "l": "л", "m": "м", "n": "н", "o": "о", "p": "п",
    "q": "щ", "r": "р", "s": "с", "t": "т", "u": "у", "v": "в", "w": "ў", "x": "ш",
    "y": "й", "z": "з",
})
_GREEK = str.maketrans({
    "a": "α", "b": "β", "c": "ψ", "d": "δ", "e": "ε", "f": "φ", "g": "γ", "h": "χ",
    "i": "ι", "j": "η", "k": "κ", "l": "λ", "m": "μ", "n": "ν", "o": "ο", "p": "π",
    "q": "θ", "r": "ρ", "s": "σ", "t": "τ", "u": "υ", "v": "ϐ", "w": "ω", "x": "ξ",
    "y": "ϳ", "z": "ζ",
})
_SCRIPT_TABLES = {"Cyrl": _CYRILLIC, "Grek": _GREEK}

# --------------------------------------------------------------------------
# Language inventory: fixed slot -> family / script, independent of how many
# languages a world has, so ``xa`` is the same language in every world size.
# --------------------------------------------------------------------------

_N_FAMILIES = 4
_FAMILY_SIZE = 3
#: Largest supported ``n_languages`` (en plus 16 artificial languages).
MAX_LANGUAGES = 1 + _N_FAMILIES * (_FAMILY_SIZE + 1)
_CODES: tuple[str, ...] = tuple("x" + chr(ord("a") + i) for i in range(MAX_LANGUAGES - 1))
_NON_LATIN_SLOTS = {2: "Cyrl", 5: "Grek", 10: "Cyrl", 13: "Grek"}


def _family_index(slot: int) -> int:
    # Slots 0-11 fill four families of three; slots 12-15 add a fourth member each.
    if slot < _N_FAMILIES * _FAMILY_SIZE:
        return slot // _FAMILY_SIZE
    return slot - _N_FAMILIES * _FAMILY_SIZE


# Grammar features and their possible values. Decks deal these out so that
# all values occur among the first len(values) languages.
_FEATURES: tuple[tuple[str, tuple[object, ...]], ...] = (
    ("word_order", ("SOV", "SVO", "VSO", "VOS", "OVS", "OSV")),
    ("adjective_first", (True, False)),
    ("numeral_first", (True, False)),
    ("plural", ("suffix", "prefix", "reduplication", "suffix")),
    ("plural_with_numeral", (True, False)),
    ("adjective_agrees", (True, False, False)),
    ("object_case", (True, False)),
    ("past", ("suffix", "prefix", "particle_before", "particle_after")),
    ("definite", ("article_before", "article_after", "suffix")),
    ("indefinite_article", (True, False)),
    ("adposition", ("pre", "post")),
    ("location_first", (False, False, True)),
    ("verb_agrees", (True, False)),
)


# --------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticLanguage:
    """Identity card of one language of the world."""

    code: str
    name: str
    family: str
    script: str
    word_order: str


@dataclass(frozen=True, slots=True)
class NounPhrase:
    """A noun with a determiner (one of :data:`DETERMINERS`) and an optional adjective."""

    noun: str
    determiner: str
    adjective: str | None = None

    @property
    def plural(self) -> bool:
        """Whether the phrase denotes more than one thing."""
        return self.determiner in _PLURAL_DETERMINERS


@dataclass(frozen=True, slots=True)
class Clause:
    """Subject + verb (+ tense) + optional object + optional location phrase."""

    subject: NounPhrase
    verb: str
    past: bool
    obj: NounPhrase | None = None
    adposition: str | None = None
    place: NounPhrase | None = None


@dataclass(frozen=True, slots=True)
class Meaning:
    """One or two clauses; two are joined by "and"."""

    clauses: tuple[Clause, ...]


# --------------------------------------------------------------------------
# Realisers
# --------------------------------------------------------------------------


class _English:
    """The pivot language: real English words, regular English morphology."""

    def __init__(self) -> None:
        self._np_cache: dict[NounPhrase, str] = {}

    def noun_phrase(self, np: NounPhrase) -> str:
        cached = self._np_cache.get(np)
        if cached is not None:
            return cached
        noun = _EN_PLURAL[np.noun] if np.plural else np.noun
        rest = f"{np.adjective} {noun}" if np.adjective else noun
        det = np.determiner
        if det in _DEFINITE_DETERMINERS:
            det = "the"
        elif det == "a" and rest[0] in _VOWEL_SET:
            det = "an"
        text = f"{det} {rest}"
        self._np_cache[np] = text
        return text

    def clause(self, clause: Clause) -> str:
        if clause.past:
            verb = _EN_PAST[clause.verb]
        elif clause.subject.plural:
            verb = clause.verb
        else:
            verb = _EN_3SG[clause.verb]
        parts = [self.noun_phrase(clause.subject), verb]
        if clause.obj is not None:
            parts.append(self.noun_phrase(clause.obj))
        if clause.place is not None:
            parts.append(clause.adposition)
            parts.append(self.noun_phrase(clause.place))
        return " ".join(parts)

    def realise(self, meaning: Meaning) -> str:
        return " and ".join([self.clause(c) for c in meaning.clauses])


class _Artificial:
    """Realiser for one artificial language: a lexicon (Latin form) plus a grammar."""

    def __init__(self, lexicon: dict[str, str], grammar: dict[str, object], script: str) -> None:
        self.lexicon = lexicon
        self.grammar = grammar
        self._table = _SCRIPT_TABLES.get(script)
        # Grammar flags are unpacked once; realisation is the hot path.
        self._order = str(grammar["word_order"])
        self._adj_first = bool(grammar["adjective_first"])
        self._num_first = bool(grammar["numeral_first"])
        self._plural = str(grammar["plural"])
        self._plural_with_numeral = bool(grammar["plural_with_numeral"])
        self._adj_agrees = bool(grammar["adjective_agrees"])
        self._object_case = bool(grammar["object_case"])
        self._past = str(grammar["past"])
        self._definite = str(grammar["definite"])
        self._indefinite_article = bool(grammar["indefinite_article"])
        self._prepositions = grammar["adposition"] == "pre"
        self._location_first = bool(grammar["location_first"])
        self._verb_agrees = bool(grammar["verb_agrees"])
        self._np_cache: dict[tuple[NounPhrase, bool], list[str]] = {}
        self._verb_cache: dict[tuple[str, bool, bool], list[str]] = {}

    def _pluralise(self, stem: str) -> str:
        marker = self.lexicon["PL"]
        if self._plural == "suffix":
            return stem + marker
        if self._plural == "prefix":
            return marker + stem
        # Reduplication copies the first (C)V syllable: tamo -> tatamo.
        for i, ch in enumerate(stem):
            if ch in _VOWEL_SET:
                return stem[: i + 1] + stem
        return stem + stem

    def noun_phrase(self, np: NounPhrase, is_object: bool) -> list[str]:
        key = (np, is_object)
        cached = self._np_cache.get(key)
        if cached is not None:
            return cached
        lex = self.lexicon
        det = np.determiner
        numeral = lex[det] if det in NUMERALS else None
        # Numerals already say "plural"; some languages then leave the noun bare.
        mark_plural = np.plural and (numeral is None or self._plural_with_numeral)
        noun = lex[np.noun]
        if mark_plural:
            noun = self._pluralise(noun)
        article_before: str | None = None
        article_after: str | None = None
        if det in _DEFINITE_DETERMINERS:
            if self._definite == "suffix":
                noun += lex["DEF"]
            elif self._definite == "article_before":
                article_before = lex["DEF"]
            else:
                article_after = lex["DEF"]
        elif det == "a" and self._indefinite_article:
            if self._definite == "article_after":
                article_after = lex["INDEF"]
            else:
                article_before = lex["INDEF"]
        if is_object and self._object_case:
            noun += lex["ACC"]
        words: list[str] = []
        if article_before:
            words.append(article_before)
        if numeral and self._num_first:
            words.append(numeral)
        adjective = None
        if np.adjective is not None:
            adjective = lex[np.adjective]
            if mark_plural and self._adj_agrees:
                adjective = self._pluralise(adjective)
        if adjective and self._adj_first:
            words.append(adjective)
        words.append(noun)
        if adjective and not self._adj_first:
            words.append(adjective)
        if numeral and not self._num_first:
            words.append(numeral)
        if article_after:
            words.append(article_after)
        self._np_cache[key] = words
        return words

    def _word_forms(self) -> list[tuple[str, tuple[object, ...]]]:
        """Every word form the grammar can produce, each with its analysis."""
        lex = self.lexicon
        forms: list[tuple[str, tuple[object, ...]]] = []
        definite_suffix = (False, True) if self._definite == "suffix" else (False,)
        accusative = (False, True) if self._object_case else (False,)
        for noun in NOUNS:
            for plural in (False, True):
                stem = self._pluralise(lex[noun]) if plural else lex[noun]
                for definite in definite_suffix:
                    for acc in accusative:
                        form = stem + (lex["DEF"] if definite else "") + (lex["ACC"] if acc else "")
                        forms.append((form, ("noun", noun, plural, definite, acc)))
        for adjective in ADJECTIVES:
            forms.append((lex[adjective], ("adjective", adjective, False)))
            if self._adj_agrees:
                forms.append((self._pluralise(lex[adjective]), ("adjective", adjective, True)))
        # Only features a form actually marks belong in its analysis.
        agreement = (False, True) if self._verb_agrees else (False,)
        past_affixed = (False, True) if self._past in ("suffix", "prefix") else (False,)
        for verb in VERBS:
            for plural_subject in agreement:
                for past in past_affixed:
                    # Without a past affix, the stem is the first (only) word.
                    form = self.verb(verb, past, plural_subject)[0]
                    forms.append((form, ("verb", verb, plural_subject, past)))
        for concept in NUMERALS + ADPOSITIONS + ("and",):
            forms.append((lex[concept], (concept,)))
        if self._definite != "suffix":
            forms.append((lex["DEF"], ("DEF",)))
        if self._indefinite_article:
            forms.append((lex["INDEF"], ("INDEF",)))
        if self._past.startswith("particle"):
            forms.append((lex["PAST"], ("PAST",)))
        return forms

    def first_clash(self) -> str | None:
        """Concept of the first word form that also has another analysis, or None.

        Affixation can turn one word into another (hill+DEF = tree+PL+DEF);
        with all forms distinct and a fixed word order, sentences stay unambiguous.
        """
        seen: dict[str, tuple[object, ...]] = {}
        for form, analysis in self._word_forms():
            other = seen.setdefault(form, analysis)
            if other != analysis:
                return str(analysis[1]) if len(analysis) > 1 else str(analysis[0])
        return None

    def verb(self, verb: str, past: bool, plural_subject: bool) -> list[str]:
        key = (verb, past, plural_subject)
        cached = self._verb_cache.get(key)
        if cached is not None:
            return cached
        lex = self.lexicon
        stem = lex[verb]
        if plural_subject and self._verb_agrees:
            stem += lex["AGR"]
        words = [stem]
        if past:
            marker = lex["PAST"]
            if self._past == "suffix":
                words = [stem + marker]
            elif self._past == "prefix":
                words = [marker + stem]
            elif self._past == "particle_before":
                words = [marker, stem]
            else:
                words = [stem, marker]
        self._verb_cache[key] = words
        return words

    def clause(self, clause: Clause, out: list[str]) -> None:
        subject = self.noun_phrase(clause.subject, False)
        verb = self.verb(clause.verb, clause.past, clause.subject.plural)
        obj = self.noun_phrase(clause.obj, True) if clause.obj is not None else None
        location: list[str] | None = None
        if clause.place is not None:
            place = self.noun_phrase(clause.place, False)
            adposition = self.lexicon[clause.adposition]  # type: ignore[index]
            location = [adposition, *place] if self._prepositions else [*place, adposition]
        if location is not None and self._location_first:
            out.extend(location)
        for slot in self._order:
            if slot == "S":
                out.extend(subject)
            elif slot == "V":
                out.extend(verb)
            elif obj is not None:
                out.extend(obj)
        if location is not None and not self._location_first:
            out.extend(location)

    def realise(self, meaning: Meaning) -> str:
        words: list[str] = []
        for i, clause in enumerate(meaning.clauses):
            if i:
                words.append(self.lexicon["and"])
            self.clause(clause, words)
        text = " ".join(words)
        return text.translate(self._table) if self._table is not None else text


# --------------------------------------------------------------------------
# Lexicon construction
# --------------------------------------------------------------------------


def _syllable_choices(concept: str) -> tuple[int, ...]:
    if concept in NOUNS:
        return _SYLLABLES_NOUN
    if concept in ADJECTIVES:
        return _SYLLABLES_ADJECTIVE
    if concept in VERBS:
        return _SYLLABLES_VERB
    if concept == "SELF":
        return (2,)
    if concept in _MORPHEMES or concept == "and":
        return (1,)
    return _SYLLABLES_SHORT


@dataclass(frozen=True)
class _Family:
    name: str
    consonants: tuple[str, ...]
    vowels: tuple[str, ...]
    roots: dict[str, str]


def _make_family(seed: int, index: int) -> _Family:
    rng = random.Random(f"mtforget-synthetic:{seed}:family:{index}")
    consonants = tuple(rng.sample(_CONSONANTS, rng.randint(9, 13)))
    vowels = tuple(rng.sample(_VOWELS, rng.randint(3, 5)))
    codas = tuple(c for c in _CODAS if c in consonants)
    coda_rate = rng.choice((0.0, 0.2, 0.35))
    used: dict[str, str] = {}
    roots: dict[str, str] = {}
    for concept in _ALL_CONCEPTS:
        n_syllables = rng.choice(_syllable_choices(concept))
        while True:
            parts = [rng.choice(consonants) + rng.choice(vowels) for _ in range(n_syllables)]
            # Codas only on content words: grammatical morphemes attach as
            # affixes and read better as plain CV.
            if codas and concept in CONCEPTS and concept != "and" and rng.random() < coda_rate:
                parts.append(rng.choice(codas))
            root = "".join(parts)
            if root not in used:
                break
        used[root] = concept
        roots[concept] = root
    return _Family(name=roots["SELF"].capitalize() + "ic", consonants=consonants,
                   vowels=vowels, roots=roots)


def _voice_between_vowels(word: str) -> str:
    chars = list(word)
    for i in range(1, len(chars) - 1):
        if chars[i - 1] in _VOWEL_SET and chars[i + 1] in _VOWEL_SET and chars[i] in _VOICING:
            chars[i] = _VOICING[chars[i]]
    return "".join(chars)


def _drop_final_vowel(word: str) -> str:
    n_vowels = sum(1 for ch in word if ch in _VOWEL_SET)
    if n_vowels >= 2 and word[-1] in _VOWEL_SET and word[-2] not in _VOWEL_SET:
        return word[:-1]
    return word


def _derive_lexicon(family: _Family, rng: random.Random) -> tuple[dict[str, str], tuple[object, ...]]:
    """Apply one randomly drawn set of sound changes to the family's proto-roots."""
    applicable = [s for s in _CONSONANT_SHIFTS if s[0] in family.consonants]
    shifts = rng.sample(applicable, min(len(applicable), rng.randint(1, 3)))
    # Shifts apply simultaneously (one translate), so p>f and f>h do not chain.
    shift_map: dict[str, str] = {}
    for source, target in shifts:
        shift_map.setdefault(source, target)
    vowel_options = [s for s in _VOWEL_SHIFTS if s[0] in family.vowels]
    vowel_shift = rng.choice(vowel_options) if rng.random() < 0.7 else None
    if vowel_shift is not None:
        shift_map.setdefault(vowel_shift[0], vowel_shift[1])
    table = str.maketrans(shift_map)
    voicing = rng.random() < 0.4
    apocope = rng.random() < 0.4
    affix_kind = rng.choice(("none", "noun_suffix", "verb_suffix", "verb_prefix"))
    affix = ""
    if affix_kind != "none":
        vowel = rng.choice(family.vowels)
        consonant = rng.choice(family.consonants)
        affix = vowel + consonant if affix_kind.endswith("suffix") else consonant + vowel
    lexicon: dict[str, str] = {}
    used: dict[str, str] = {}
    for concept in _ALL_CONCEPTS:
        word = family.roots[concept].translate(table)
        if voicing:
            word = _voice_between_vowels(word)
        if apocope and concept in CONCEPTS:
            word = _drop_final_vowel(word)
        if affix_kind == "noun_suffix" and concept in NOUNS or affix_kind == "verb_suffix" and concept in VERBS:
            word += affix
        elif affix_kind == "verb_prefix" and concept in VERBS:
            word = affix + word
        # Sound changes can merge two roots; keep every form unambiguous by
        # lengthening the later concept (fixed order, so still deterministic).
        while word in used:
            word += family.vowels[0]
        used[word] = concept
        lexicon[concept] = word
    signature = (tuple(sorted(shift_map.items())), voicing, apocope, affix_kind, affix)
    return lexicon, signature


def _deal(rng: random.Random, values: tuple[object, ...], n: int) -> list[object]:
    """``n`` values from consecutive shuffled copies of ``values``: all values appear early."""
    dealt: list[object] = []
    while len(dealt) < n:
        deck = list(values)
        rng.shuffle(deck)
        dealt.extend(deck)
    return dealt[:n]


# --------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------


def _np_length(np: NounPhrase | None) -> int:
    if np is None:
        return 0
    return 3 if np.adjective is not None else 2


def _clause_length(clause: Clause) -> int:
    """English word count of a clause (English needs no realisation to count)."""
    n = _np_length(clause.subject) + 1 + _np_length(clause.obj)
    if clause.place is not None:
        n += 1 + _np_length(clause.place)
    return n


class SyntheticWorld:
    """A seeded world of ``n_languages`` languages (``en`` plus artificial ``xa``, ``xb``, ...).

    The constructor seed fixes lexicons, grammars, names and scripts; corpus
    sampling has its own seed (see :meth:`corpus`).
    """

    def __init__(self, seed: int = 0, n_languages: int = 10) -> None:
        if not 2 <= n_languages <= MAX_LANGUAGES:
            raise ValueError(
                f"n_languages must be between 2 and {MAX_LANGUAGES} (en included), got {n_languages}"
            )
        self.seed = seed
        n_artificial = n_languages - 1
        # Grammar decks are always dealt for the maximal world, so that a
        # language's grammar does not depend on the world size.
        deck_rng = random.Random(f"mtforget-synthetic:{seed}:grammar")
        decks = {name: _deal(deck_rng, values, len(_CODES)) for name, values in _FEATURES}
        families: dict[int, _Family] = {}
        signatures: dict[int, list[tuple[object, ...]]] = {}
        self._realisers: dict[str, _English | _Artificial] = {"en": _English()}
        self._lexicons: dict[str, dict[str, str]] = {"en": {c: c for c in CONCEPTS}}
        self._grammars: dict[str, dict[str, object]] = {"en": _ENGLISH_GRAMMAR}
        self.languages: list[SyntheticLanguage] = [
            SyntheticLanguage("en", "English-like", "pivot", "Latn", "SVO")
        ]
        names_used: dict[str, str] = {}
        for slot in range(n_artificial):
            code = _CODES[slot]
            family_index = _family_index(slot)
            if family_index not in families:
                families[family_index] = _make_family(seed, family_index)
                signatures[family_index] = []
            family = families[family_index]
            rng = random.Random(f"mtforget-synthetic:{seed}:language:{code}")
            # Siblings must not end up with identical sound changes.
            while True:
                lexicon, signature = _derive_lexicon(family, rng)
                if signature not in signatures[family_index]:
                    break
            signatures[family_index].append(signature)
            grammar = {name: decks[name][slot] for name, _ in _FEATURES}
            script = _NON_LATIN_SLOTS.get(slot, "Latn")
            # Name = the family's self-designation plus a language-specific
            # syllable, so siblings sound related but are told apart.
            while True:
                syllable = rng.choice(family.consonants) + rng.choice(family.vowels)
                name = (lexicon["SELF"] + syllable).capitalize()
                if name not in names_used:
                    break
            names_used[name] = code
            self._lexicons[code] = lexicon
            self._grammars[code] = grammar
            realiser = _Artificial(lexicon, grammar, script)
            # Lengthen the offending word until every inflected form is unique.
            for _ in range(1000):
                clash = realiser.first_clash()
                if clash is None:
                    break
                lexicon[clash] += rng.choice(family.vowels)
                realiser = _Artificial(lexicon, grammar, script)
            else:  # pragma: no cover - would need a pathological inventory
                raise RuntimeError(f"could not make the word forms of {code} unambiguous")
            self._realisers[code] = realiser
            self.languages.append(
                SyntheticLanguage(code, name, family.name, script, str(grammar["word_order"]))
            )
        self.codes: list[str] = [lang.code for lang in self.languages]
        self._english = self._realisers["en"]

    # -- inspection ---------------------------------------------------------

    def language(self, code: str) -> SyntheticLanguage:
        """The :class:`SyntheticLanguage` with this code."""
        for lang in self.languages:
            if lang.code == code:
                return lang
        raise KeyError(f"unknown language code {code!r}; this world has {self.codes}")

    def word(self, code: str, concept: str, romanized: bool = False) -> str:
        """Bare lemma of ``concept`` (one of :data:`CONCEPTS`) in language ``code``.

        ``romanized=True`` returns the Latin form of a Cyrillic/Greek-script
        language, which is what cognate comparisons across scripts need.
        """
        if concept not in CONCEPTS:
            raise KeyError(f"unknown concept {concept!r}")
        lexicon = self._lexicons.get(code)
        if lexicon is None:
            raise KeyError(f"unknown language code {code!r}; this world has {self.codes}")
        word = lexicon[concept]
        table = _SCRIPT_TABLES.get(self.language(code).script)
        return word if romanized or table is None else word.translate(table)

    def grammar(self, code: str) -> dict[str, object]:
        """The grammar features of a language (a copy; for reports and inspection)."""
        if code not in self._grammars:
            raise KeyError(f"unknown language code {code!r}; this world has {self.codes}")
        return dict(self._grammars[code])

    @staticmethod
    def meaning_space_size() -> int:
        """Number of distinct meanings (= distinct English sentences) the sampler can produce."""
        n_np = {2: len(DETERMINERS) * len(NOUNS),
                3: len(DETERMINERS) * len(ADJECTIVES) * len(NOUNS)}
        locations = {0: 1}
        for length, count in n_np.items():
            locations[1 + length] = locations.get(1 + length, 0) + len(ADPOSITIONS) * count
        objects = {0: 1, **n_np}
        clauses: dict[int, int] = {}
        for verb in VERBS:
            verb_objects = objects if verb in TRANSITIVE_VERBS else {0: 1}
            for s_len, s_count in n_np.items():
                for o_len, o_count in verb_objects.items():
                    for l_len, l_count in locations.items():
                        length = s_len + 1 + o_len + l_len
                        # Two tenses per verb.
                        clauses[length] = clauses.get(length, 0) + 2 * s_count * o_count * l_count
        total = sum(count for length, count in clauses.items() if length <= MAX_SENTENCE_WORDS)
        for len_a, count_a in clauses.items():
            for len_b, count_b in clauses.items():
                if len_a + 1 + len_b <= MAX_SENTENCE_WORDS:
                    total += count_a * count_b
        return total

    # -- generation ---------------------------------------------------------

    def _sample_noun_phrase(self, rng: random.Random) -> NounPhrase:
        noun = rng.choice(NOUNS)
        determiner = rng.choice(_DETERMINER_DECK)
        adjective = rng.choice(ADJECTIVES) if rng.random() < _P_ADJECTIVE else None
        return NounPhrase(noun, determiner, adjective)

    def _sample_clause(self, rng: random.Random) -> Clause:
        subject = self._sample_noun_phrase(rng)
        verb = rng.choice(VERBS)
        past = rng.random() < 0.5
        obj = None
        if verb in TRANSITIVE_VERBS and rng.random() < _P_OBJECT:
            obj = self._sample_noun_phrase(rng)
        adposition = place = None
        if rng.random() < _P_LOCATION:
            adposition = rng.choice(ADPOSITIONS)
            place = self._sample_noun_phrase(rng)
        return Clause(subject, verb, past, obj, adposition, place)

    def sample_meaning(self, rng: random.Random) -> Meaning:
        """Draw one meaning; its English realisation has 3 to 12 words."""
        if rng.random() < _P_TWO_CLAUSES:
            # Rejection keeps two-clause sentences within the length bound
            # without biasing which short clauses are chosen.
            while True:
                first, second = self._sample_clause(rng), self._sample_clause(rng)
                if _clause_length(first) + 1 + _clause_length(second) <= MAX_SENTENCE_WORDS:
                    return Meaning((first, second))
        return Meaning((self._sample_clause(rng),))

    def realise(self, meaning: Meaning, code: str) -> str:
        """The unique realisation of ``meaning`` in language ``code`` (words joined by spaces)."""
        realiser = self._realisers.get(code)
        if realiser is None:
            raise KeyError(f"unknown language code {code!r}; this world has {self.codes}")
        return realiser.realise(meaning)

    def corpus(self, n_segments: int, seed: int = 0) -> list[dict]:
        """[{"id": "s0", "translation": {"en": ..., "xa": ..., ...}}, ...] — n_segments unique meanings,
        ids s0..s{n-1}. `seed` drives sampling of meanings (the world's lexicon/grammar come from the
        constructor seed).

        Meanings are deduplicated by their English sentence, so a split by
        segment id never puts the same sentence on both sides.
        """
        if n_segments < 0:
            raise ValueError(f"n_segments must be >= 0, got {n_segments}")
        capacity = self.meaning_space_size()
        if n_segments > capacity:
            raise ValueError(
                f"n_segments={n_segments} exceeds the {capacity} distinct meanings this world can produce"
            )
        rng = random.Random(f"mtforget-synthetic:corpus:{seed}")
        english = self._english
        others = [(code, self._realisers[code]) for code in self.codes[1:]]
        seen: dict[str, None] = {}
        records: list[dict] = []
        while len(records) < n_segments:
            meaning = self.sample_meaning(rng)
            en = english.realise(meaning)
            if en in seen:
                continue
            seen[en] = None
            translation = {"en": en}
            for code, realiser in others:
                translation[code] = realiser.realise(meaning)
            records.append({"id": f"s{len(records)}", "translation": translation})
        return records


_ENGLISH_GRAMMAR: dict[str, object] = {
    "word_order": "SVO", "adjective_first": True, "numeral_first": True, "plural": "suffix",
    "plural_with_numeral": True, "adjective_agrees": False, "object_case": False,
    "past": "suffix", "definite": "article_before", "indefinite_article": True,
    "adposition": "pre", "location_first": False, "verb_agrees": True,
}


def write_jsonl(records: Iterable[dict], path: str | os.PathLike[str]) -> None:
    """Write one JSON object per line (UTF-8, non-ASCII kept), atomically.

    The file is written next to its destination and moved into place with
    ``os.replace``, so readers never see a half-written corpus.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False))
                handle.write("\n")
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
