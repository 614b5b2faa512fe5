"""The one label table of the emotional speech corpora, and its documentation."""


def test_the_documented_label_table_is_the_one_the_loaders_use():
    from pathlib import Path

    from melt.corpus.labels import CORPUS_LABELS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "corpus-schema.md").read_text(encoding="utf-8")
    block = doc.split("<!-- corpus-labels: begin -->")[1].split("<!-- corpus-labels: end -->")[0]
    documented = {}
    for line in block.strip().splitlines()[2:]:
        corpus, pairs = (cell.strip() for cell in line.strip("|").split("|"))
        documented[corpus] = dict(
            (code.strip().strip("`"), label.strip())
            for code, label in (p.split("→") for p in pairs.split(", "))
        )
    assert documented == CORPUS_LABELS


def test_corpus_labels_land_in_the_seven_or_in_the_named_off_set_labels():
    from melt.corpus.labels import CORPUS_LABELS, MELT_LABELS, OFF_SET_LABELS, corpus_label, rater_label

    targets = {label for table in CORPUS_LABELS.values() for label in table.values()}
    assert targets <= set(MELT_LABELS) | set(OFF_SET_LABELS)
    # SPEC's mapping
    assert corpus_label("iemocap", "exc") == ("exc", "joy")
    assert corpus_label("tess", "PS") == ("ps", "surprise")
    assert corpus_label("ravdess", "fearful") == ("fearful", "fear")
    assert corpus_label("cremad", "ANG") == ("ANG", "anger")
    assert corpus_label("msppodcast", "C") == ("C", "contempt")
    assert corpus_label("msppodcast", "Z") is None
    assert [
        rater_label(t) for t in ("Excited", "Happiness", "Neutral state", "Other:gloomy", "Other-Concerned")
    ] == [
        "joy",
        "joy",
        "neutral",
        "other",
        "other",
    ]
    assert rater_label("Frustration") == "frustration"  # off-set, kept
