"""A registry of language codes: the study's codes (BCP-47-like) mapped to names, ISO 639-3 codes,
scripts, and the spellings each model family uses for its language tokens.

Study codes are ``en``, ``pt_BR``, ``zh_Hans``; NLLB wants ``por_Latn``, mBART-50 ``pt_XX``,
Marian ``>>por<<``, and an instruction wants "Portuguese".
"""

from __future__ import annotations

from functools import lru_cache

# code: (English name, ISO 639-3, default script)
LANGUAGES: dict[str, tuple[str, str, str]] = {
    "af": ("Afrikaans", "afr", "Latn"), "ar": ("Arabic", "arb", "Arab"), "bg": ("Bulgarian", "bul", "Cyrl"),
    "bn": ("Bengali", "ben", "Beng"), "ca": ("Catalan", "cat", "Latn"), "cs": ("Czech", "ces", "Latn"),
    "da": ("Danish", "dan", "Latn"), "de": ("German", "deu", "Latn"), "el": ("Greek", "ell", "Grek"),
    "en": ("English", "eng", "Latn"), "es": ("Spanish", "spa", "Latn"), "et": ("Estonian", "est", "Latn"),
    "eu": ("Basque", "eus", "Latn"), "fa": ("Persian", "pes", "Arab"), "fi": ("Finnish", "fin", "Latn"),
    "fr": ("French", "fra", "Latn"), "gl": ("Galician", "glg", "Latn"), "he": ("Hebrew", "heb", "Hebr"),
    "hi": ("Hindi", "hin", "Deva"), "hr": ("Croatian", "hrv", "Latn"), "hu": ("Hungarian", "hun", "Latn"),
    "id": ("Indonesian", "ind", "Latn"), "is": ("Icelandic", "isl", "Latn"), "it": ("Italian", "ita", "Latn"),
    "ja": ("Japanese", "jpn", "Jpan"), "ka": ("Georgian", "kat", "Geor"), "ko": ("Korean", "kor", "Hang"),
    "lt": ("Lithuanian", "lit", "Latn"), "lv": ("Latvian", "lvs", "Latn"), "mk": ("Macedonian", "mkd", "Cyrl"),
    "nb": ("Norwegian Bokmål", "nob", "Latn"), "nl": ("Dutch", "nld", "Latn"), "nn": ("Norwegian Nynorsk", "nno", "Latn"),
    "pl": ("Polish", "pol", "Latn"), "pt": ("Portuguese", "por", "Latn"), "ro": ("Romanian", "ron", "Latn"),
    "ru": ("Russian", "rus", "Cyrl"), "sk": ("Slovak", "slk", "Latn"), "sl": ("Slovenian", "slv", "Latn"),
    "sr": ("Serbian", "srp", "Cyrl"), "sv": ("Swedish", "swe", "Latn"), "sw": ("Swahili", "swh", "Latn"),
    "ta": ("Tamil", "tam", "Taml"), "th": ("Thai", "tha", "Thai"), "tr": ("Turkish", "tur", "Latn"),
    "uk": ("Ukrainian", "ukr", "Cyrl"), "ur": ("Urdu", "urd", "Arab"), "vi": ("Vietnamese", "vie", "Latn"),
    "zh": ("Chinese", "zho", "Hans"),
}

# mBART-50's language codes (its tokenizer's spelling), by ISO 639-1.
MBART50 = {
    "ar": "ar_AR", "cs": "cs_CZ", "de": "de_DE", "en": "en_XX", "es": "es_XX", "et": "et_EE", "fi": "fi_FI",
    "fr": "fr_XX", "gl": "gl_ES", "he": "he_IL", "hi": "hi_IN", "hr": "hr_HR", "id": "id_ID", "it": "it_IT",
    "ja": "ja_XX", "ka": "ka_GE", "ko": "ko_KR", "lt": "lt_LT", "lv": "lv_LV", "mk": "mk_MK", "nl": "nl_XX",
    "fa": "fa_IR", "pl": "pl_PL", "pt": "pt_XX", "ro": "ro_RO", "ru": "ru_RU", "sl": "sl_SI", "sv": "sv_SE",
    "sw": "sw_KE", "ta": "ta_IN", "th": "th_TH", "tr": "tr_TR", "uk": "uk_UA", "ur": "ur_PK", "vi": "vi_VN",
    "zh": "zh_CN", "bn": "bn_IN", "af": "af_ZA",
}


