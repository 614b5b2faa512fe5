import pandas as pd
import pytest

from melt.acoustics.lexicon import LEXICON, map_description, map_descriptions


@pytest.mark.parametrize(
    ("attribute", "text", "expected"),
    [
        # plain terms and phrases
        ("pitch", "High-pitched and squeaky", "high"),
        ("pitch", "shrill", "high"),
        ("pitch", "high pitched", "high"),
        ("pitch", "Deep, low voice", "low"),
        ("pitch", "a low-pitched rumble", "low"),
        ("loudness", "whispering", "low"),
        ("loudness", "soft-spoken", "low"),
        ("loudness", "barely audible", "low"),
        ("loudness", "barely above a whisper", "low"),
        ("loudness", "shouting at the top of his lungs", "high"),
        ("loudness", "Booming!", "high"),
        ("rhythm_speed", "rapid-fire", "high"),
        ("rhythm_speed", "slow and deliberate", "low"),
        ("rhythm_speed", "drawn out", "low"),
        # moderate / normal
        ("pitch", "normal", "mid"),
        ("loudness", "moderate, conversational volume", "mid"),
        ("rhythm_speed", "steady", "mid"),
        # comparisons with a norm count as their first term only
        ("pitch", "slightly higher than normal", "high"),
        ("loudness", "a bit louder than usual", "high"),
        ("pitch", "lower than his usual register", "low"),
        ("pitch", "above average", "high"),
        # degree adverbs do not make a class of their own
        ("rhythm_speed", "moderately fast", "high"),
        ("loudness", "very quiet", "low"),
        # negations
        ("loudness", "soft, not loud", "low"),
        ("loudness", "loud, but not shouting", "high"),
        ("loudness", "not too loud", "mid"),
        ("loudness", "isn't particularly loud", "mid"),
        ("loudness", "neither loud nor quiet", "mid"),
        ("rhythm_speed", "neither too fast nor too slow", "mid"),
        ("pitch", "not high-pitched, but not deep either", "mid"),
        ("loudness", "quiet rather than loud", "low"),
        # structured schema answers
        ("pitch", "low", "low"),
        ("loudness", "Medium", "mid"),
        ("rhythm_speed", "high.", "high"),
        ("rhythm_speed", "medium", "mid"),
    ],
)
def test_maps_tricky_phrases(attribute, text, expected):
    assert map_description(text, attribute) == expected


@pytest.mark.parametrize(
    ("attribute", "text"),
    [
        ("loudness", "not loud"),  # low or mid: not guessed
        ("pitch", "medium-high"),  # spans two classes
        ("pitch", "moderate to high"),
        ("loudness", "starts soft, then loud"),
        ("pitch", "varies with emotion"),  # no term at all
        ("rhythm_speed", ""),
        ("pitch", None),
        ("pitch", float("nan")),
        ("pitch", pd.NA),
    ],
)
def test_leaves_ambiguous_or_empty_descriptions_unknown(attribute, text):
    assert map_description(text, attribute) is None


def test_terms_are_attribute_specific():
    # "soft" and "fast" describe loudness and speed, not pitch
    assert map_description("soft", "pitch") is None
    assert map_description("soft", "loudness") == "low"
    assert map_description("fast", "loudness") is None


def test_words_containing_a_term_do_not_match():
    assert map_description("highly emotional", "pitch") is None
    assert map_description("slowness", "rhythm_speed") is None


def test_every_lexicon_term_maps_to_its_own_class():
    for attribute, classes in LEXICON.items():
        for cls, terms in classes.items():
            for term in terms:
                assert map_description(f"a {term} voice", attribute) == cls, (attribute, term)


def test_map_descriptions_keeps_the_index():
    mapped = map_descriptions(pd.Series(["loud", "??"], index=[5, 9]), "loudness")
    assert mapped.index.tolist() == [5, 9]
    assert mapped.iloc[0] == "high"
    assert mapped.isna().iloc[1]


def test_unknown_attribute_is_an_error():
    with pytest.raises(ValueError, match="unknown attribute"):
        map_description("loud", "timbre")
