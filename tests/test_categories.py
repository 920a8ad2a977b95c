from mtforget.data.categories import CATEGORIES, Exposure, categorize, parse_direction, seen_languages


def test_categories_on_a_hand_made_case():
    # Fine-tuned on en→de and cs→en: seen = {en, de, cs}; unseen = {ja, he}.
    directions = [("en", "de"), ("cs", "en")]
    assert seen_languages(directions) == {"en", "de", "cs"}
    expected = {
        ("en", "de"): "supervised",
        ("cs", "en"): "supervised",
        ("de", "en"): "zero_shot_seen",  # reverse of a trained direction is not trained
        ("de", "cs"): "zero_shot_seen",
        ("en", "cs"): "zero_shot_seen",
        ("ja", "en"): "unseen_source",
        ("he", "de"): "unseen_source",
        ("en", "ja"): "unseen_target",
        ("cs", "he"): "unseen_target",
        ("ja", "he"): "unseen_both",
        ("he", "ja"): "unseen_both",
    }
    for (src, tgt), category in expected.items():
        assert categorize(src, tgt, directions) == category, (src, tgt)
    assert set(expected.values()) == set(CATEGORIES) - {"replayed"}
    # A direction trained on with replayed pairs is replayed, whatever its languages; a fine-tuning
    # direction stays supervised; the others keep their categories.
    replayed = {("ja", "he"), ("en", "ja"), ("en", "de")}
    assert [categorize(s, t, directions, replayed) for s, t in (("ja", "he"), ("en", "ja"), ("en", "de"),
                                                               ("he", "ja"), ("cs", "he"))] == \
        ["replayed", "replayed", "supervised", "unseen_both", "unseen_target"]


def test_exposure_names_what_each_side_was_trained_on():
    exposure = Exposure(replayed=frozenset({("xa", "xb")}), copied=frozenset({"xb"}), aligned=frozenset({"en", "xa"}))
    assert exposure.of("xa", "xb") == "replayed+copied_target+aligned_source"
    assert exposure.of("xb", "en") == "copied_source+aligned_target"
    assert exposure.of("en", "xa") == "aligned_both"
    assert exposure.of("xc", "xd") == "none"


def test_parse_direction():
    assert parse_direction("pt_BR-zh_Hans") == ("pt_BR", "zh_Hans")
    for bad in ("en", "en-", "en-en", "a-b-c"):
        try:
            parse_direction(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_drift_classes_on_a_hand_made_case():
    from mtforget.evaluate.drift import EMPTY, UNJUDGED, drift_shares, language_class

    finetuned = {"xa", "xb"}  # en↔xa, en↔xb fine-tuned; en the pivot
    assert language_class("xc", "xa", "xc", "en", finetuned) == "target"
    assert language_class("xa", "xa", "xc", "en", finetuned) == "source"  # a copy of the source
    assert language_class("en", "xa", "xc", "en", finetuned) == "pivot"
    assert language_class("xb", "xa", "xc", "en", finetuned) == "finetuned"
    assert language_class("xd", "xa", "xc", "en", finetuned) == "other"
    assert language_class(EMPTY, "xa", "xc", "en", finetuned) == "empty"
    counts = {"xc": 5, "xa": 1, "en": 2, "xb": 1, EMPTY: 1, UNJUDGED: 4}  # the unjudged are left out
    shares = drift_shares(counts, "xa", "xc", "en", finetuned)
    assert shares == {"target": 0.5, "source": 0.1, "pivot": 0.2, "finetuned": 0.1, "other": 0.0, "empty": 0.1}
    assert drift_shares({UNJUDGED: 3}, "xa", "xc", "en", finetuned) == {}
