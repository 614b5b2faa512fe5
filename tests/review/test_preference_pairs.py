"""`melt preference pairs`: the items and their balanced, seeded A/B order."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from melt.review.pairs import PairsSettings, build_pairs, participant_plan, read_pairs

LABELS = ["anger", "joy", "neutral", "sadness"]


@pytest.fixture
def table(review_audio, tmp_path):
    """40 utterances over 4 human labels; the LLM's label differs on every third row."""
    _, audio = review_audio
    files = list(audio.values())
    rows = []
    for i in range(40):
        human = LABELS[i % 4]
        rows.append(
            {
                "id": f"test/dia{i}_utt0",
                "text": f"line {i}",
                "audio": str(files[i % len(files)]),
                "label": human,
                "llm_label": LABELS[(i + 1) % 4] if i % 3 == 0 else human,
            }
        )
    path = tmp_path / "table.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_balanced_order(table):
    pairs = build_pairs(pd.read_csv(table), PairsSettings(a="llm_label", b="label", seed=3), source=table)
    assert len(pairs) == 40 and list(pairs["item"]) == list(range(40))
    assert set(pairs["source_a"]) == {"llm_label"} and set(pairs["source_b"]) == {"label"}
    for _, part in pairs.groupby("group"):  # half of each group shows A first
        assert abs(int(part["a_first"].sum()) * 2 - len(part)) <= 1
    plans = [participant_plan(pairs, number) for number in range(4)]
    for plan in plans:
        assert sorted(item for item, _ in plan) == list(range(40))  # every item once
        sides = dict(plan)
        for _, part in pairs.groupby("group"):
            shown_a_first = sum(sides[i] for i in part["item"])
            assert abs(shown_a_first * 2 - len(part)) <= 1
    for item in range(40):  # each item alternates sides from one participant to the next
        sides = [dict(plan)[item] for plan in plans]
        assert sides == [sides[0], not sides[0], sides[0], not sides[0]]
    assert [i for i, _ in plans[0]] != [i for i, _ in plans[1]]  # orders differ between participants
    # reproducible from the seed, different with another
    again = build_pairs(pd.read_csv(table), PairsSettings(a="llm_label", b="label", seed=3), source=table)
    assert again.equals(pairs) and participant_plan(again, 2) == plans[2]
    other = build_pairs(pd.read_csv(table), PairsSettings(a="llm_label", b="label", seed=4), source=table)
    assert not other["a_first"].equals(pairs["a_first"])


def test_filters(table, tmp_path, melt_cli):
    out = tmp_path / "pairs.parquet"
    result = melt_cli(
        "preference", "pairs", table, "--a", "llm_label", "--b", "label", "--out", out, "--only-different",
        "--per-label", "2", "--seed", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "same description twice" not in result.stdout
    pairs = read_pairs(out)
    made = json.loads((tmp_path / "pairs.json").read_text())
    assert made["items"] == len(pairs) and made["settings"]["per_label"] == 2 and made["rows_in_table"] == 40
    assert (pairs["description_a"] != pairs["description_b"]).all()
    assert Counter(pairs["group"]) == {label: 2 for label in LABELS}  # 14 different rows, 3-4 per label
    assert pairs["media"].map(lambda p: p.startswith("/")).all()
    assert pairs["media_sha256"].str.len().eq(64).all()
    csv = tmp_path / "pairs.csv"
    result = melt_cli("preference", "pairs", table, "--a", "llm_label", "--b", "label", "--out", csv)
    assert result.code == 0, result.stderr
    assert read_pairs(csv)["a_first"].dtype == "boolean"
    # identical descriptions leave a participant nothing to choose: the 26 of them are pointed out
    assert "26 items show the same description twice" in " ".join(result.stdout.split())
    # --group: the report groups by another column
    grouped = build_pairs(
        pd.read_csv(table), PairsSettings(a="llm_label", b="label", group="llm_label"), source=table
    )
    assert list(grouped["group"]) == list(pd.read_csv(table)["llm_label"])


def test_pairs_errors(table, tmp_path, melt_cli):
    frame = pd.read_csv(table)
    out = tmp_path / "pairs.parquet"
    missing = frame.copy()
    missing.loc[5, "audio"] = str(tmp_path / "gone.wav")
    missing.to_csv(tmp_path / "missing.csv", index=False)
    text = frame.copy()
    text.loc[0, "audio"] = str(tmp_path / "notes.txt")
    text.to_csv(tmp_path / "text.csv", index=False)
    same = frame.assign(llm_label=frame["label"])
    same.to_csv(tmp_path / "same.csv", index=False)
    cases = [
        (
            (tmp_path / "missing.csv", "--a", "llm_label", "--b", "label"),
            "row 6, column 'audio': media file not found",
        ),
        ((tmp_path / "text.csv", "--a", "llm_label", "--b", "label"), "not a playable media type"),
        ((table, "--a", "label", "--b", "label"), "name the same column"),
        ((table, "--a", "gpt", "--b", "label"), "missing column(s) ['gpt']"),
        ((tmp_path / "same.csv", "--a", "llm_label", "--b", "label", "--only-different"), "--only-different"),
        ((table, "--b", "label"), "a: Field required"),
        ((table, "--a", "llm_label", "--b", "label", "--seed", "-1"), "seed"),
    ]
    for arguments, message in cases:
        result = melt_cli("preference", "pairs", *arguments, "--out", out)
        assert result.code == 2, (arguments, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
