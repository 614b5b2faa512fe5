"""The whole Scaling Ambiguity path on an IEMOCAP-layout corpus built here: human votes read by the real loader,
a panel's votes from a real `melt annotate --panel --audio` run against the loopback server (which answers from
the loudness of the audio it decodes), and `melt ambiguity` with every output checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from ambiguity_helpers import check_outputs

from corpora import IemocapUtterance, Prosody, Speech, make_iemocap
from melt.corpus.emotion_corpora import load_iemocap
from melt.corpus.schema import read_table, write_table
from openai_server import FakeOpenAIServer
from timing import scaled

LOUD = Prosody(pitch=75, amplitude=170, speed=220)
SOFT = Prosody(pitch=35, amplitude=25, speed=130)
ANGRY, SAD = "Get out of my room right now.", "I miss her every single day."

#: (IEMOCAP label, raters, loud?) — clear and ambiguous utterances, some raters listing two labels or labels
#: outside MELT's set (Frustration), one utterance with a single rater (left out of the split-half protocol).
UTTERANCES = [
    ("ang", {"E1": "Anger;", "E2": "Anger;", "E3": "Anger;"}, True),
    ("ang", {"E1": "Anger;", "E2": "Frustration; Anger;", "E3": "Anger;"}, True),
    ("ang", {"E1": "Anger;", "E2": "Neutral;", "E3": "Frustration;", "E4": "Anger;"}, True),
    ("ang", {"E1": "Anger;", "E2": "Happiness;"}, True),
    ("neu", {"E1": "Neutral;", "E2": "Anger;", "E3": "Sadness;"}, True),
    ("ang", {"E1": "Anger;"}, True),
    ("sad", {"E1": "Sadness;", "E2": "Sadness;", "E3": "Sadness;"}, False),
    ("sad", {"E1": "Sadness;", "E2": "Neutral;", "E3": "Sadness;", "E4": "Frustration;"}, False),
    ("neu", {"E1": "Neutral;", "E2": "Sadness;"}, False),
    ("sad", {"E1": "Sadness; Neutral;", "E2": "Sadness;", "E3": "Neutral;"}, False),
    ("neu", {"E1": "Neutral;", "E2": "Neutral;", "E3": "Happiness;"}, False),
    ("hap", {"E1": "Happiness;", "E2": "Excited;", "E3": "Sadness;"}, False),
]


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    speech = Speech(tmp_path_factory.mktemp("ambiguity_speech"))
    root = tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release"
    utterances = [
        IemocapUtterance(
            label,
            raters,
            dialog="Ses01F_impro01" if i < 6 else "Ses02M_impro03",
            speaker="FM"[i % 2],
            # A line of its own per utterance: identical requests (same speaker, words and audio) share a reply.
            text=f"{ANGRY if loud else SAD} Take {i}.",
            prosody=LOUD if loud else SOFT,
        )
        for i, (label, raters, loud) in enumerate(UTTERANCES)
    ]
    make_iemocap(root, utterances, speech)
    return root


def melt(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "melt", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=scaled(300),
        stdin=subprocess.DEVNULL,
    )


def test_iemocap_human_votes_and_a_real_audio_panel_through_melt_ambiguity(iemocap, tmp_path):
    table = load_iemocap(iemocap)
    assert len(table) == len(UTTERANCES) and table["audio"].notna().all()
    corpus_file = write_table(table, tmp_path / "iemocap.parquet")
    run = tmp_path / "panel_run"
    with FakeOpenAIServer() as server:
        annotated = melt(
            "annotate", corpus_file, "--out", run, "--base-url", server.base_url,
            "--model", "Qwen/Qwen2-Audio-7B-Instruct", "--panel", "scaling-ambiguity", "--annotators", "8",
            "--audio", "--timeout", "10", "--quiet",
        )  # fmt: skip
        heard = [e for e in server.entries() if e.get("text")]
    assert annotated.returncode == 0, annotated.stderr
    assert len(heard) == 8 * len(UTTERANCES) and all(len(e["audio"]) == 1 for e in heard)
    assert len({e["temperature"] for e in heard}) == 8

    votes_file = run / "votes.parquet"
    panel = pd.read_parquet(votes_file)
    # The panel heard each utterance's own recording: loud ones anger, soft ones sadness, for every annotator.
    loud = {uid: text.startswith(ANGRY) for uid, text in zip(table["id"], table["text"], strict=True)}
    assert sum(loud.values()) == 6
    for row in panel.itertuples():
        assert row.status == "ok" and row.label == ("anger" if loud[row.id] else "sadness")

    out = tmp_path / "ambiguity"
    result = melt("ambiguity", corpus_file, "--votes", run, "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    corpus = read_table(corpus_file)
    summary = check_outputs(out, corpus, panel, corpus_file=corpus_file, votes_file=votes_file)
    assert summary["panel"]["annotators"] == 8 and summary["panel"]["valid_votes"] == 8 * len(UTTERANCES)
    assert summary["human"]["off_set_labels"]["frustration"] == 3
    assert summary["scoring"]["split-half"]["left_out_one_rater"] == 1
    # The panel agrees with itself completely (one label per utterance): Fleiss' κ of 1 in both reports.
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["panel"]["fleiss_kappa"] == 1.0
    kappa = {(a["raters"], a["tertile"]): a["fleiss_kappa"] for a in summary["agreement"]}
    assert kappa[("panel", "all")] == pytest.approx(1.0)


def test_a_panel_files_weights_reach_melt_ambiguity_as_they_weigh_the_annotations(tmp_path):
    """Annotator weights of a panel file: the synthetic distribution of melt ambiguity is the annotation run's."""
    from melt.ambiguity import analyse_ambiguity
    from melt.annotate import run_annotation
    from melt.annotate.config import AnnotateConfig
    from melt.corpus.schema import conform

    panel_file = tmp_path / "weighted.yaml"
    panel_file.write_text(
        "annotators: 3\npersonas: [{name: a, focus: Listen.}, {name: b, focus: Read.}]\n"
        "temperatures: [0.2, 0.8, 0.9]\nweights: [3, 1, 1]\n"
    )
    corpus = conform(
        pd.DataFrame(
            {
                "id": ["u0", "u1", "u2"],
                "speaker": ["A", "B", "A"],
                # split-at 0.5: annotator 0 (weight 3) says anger, annotators 1 and 2 joy.
                "text": [f"Line {i} [[split-at:0.5]]." for i in range(3)],
                "votes": [json.dumps({"E1": "anger", "E2": v}) for v in ("joy", "anger", "sadness")],
            }
        )
    )
    with FakeOpenAIServer() as server:
        config = AnnotateConfig(
            base_url=server.base_url, model="gpt-4o-2024-08-06", panel=str(panel_file), timeout=scaled(5)
        )
        result = run_annotation(corpus, config, tmp_path / "run")
    assert result.complete
    assert json.loads(result.annotations["distribution"].iloc[0]) == {"anger": 0.6, "joy": 0.4}
    ambiguity = analyse_ambiguity(corpus, tmp_path / "run")
    table = ambiguity.distributions().set_index("id")
    for uid in ("u0", "u1", "u2"):
        assert table.at[uid, "synthetic_anger"] == pytest.approx(0.6)
        assert table.at[uid, "synthetic_joy"] == pytest.approx(0.4)
        assert table.at[uid, "panel_votes"] == 3 and table.at[uid, "panel_weight"] == pytest.approx(5.0)
    # combined: the two human raters (weight 1 each) and the panel's weight 5 (W = 1).
    assert table.at["u1", "combined_anger"] == pytest.approx((2 + 3) / 7)
