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


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ([], "at least two"),
        (["joy"], "at least two"),
        (["joy", "Joy "], "repeat"),
        (["joy", "  "], "non-empty"),
    ],
)
def test_an_empty_or_repeating_label_set_is_refused(labels, says):
    with pytest.raises(ValueError, match=says):
        LabelSet.from_labels(labels)


@pytest.mark.parametrize(("yaml_labels", "says"), [("[]", "at least two"), ("[joy, anger, Joy]", "repeat")])
def test_labels_in_an_annotation_config_are_checked_with_one_clear_line(
    melt_cli, tmp_path, yaml_labels, says
):
    config = tmp_path / "run.yaml"
    config.write_text(f"labels: {yaml_labels}\n")
    corpus = tmp_path / "c.csv"
    corpus.write_text("id,speaker,text,season,episode\na,Ross,Hi.,1,1\n")
    result = melt_cli("annotate", corpus, "--out", tmp_path / "run", "--config", config, "--dry-run")
    assert result.code == 2 and "Traceback" not in result.stderr
    assert str(config) in result.stderr and "labels" in result.stderr and says in result.stderr
