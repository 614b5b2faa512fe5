import pytest

from melt.corpus.labels import MELT_LABEL_SET, MELT_LABELS, LabelSet


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Joy", "joy"),
        (" HAPPY ", "joy"),
        ("happiness", "joy"),
        ("excited", "joy"),
        ("Angry", "anger"),
        ("sad", "sadness"),
        ("fearful", "fear"),
        ("scared", "fear"),
        ("Surprised!", "surprise"),
        ("pleasant surprise", "surprise"),
        ("ps", "surprise"),
        ("disgusted", "disgust"),
        ("Neutral.", "neutral"),
    ],
)
def test_synonyms_and_case_map_onto_the_set(raw, expected):
    assert MELT_LABEL_SET.normalize(raw) == expected


def test_label_outside_the_set_is_kept_and_flagged():
    assert MELT_LABEL_SET.normalize("Frustration") == "frustration"
    assert not MELT_LABEL_SET.is_known("frustration")
    assert MELT_LABEL_SET.off_label_counts(["joy", "frustration", "comfort", "frustration", None]) == {
        "frustration": 2,
        "comfort": 1,
    }


def test_missing_values_stay_missing():
    assert MELT_LABEL_SET.normalize(None) is None
    assert MELT_LABEL_SET.normalize(float("nan")) is None
    assert MELT_LABEL_SET.normalize("  ") is None


def test_default_set_is_the_seven_melt_labels():
    assert MELT_LABELS == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")


def test_custom_label_set_keeps_only_relevant_default_synonyms():
    four = LabelSet.from_labels(["Anger", "Joy", "Neutral", "Sadness"])
    assert four.normalize("happy") == "joy"
    assert four.normalize("surprised") == "surprised"
    assert not four.is_known("surprised")


def test_synonym_onto_unknown_label_is_rejected():
    with pytest.raises(ValueError, match="outside the set"):
        LabelSet(labels=("a", "b"), synonyms={"x": "c"})
