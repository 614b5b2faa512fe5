import pandas as pd
import pytest

from melt.corpus.schema import conform
from melt.corpus.selection import MinDuration, MinWords, NamedSpeakers, SelectionConfig, select
from melt.errors import MeltError


def table(rows):
    frame = pd.DataFrame(rows, columns=["id", "split", "speaker", "text", "duration"])
    return conform(frame)


ROWS = [
    ("t1", "train", "Ross", "one two three", 1.5),
    ("t2", "train", "Ross", "one two three", 0.5),  # too short
    ("t3", "train", "Ross", "one two", 2.0),  # too few words
    ("t4", "train", "Guy", "one two three four", 2.0),  # stop-listed
    ("t5", "train", "Rachel", "one two three", 3.0),
    ("t6", "train", "ross", "four five six", 1.0),  # case-insensitive speaker
    ("s1", "test", "Rachel", "a b c", 2.0),
    ("s2", "test", "Gunther", "a b c", 2.0),  # speaker not frequent enough in train
]


def test_each_filter_reports_what_it_removed():
    result = select(table(ROWS), [MinDuration(1.0), MinWords(3), NamedSpeakers(2, "train", ("guy",))])
    assert result.steps[["before", "removed", "after"]].to_numpy().tolist() == [
        [8, 1, 7],
        [7, 1, 6],
        [6, 4, 2],
    ]
    # Rachel has one qualifying train row, so her test row goes too.
    assert result.table["id"].tolist() == ["t1", "t6"]


def test_speaker_counts_use_rows_that_passed_earlier_filters():
    # Ross has 3 train rows but only 2 pass the duration and word filters; with min 3 he is dropped.
    result = select(table(ROWS), [MinDuration(1.0), MinWords(3), NamedSpeakers(3, "train", ())])
    assert "ross" not in result.speakers
    result = select(table(ROWS), [MinDuration(1.0), MinWords(3), NamedSpeakers(2, "train", ())])
    assert result.speakers == {"ross"}


def test_speaker_set_from_train_applies_to_test():
    result = select(table(ROWS), [NamedSpeakers(1, "train", ("guy",))])
    kept = set(result.table["id"])
    assert "s1" in kept and "s2" not in kept and "t4" not in kept


def test_missing_duration_fails_the_duration_filter():
    frame = table([("a", "train", "Ross", "x y z", None), ("b", "train", "Ross", "x y z", 2.0)])
    assert select(frame, [MinDuration(1.0)]).table["id"].tolist() == ["b"]


def test_speaker_filter_needs_its_reference_split():
    with pytest.raises(MeltError, match="split 'train'"):
        select(table([("a", "test", "Ross", "x y z", 2.0)]), [NamedSpeakers(1)])


def test_config_yaml_and_preset(tmp_path):
    path = tmp_path / "sel.yaml"
    path.write_text("min_duration: 2.5\nmin_words: null\nmin_speaker_utterances: null\n")
    config = SelectionConfig.load(str(path))
    assert config.filters() == [MinDuration(2.5)]
    assert [type(f) for f in SelectionConfig.load("melt").filters()] == [MinDuration, MinWords, NamedSpeakers]
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_durration: 1\n")
    with pytest.raises(MeltError, match="invalid selection config"):
        SelectionConfig.load(str(bad))