# ISO 639-3 (and a few ISO 639-2/B and macrolanguage spellings) back to the study's 2-letter codes.
_FROM_ISO3 = {iso3: code for code, (_, iso3, _) in LANGUAGES.items()}
_FROM_ISO3.update({"ara": "ar", "fas": "fa", "per": "fa", "swa": "sw", "lav": "lv", "nor": "nb", "zho": "zh",
                   "chi": "zh", "ger": "de", "fre": "fr", "cze": "cs", "dut": "nl", "gre": "el", "ice": "is",
                   "rum": "ro", "slo": "sk", "alb": "sq", "arm": "hy", "baq": "eu", "geo": "ka", "mac": "mk",
                   "may": "ms", "msa": "ms", "est": "et", "ekk": "et"})
# Languages written in several scripts: their script subtag is always kept.
_MULTI_SCRIPT = {"zh", "sr", "pa", "uz", "az", "ms", "mn", "ks", "sd"}


# Every text of a corpus line passes its code through here: a corpus has few distinct codes.
@lru_cache(maxsize=4096)
def normalize_code(code: str) -> str:
    """One spelling for every language code: the study's BCP-47-like form.

    ``deu_Latn`` → ``de``, ``de-DE`` → ``de_DE``, ``zho_Hant`` → ``zh_Hant``, ``zh-hans`` →
    ``zh_Hans``, ``por_Latn`` → ``pt``, ``ast_Latn`` → ``ast``; a script subtag is dropped when it is
    the language's usual one, except for languages commonly written in several scripts.
    """
    parts = [p for p in code.replace("-", "_").split("_") if p]
    if not parts:
        return code
    base = parts[0].lower()
    base = _FROM_ISO3.get(base, base) if len(base) == 3 else base
    script = region = None
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            script = part.title()
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            region = part.upper()
    if script == default_script(base) and base not in _MULTI_SCRIPT:
        script = None
    return "_".join(p for p in (base, script, region) if p)


def default_script(base: str) -> str:
    """The script a language is usually written in (Latin when the registry does not know it)."""
    return LANGUAGES[base][2] if base in LANGUAGES else "Latn"


def split_code(code: str) -> tuple[str, str | None]:
    """A normalised code's language and script subtag (None when it has none)."""
    base, _, rest = code.partition("_")
    script = next((part for part in rest.split("_") if len(part) == 4), None) if rest else None
    return base.lower(), script


def language_name(code: str, names: dict[str, str] | None = None) -> str:
    """The English name of ``code`` for instructions ("German"); the code itself if unknown."""
    if names and code in names:
        return names[code]
    base, _ = split_code(code)
    return LANGUAGES[base][0] if base in LANGUAGES else code


def iso639_3(code: str) -> str:
    """ISO 639-3 code (``deu``); a 3-letter study code is returned as is."""
    base, _ = split_code(code)
    return LANGUAGES[base][1] if base in LANGUAGES else base


def nllb_code(code: str) -> str:
    """FLORES-200/NLLB spelling: ``deu_Latn``, ``zho_Hant`` for ``zh_Hant``."""
    base, script = split_code(code)
    default = LANGUAGES[base][2] if base in LANGUAGES else "Latn"
    return f"{iso639_3(code)}_{script or default}"


def mbart_code(code: str) -> str:
    """mBART-50 spelling (``de_DE``); unknown languages get ``xx_XX`` so a new token can be added."""
    base, _ = split_code(code)
    return MBART50.get(base, f"{base}_XX")
