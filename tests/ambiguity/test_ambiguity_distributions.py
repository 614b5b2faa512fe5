"""Distributions from human and panel votes: weights, labels outside the set, bad votes, ambiguity, tertiles."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from melt.ambiguity.distributions import (
    ambiguity,
    normalise,
    pool,
    read_human_votes,
    read_panel_votes,
    tertiles,
)
from melt.corpus.labels import MELT_LABEL_SET, MELT_LABELS, LabelSet
from melt.errors import MeltError

K = {label: i for i, label in enumerate(MELT_LABELS)}


def corpus(votes: list[object], ids=None) -> pd.DataFrame:
    ids = ids or [f"u{i}" for i in range(len(votes))]
    return pd.DataFrame(
        {
            "id": ids,
            "text": ["..."] * len(votes),
            "votes": [v if v is None or isinstance(v, str) else json.dumps(v) for v in votes],
        }
    )


def test_human_votes_keep_rater_weights_and_drop_labels_outside_the_set():
    table = corpus(
        [
            {
                "r1": {"anger": 1.0},
                "r2": {"anger": 0.5, "sadness": 0.5},
                "r3": "happy",
            },  # older form, synonym
            {"r1": {"frustration": 0.5, "anger": 0.5}, "r2": {"neutral": 1}},
            {"r1": {"frustration": 1.0}},
            "{}",
            None,
            "null",
            '{"r1": {}}',
        ]
    )
    human = read_human_votes(table, MELT_LABEL_SET, source="c.parquet")
    distributions = normalise(human.sums)
    assert distributions[0, K["anger"]] == pytest.approx(1.5 / 3)
    assert distributions[0, K["sadness"]] == pytest.approx(0.5 / 3)
    assert distributions[0, K["joy"]] == pytest.approx(1 / 3)
    # The off-set half of r1 is dropped, not redistributed: anger ½ against neutral 1.
    assert distributions[1, K["anger"]] == pytest.approx(0.5 / 1.5)
    assert np.isnan(distributions[2:]).all()  # nothing on the label set: undefined, not zero
    counts = human.counts
    assert counts["utterances_without_votes"] == 3
    assert counts["utterances_without_votes_in_set"] == 2  # all off the set, or a rater with no label
    assert counts["raters_without_weight"] == 1
    assert counts["raters_all_off_set"] == 1
    assert counts["votes_off_set"] == 2
    assert counts["off_set_labels"] == {"frustration": 2}
    assert counts["weight_off_set"] == pytest.approx(1.5)
    assert human.raters_per_item.tolist() == [3, 2, 0, 0, 0, 0, 0]
    assert counts["raters_per_utterance"] == {"2": 1, "3": 1}


def test_weights_not_summing_to_one_are_rescaled_and_counted():
    table = corpus([{"r1": {"anger": 2, "joy": 2}, "r2": {"joy": 0.3}}, {"r1": {"anger": 0}}])
    human = read_human_votes(table, MELT_LABEL_SET)
    assert human.counts["raters_renormalised"] == 2
    assert human.counts["raters_without_weight"] == 1
    # each rater weighs 1 in the end: anger ½, joy ½ + 1
    assert normalise(human.sums)[0, K["joy"]] == pytest.approx(1.5 / 2)


@pytest.mark.parametrize(
    ("votes", "message"),
    [
        ('{"r1": "anger",', "votes must be JSON"),
        ('["anger", "joy"]', "expected an object"),
        ('{"r1": ["anger", "joy"]}', "expected a label or"),
        ('{"r1": {"anger": -1}}', "must be a finite number"),
        ('{"r1": {"anger": "1"}}', "must be a finite number"),
    ],
)
def test_malformed_votes_name_the_row(votes, message):
    table = corpus(['{"r1": "joy"}', votes])
    with pytest.raises(MeltError, match=message) as info:
        read_human_votes(table, MELT_LABEL_SET, source="c.csv")
    assert info.value.row == 2 and info.value.column == "votes" and info.value.file == "c.csv"


def test_votes_that_are_not_json_text_name_the_row():
    table = pd.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "votes": ['{"r": "joy"}', {"r": "joy"}]})
    with pytest.raises(MeltError, match="votes must be JSON text, got dict") as info:
        read_human_votes(table, MELT_LABEL_SET)
    assert info.value.row == 2


def test_a_corpus_without_human_votes_is_an_error():
    with pytest.raises(MeltError, match="no 'votes' column"):
        read_human_votes(pd.DataFrame({"id": ["a"], "text": ["x"]}), MELT_LABEL_SET)
    with pytest.raises(MeltError, match="no human votes on the label set in any of the 3 rows"):
        read_human_votes(corpus(["{}", None, ""]), MELT_LABEL_SET)
    with pytest.raises(MeltError, match=re.escape("only labels outside the set: {'frustration': 1}")):
        read_human_votes(corpus([{"r": "frustration"}]), MELT_LABEL_SET)


def test_pool_weights_synthetic_votes():
    human = np.array([[1.0, 1.0, 0.0]])  # two raters: anger, joy
    synthetic = np.array([[3.0, 0.0, 1.0]])  # panel: 3 anger, 1 sadness
    combined = pool(human, synthetic, 0.5)
    assert combined[0] == pytest.approx([2.5 / 4, 1 / 4, 0.5 / 4])
    assert pool(human, synthetic, 0.0)[0] == pytest.approx([0.5, 0.5, 0])
    assert pool(human, synthetic, 1.0)[0] == pytest.approx([4 / 6, 1 / 6, 1 / 6])


def test_ambiguity_norms_and_tertiles_break_ties_by_id():
    sums = np.zeros((7, 7))
    sums[0, :2] = 1  # 50/50: 1 under the paper's rule
    sums[1, 0] = 3  # unanimous: 0
    sums[2, 0] = 3
    sums[3, 0] = 3
    sums[4, :3] = [2, 1, 1]
    sums[5, :3] = 1  # 1/3 each: 1 under the paper's rule
    values = ambiguity(sums, "present")
    assert values[0] == pytest.approx(1) and values[5] == pytest.approx(1)
    assert np.isnan(values[6])
    assert ambiguity(sums, "classes")[0] == pytest.approx(math.log(2) / math.log(7))
    ids = np.array(["f", "c", "b", "a", "e", "d", "g"])
    cut = tertiles(values, ids)
    # ranks: a, b, c (0, ties by id) | e | d, f (1, ties by id); 6 defined values -> 2 per tertile
    assert dict(zip(ids, cut, strict=True)) == {
        "a": "low", "b": "low", "c": "medium", "e": "medium", "d": "high", "f": "high", "g": None,
    }  # fmt: skip
    # Reordering the rows changes nothing.
    order = np.array([6, 5, 4, 3, 2, 1, 0])
    assert list(tertiles(values[order], ids[order])) == list(cut[order])


def test_tertile_sizes_differ_by_at_most_one():
    for n in range(1, 12):
        cut = tertiles(np.zeros(n), np.array([f"{i:02d}" for i in range(n)]))
        sizes = [int((cut == name).sum()) for name in ("low", "medium", "high")]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def panel_frame(rows):
    return pd.DataFrame(
        rows, columns=["id", "annotator", "persona", "temperature", "label", "status", "reason"]
    )


def test_panel_votes_count_only_valid_votes_on_the_set(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    panel_frame(
        [
            ("u0", 0, "tone", 0.2, "anger", "ok", None),
            ("u0", 1, "words", 0.4, "Angry", "ok", None),  # synonym
            ("u0", 2, "cues", 0.6, "frustration", "ok", None),  # off the set
            ("u1", 0, "tone", 0.2, None, "invalid", "unparseable"),
            ("u1", 1, "words", 0.4, None, "failed", "HTTP 500"),
            ("u1", 2, "cues", 0.6, None, "ok", None),  # ok without a label
            ("zz", 0, "tone", 0.2, "joy", "ok", None),  # not in the corpus
        ]
    ).to_parquet(run / "votes.parquet")
    panel = read_panel_votes(run, np.array(["u0", "u1", "u2"]), MELT_LABEL_SET)
    assert panel.annotators == ["0", "1", "2"]
    assert panel.sums()[0, K["anger"]] == 2 and panel.sums()[1].sum() == 0
    counts = panel.counts
    assert counts["valid_votes"] == 2
    assert counts["votes_off_set"] == 1 and counts["off_set_labels"] == {"frustration": 1}
    assert counts["ok_without_label"] == 1
    assert counts["status"] == {"failed": 1, "invalid": 1, "ok": 5}
    assert counts["ids_not_in_corpus"] == 1 and counts["ids_not_in_corpus_examples"] == ["zz"]
    assert counts["corpus_ids_not_in_panel"] == 1  # u2
    assert counts["utterances_without_valid_votes"] == 1  # u1
    assert panel.temperatures == {"0": 0.2, "1": 0.4, "2": 0.6}
    # Off a four-label set, 'anger' stays and the synonym still maps.
    four = read_panel_votes(run / "votes.parquet", np.array(["u0"]), LabelSet.from_labels(["anger", "joy"]))
    assert four.sums()[0].tolist() == [2, 0]


def test_bad_panel_files_are_errors(tmp_path):
    ids = np.array(["u0"])
    with pytest.raises(MeltError, match=r"no votes\.parquet in this folder"):
        read_panel_votes(tmp_path, ids, MELT_LABEL_SET)
    path = tmp_path / "votes.parquet"
    pd.DataFrame({"id": ["u0"], "label": ["joy"]}).to_parquet(path)
    with pytest.raises(MeltError, match=r"missing column\(s\) \['annotator', 'status'\]"):
        read_panel_votes(path, ids, MELT_LABEL_SET)
    panel_frame(
        [("u0", 0, "p", 0.1, "joy", "ok", None), ("u0", 0, "p", 0.1, "anger", "ok", None)]
    ).to_parquet(path)
    with pytest.raises(MeltError, match="a second row for id 'u0' and annotator 0") as info:
        read_panel_votes(path, ids, MELT_LABEL_SET)
    assert info.value.row == 2
    panel_frame([("x", 0, "p", 0.1, "joy", "ok", None)]).to_parquet(path)
    with pytest.raises(MeltError, match="none of the 1 ids in the votes is in the corpus"):
        read_panel_votes(path, ids, MELT_LABEL_SET)


def test_api_tables_are_checked_like_files():
    with pytest.raises(MeltError, match="duplicate id 'a'"):
        read_human_votes(corpus([{"r": "joy"}, {"r": "joy"}], ids=["a", "a"]), MELT_LABEL_SET)
    with pytest.raises(MeltError, match=r"missing column\(s\) \['id'\]"):
        read_human_votes(pd.DataFrame({"votes": ['{"r": "joy"}']}), MELT_LABEL_SET)


def test_panel_without_optional_columns_or_with_odd_temperatures(tmp_path):
    path = tmp_path / "votes.csv"
    pd.DataFrame(
        {"id": ["u0", "u0"], "annotator": [1, 2], "label": ["joy", "anger"], "status": ["ok", "ok"],
         "temperature": ["hot", "0.5"]}
    ).to_csv(path, index=False)  # fmt: skip
    panel = read_panel_votes(path, np.array(["u0"]), MELT_LABEL_SET)
    assert panel.temperatures == {"2": 0.5} and panel.personas == {}
    assert panel.sums()[0, K["joy"]] == 1 and panel.sums()[0, K["anger"]] == 1


def test_panel_votes_weigh_their_annotators_weight(tmp_path):
    path = tmp_path / "votes.parquet"
    frame = panel_frame(
        [
            ("u0", 0, "calm", 0.2, "anger", "ok", None),
            ("u0", 1, "keen", 0.8, "joy", "ok", None),
            ("u1", 0, "calm", 0.2, "joy", "ok", None),
            ("u1", 1, "keen", 0.8, None, "invalid", "off the set"),
        ]
    )
    frame.assign(weight=[3.0, 1.0, 3.0, 1.0]).to_parquet(path)
    panel = read_panel_votes(path, np.array(["u0", "u1"]), MELT_LABEL_SET)
    sums = panel.sums()
    assert sums[0, K["anger"]] == 3 and sums[0, K["joy"]] == 1 and sums[1, K["joy"]] == 3
    assert normalise(sums)[0, K["anger"]] == pytest.approx(0.75)
    # A sub-panel (the saturation curve) keeps each annotator's own weight.
    assert panel.sums(np.array([1]))[0, K["joy"]] == 1
    assert panel.counts["weights"] == {"0": 3.0, "1": 1.0}
    # Without the column every vote weighs 1.
    frame.to_parquet(path)
    assert read_panel_votes(path, np.array(["u0", "u1"]), MELT_LABEL_SET).sums()[0, K["anger"]] == 1


@pytest.mark.parametrize(
    ("weights", "message", "row"),
    [
        ([1.0, -2.0], "weight must be a positive number, got -2.0", 2),
        ([1.0, float("nan")], "weight must be a positive number", 2),
        ([1.0, 2.0], "annotator 0 has two weights", 2),
    ],
)
def test_bad_panel_weights_are_errors_naming_the_row(tmp_path, weights, message, row):
    path = tmp_path / "votes.parquet"
    panel_frame([("u0", 0, "p", 0.1, "joy", "ok", None), ("u1", 0, "p", 0.1, "joy", "ok", None)]).assign(
        weight=weights
    ).to_parquet(path)
    with pytest.raises(MeltError, match=message) as info:
        read_panel_votes(path, np.array(["u0", "u1"]), MELT_LABEL_SET)
    assert info.value.row == row and info.value.column == "weight"
