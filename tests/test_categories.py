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
