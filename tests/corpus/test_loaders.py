import re

import pandas as pd
import pytest

from melt.corpus.loaders import load_meld, load_melt_csv, load_table, parse_time, split_from_name
from melt.corpus.schema import COLUMNS, read_table, write_table
from melt.errors import MeltError

MELD_HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
)


def meld_csv(tmp_path, rows: list[str], name="train_sent_emo.csv"):
    path = tmp_path / name
    path.write_text(MELD_HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_parse_time_handles_meld_formats():
    assert parse_time("0:16:04,777") == pytest.approx(964.777)
    assert parse_time("00:16:16,059") == pytest.approx(976.059)
    # MELD sometimes drops the zero padding of the milliseconds: ",28" is 28 ms.
    assert parse_time("00:06:47,28") == pytest.approx(407.028)
    with pytest.raises(ValueError):
        parse_time("16:04")


def test_meld_rows_become_schema_rows(tmp_path):
    path = meld_csv(
        tmp_path,
        [
            '1,"Hi, there.",Ross,Joy,positive,3,0,2,5,"0:00:01,000","0:00:03,500"',
            '2,"Oh, no!",Rachel,surprise,negative,3,1,2,5,"0:00:04,000","0:00:04,600"',
        ],
    )
    table = load_meld(path)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert table["id"].tolist() == ["train/dia3_utt0", "train/dia3_utt1"]
    assert table["duration"].tolist() == pytest.approx([2.5, 0.6])
    assert table["label"].tolist() == ["joy", "surprise"]
    assert table["duration_source"].unique().tolist() == ["timestamps"]


def test_ids_are_qualified_by_split(tmp_path):
    row = '1,"Same keys.",Ross,joy,positive,0,0,1,1,"0:00:01,000","0:00:03,000"'
    meld_csv(tmp_path, [row], "train_sent_emo.csv")
    meld_csv(tmp_path, [row], "test_sent_emo.csv")
    table = load_meld(tmp_path, splits=("train", "test"))
    assert table["id"].tolist() == ["train/dia0_utt0", "test/dia0_utt0"]


def test_unparsable_time_names_file_row_column(tmp_path):
    path = meld_csv(
        tmp_path,
        [
            '1,"Fine.",Ross,joy,positive,0,0,1,1,"0:00:01,000","0:00:03,000"',
            '2,"Broken.",Ross,joy,positive,0,1,1,1,"0:00:04,000","soon"',
        ],
    )
    with pytest.raises(MeltError) as info:
        load_meld(path)
    assert info.value.file == str(path) and info.value.row == 2 and info.value.column == "EndTime"


def test_duplicate_id_is_an_error(tmp_path):
    row = '1,"Twice.",Ross,joy,positive,0,0,1,1,"0:00:01,000","0:00:03,000"'
    path = meld_csv(tmp_path, [row, row])
    with pytest.raises(MeltError, match="duplicate id") as info:
        load_meld(path)
    assert info.value.row == 2 and info.value.column == "id"


def test_missing_column_empty_file_and_non_utf8(tmp_path):
    no_speaker = tmp_path / "train_sent_emo.csv"
    no_speaker.write_text("Utterance,Emotion\nhi,joy\n", encoding="utf-8")
    with pytest.raises(MeltError, match="missing column"):
        load_meld(no_speaker)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(MeltError, match="empty"):
        load_table(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,text\na,caf\xe9 ok\n".encode("latin-1"))
    with pytest.raises(MeltError, match="UTF-8") as info:
        load_table(latin)
    assert info.value.row == 1


def test_generic_table_with_column_mapping(tmp_path):
    path = tmp_path / "mine.csv"
    pd.DataFrame(
        {"utt": ["u1", "u2"], "transcript": ["hello there", "go away"], "emo": ["Happy", "Frustrated"]}
    ).to_csv(path, index=False)
    table = load_table(path, {"id": "utt", "text": "transcript", "label": "emo"}, split="train")
    assert table["id"].tolist() == ["u1", "u2"]
    assert table["label"].tolist() == ["joy", "frustrated"]  # off-label kept, not coerced
    assert table["split"].tolist() == ["train", "train"]
    with pytest.raises(MeltError, match="not in the file"):
        load_table(path, {"text": "nope"})


def test_parquet_and_csv_round_trip(tmp_path):
    table = load_table(_tiny(tmp_path))
    for name in ("t.parquet", "t.csv"):
        write_table(table, tmp_path / name)
        back = read_table(tmp_path / name)
        pd.testing.assert_frame_equal(back, table, check_dtype=False)


def _tiny(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text(
        'id,text,label,start,end\na,one two three,joy,"0:00:01,000","0:00:02,500"\n', encoding="utf-8"
    )
    return path


def test_split_from_name():
    assert split_from_name("meld_train.csv") == "train"
    assert split_from_name("meld_test.csv") == "test"
    assert split_from_name("whatever.csv") is None


def test_melt_csv_keeps_llm_label_and_its_off_labels(tmp_path):
    path = tmp_path / "meld_test.csv"
    path.write_text(
        "filename,Sr_No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime,llm_label\n"
        'dia0_utt0.wav,1,Why would you do that,ross,anger,negative,0,0,1,1,"0:00:01,000","0:00:03,000",frustration\n',
        encoding="utf-8",
    )
    table = load_melt_csv(path)
    assert table.loc[0, "id"] == "test/dia0_utt0"
    assert table.loc[0, "speaker"] == "ross"
    assert table.loc[0, "label"] == "anger"
    assert table.loc[0, "llm_label"] == "frustration"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = write_table(load_table(_tiny(tmp_path)), tmp_path / "t.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_an_output_table_needs_a_known_suffix(tmp_path):
    with pytest.raises(MeltError, match=r"\.parquet or \.csv"):
        write_table(load_table(_tiny(tmp_path)), tmp_path / "t.txt")


def test_a_ragged_first_row_is_an_error_not_a_column_shift(tmp_path, melt_cli):
    path = tmp_path / "ragged.csv"
    path.write_text("id,text,label\na,hello,joy,extra\nb,bye,sad\n", encoding="utf-8")
    with pytest.raises(MeltError, match="4 fields but the header has 3") as info:
        load_table(path)
    assert info.value.file == str(path) and info.value.row == 1
    done = melt_cli("corpus", "import", path, "--out", tmp_path / "t.csv")
    assert done.code == 2 and len(done.stderr.strip().splitlines()) == 1 and "row 1" in done.stderr
    # a quoted comma is not a ragged row, and blank lines before the first row are skipped as pandas does
    fine = tmp_path / "fine.csv"
    fine.write_text('id,text,label\n\na,"hello, there",joy\n', encoding="utf-8")
    assert load_table(fine)["text"].tolist() == ["hello, there"]


def test_import_with_a_bad_start_value_names_row_and_column(tmp_path, melt_cli):
    path = tmp_path / "times.csv"
    path.write_text('id,text,start,end\na,hello,1.5,"0:00:03,000"\nb,bye,abc,4\n', encoding="utf-8")
    done = melt_cli("corpus", "import", path, "--out", tmp_path / "t.csv")
    assert done.code == 2 and "Traceback" not in done.stderr
    assert "row 2, column 'start': expected seconds or h:mm:ss,mmm, found 'abc'" in done.stderr
    path.write_text('id,text,start,end\na,hello,1.5,"0:00:03,000"\n', encoding="utf-8")
    table = load_table(path)
    assert table.loc[0, "duration"] == pytest.approx(1.5)  # numbers and h:mm:ss,mmm mixed


def test_import_mapping_onto_an_existing_column_is_an_error(tmp_path, melt_cli):
    path = tmp_path / "two_texts.csv"
    path.write_text("id,text,transcript\na,hello,hi there\n", encoding="utf-8")
    done = melt_cli("corpus", "import", path, "-c", "text=transcript", "--out", tmp_path / "t.csv")
    assert done.code == 2 and "Traceback" not in done.stderr
    assert "cannot map 'transcript' onto 'text': the file already has a column 'text'" in done.stderr
    with pytest.raises(MeltError, match="maps file column 'transcript' twice"):
        load_table(path, {"text": "transcript", "label": "transcript"})
    # renaming the existing column out of the way is fine
    table = load_table(path, {"text": "transcript", "original_text": "text"})
    assert table.loc[0, "text"] == "hi there" and table.loc[0, "original_text"] == "hello"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("id,text,duration\na,x,1.0\nb,y,-3\n", "duration -3.0 is negative"),
        ("id,text,duration\na,x,inf\n", "duration inf is not a finite number"),
        ("id,text,start,end\na,x,5.0,2.0\n", "duration -3.0 is negative (end before start?)"),
    ],
)
def test_negative_or_infinite_durations_are_rejected(tmp_path, rows, message):
    path = tmp_path / "d.csv"
    path.write_text(rows, encoding="utf-8")
    with pytest.raises(MeltError, match=re.escape(message)) as info:
        load_table(path)
    assert info.value.column == "duration"
    assert info.value.row == rows.count("\n") - 1
