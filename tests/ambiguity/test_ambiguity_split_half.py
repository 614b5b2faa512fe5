"""The split-half protocol: disjoint halves, seeded, single-rater utterances left out and counted; and the
paper's protocol and saturation on a case computed by hand."""

import json

import numpy as np
import pandas as pd
import pytest
from ambiguity_helpers import synthetic_corpus

from melt.ambiguity import AmbiguityConfig, analyse_ambiguity
from melt.ambiguity.distributions import read_human_votes
from melt.ambiguity.evaluate import split_half
from melt.ambiguity.metrics import bhattacharyya, jensen_shannon
from melt.corpus.labels import MELT_LABEL_SET


def human_votes_with_raters(counts):
    rows = []
    for i, raters in enumerate(counts):
        votes = {f"r{j}": ["anger", "joy", "neutral", "sadness"][(i + j) % 4] for j in range(raters)}
        rows.append({"id": f"u{i}", "text": "x", "votes": json.dumps(votes)})
    return read_human_votes(pd.DataFrame(rows), MELT_LABEL_SET)


def test_halves_are_disjoint_and_cover_every_rater():
    counts = [1, 2, 3, 4, 5, 6, 7, 0, 2, 3]
    human = human_votes_with_raters(counts)
    for seed in range(5):
        split = split_half(human, seed)
        reference = np.bincount(human.item[split.in_reference], minlength=len(counts))
        other = np.bincount(human.item[~split.in_reference], minlength=len(counts))
        for item, raters in enumerate(counts):
            assert reference[item] + other[item] == raters  # each rater in exactly one half
            if raters >= 2:
                assert reference[item] == -(-raters // 2) and other[item] == raters // 2
        assert split.eligible.tolist() == [c >= 2 for c in counts]
        assert split.reference + split.other == pytest.approx(human.sums)


def test_splits_are_seeded():
    human = human_votes_with_raters([4] * 30)
    first = split_half(human, 11).in_reference
    assert (split_half(human, 11).in_reference == first).all()
    assert any((split_half(human, seed).in_reference != first).any() for seed in (12, 13))


def test_left_out_utterances_are_counted():
    table, _ = synthetic_corpus(n=25, annotators=3)
    table.loc[0, "votes"] = json.dumps({"only": "joy"})
    table.loc[1, "votes"] = None
    result = analyse_ambiguity(table, None, AmbiguityConfig(seeds=[0, 1]))
    raters = result.human.raters_per_item
    scoring = result.scoring["split-half"]
    assert scoring["left_out_one_rater"] == int((raters == 1).sum()) >= 1
    assert scoring["left_out_without_human_votes"] == 1
    assert scoring["scored"] == int((raters >= 2).sum())
    assert set(result.metrics_per_seed["seed"]) == {0, 1}
    assert (result.metrics[result.metrics["tertile"] == "all"]["n"] == scoring["scored"]).all()


def test_paper_protocol_and_saturation_on_a_hand_case(tmp_path):
    # Two utterances, two human raters each, a panel of two.
    table = pd.DataFrame(
        {
            "id": ["a", "b"],
            "text": ["x", "y"],
            "votes": [json.dumps({"h1": "anger", "h2": "anger"}), json.dumps({"h1": "joy", "h2": "sadness"})],
        }
    )
    panel = pd.DataFrame(
        {
            "id": ["a", "a", "b", "b"],
            "annotator": [0, 1, 0, 1],
            "persona": ["p"] * 4,
            "temperature": [0.2, 0.4, 0.2, 0.4],
            "label": ["anger", "joy", "joy", "joy"],
            "status": ["ok"] * 4,
            "reason": [None] * 4,
        }
    )
    panel.to_parquet(tmp_path / "votes.parquet")
    result = analyse_ambiguity(table, tmp_path, AmbiguityConfig(seeds=[0], saturation_draws=3))
    # a: human (anger 1), synthetic (anger ½, joy ½), combined (anger ¾, joy ¼)
    # b: human (joy ½, sadness ½), synthetic (joy 1), combined (joy ¾, sadness ¼)
    k = {label: i for i, label in enumerate(MELT_LABEL_SET.labels)}

    def dist(**p):
        out = np.zeros((1, 7))
        for label, value in p.items():
            out[0, k[label]] = value
        return out

    human = np.vstack([dist(anger=1), dist(joy=0.5, sadness=0.5)])
    synthetic = np.vstack([dist(anger=0.5, joy=0.5), dist(joy=1)])
    combined = np.vstack([dist(anger=0.75, joy=0.25), dist(joy=0.75, sadness=0.25)])
    rows = result.metrics.set_index(["protocol", "source", "tertile"])
    assert rows.loc[("paper", "synthetic", "all"), "jsd"] == pytest.approx(
        jensen_shannon(synthetic, human).mean()
    )
    assert rows.loc[("paper", "combined", "all"), "bc"] == pytest.approx(
        bhattacharyya(combined, human).mean()
    )
    assert (
        rows.loc[("paper", "synthetic", "all"), "acc"] == 1.0
    )  # b: human tie joy/sadness -> joy, first in the set
    # a is unanimous (ambiguity 0), b a 50/50 split (ambiguity 1): a is low, b medium (2 utterances -> 1, 1, 0).
    assert result.tertile.tolist() == ["low", "medium"]
    assert rows.loc[("paper", "synthetic", "high"), "n"] == 0
    assert np.isnan(rows.loc[("paper", "synthetic", "high"), "jsd"])
    # Saturation with one annotator: the mean over draws of sub-panels {0} or {1}.
    saturation = result.saturation.set_index(["protocol", "source", "annotators"])
    one = saturation.loc[("paper", "synthetic", 1)]
    assert one["draws"] == 3
    by_annotator = {
        0: jensen_shannon(np.vstack([dist(anger=1), dist(joy=1)]), human).mean(),
        1: jensen_shannon(np.vstack([dist(joy=1), dist(joy=1)]), human).mean(),
    }
    assert min(by_annotator.values()) - 1e-12 <= one["jsd"] <= max(by_annotator.values()) + 1e-12
    assert saturation.loc[("paper", "synthetic", 2), "jsd"] == pytest.approx(
        jensen_shannon(synthetic, human).mean()
    )
    # Split-half: one rater per half; the reference is one of the two raters of each utterance.
    split_rows = result.metrics_per_seed
    assert set(split_rows["source"]) == {"human", "synthetic", "combined"}
