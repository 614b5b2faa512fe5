"""Panels of simulated annotators and audio, through the real engine against the loopback server: the server
decodes each input_audio part and answers from its loudness, so a right label proves the audio arrived intact."""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
import soundfile
from annotate_helpers import FakeOpenAIServer, fast_config

from corpora import Prosody, Speech
from melt.annotate import estimate_run, run_annotation
from melt.annotate.panel import SCALING_AMBIGUITY, load_panel
from melt.annotate.store import STORE_NAME
from melt.corpus.schema import conform
from melt.errors import MeltError

LOUD = Prosody(amplitude=160)
SOFT = Prosody(amplitude=25)
LINES = ("I can't believe you did that to me again.", "We were on a break, and everybody knows it.")


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """Two espeak-ng lines, each loud and soft: {(line, "loud"|"soft"): wav path}."""
    speech = Speech(tmp_path_factory.mktemp("panel_speech"))
    return {
        (i, name): speech.source(text, prosody)
        for i, text in enumerate(LINES)
        for name, prosody in (("loud", LOUD), ("soft", SOFT))
    }


def audio_table(voices, loudness: list[str]) -> pd.DataFrame:
    """One utterance per loudness, lines in turn; each transcript numbered, so no two requests are the same."""
    rows = [
        {
            "id": f"Ses01F_impro01_F{i:03d}",
            "speaker": "Ses01F",
            "text": f"{LINES[i % 2]} ({i})",
            "audio": str(voices[(i % 2, level)]),
        }
        for i, level in enumerate(loudness)
    ]
    return conform(pd.DataFrame(rows))


def text_table(texts: list[str]) -> pd.DataFrame:
    return conform(
        pd.DataFrame([{"id": f"u{i}", "speaker": "Ses02M", "text": t} for i, t in enumerate(texts)])
    )


def panel_config(server: FakeOpenAIServer, **overrides):
    settings = {"model": "Qwen/Qwen2-Audio-7B-Instruct", "panel": "scaling-ambiguity", "timeout": 5.0}
    return fast_config(server, **{**settings, **overrides})


def asked(server: FakeOpenAIServer) -> list[dict]:
    return [e for e in server.entries() if e.get("text")]


# -- the panel's annotators -----------------------------------------------------------------------------------


def test_scaling_ambiguity_annotators_focus_and_temperature_by_k_mod_5():
    bands = [(0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.93)]
    members = load_panel("scaling-ambiguity", 20).members()
    assert len(members) == 20
    for member in members:
        k = member.index
        assert member.persona == SCALING_AMBIGUITY.personas[k % 5].name
        low, high = bands[k % 5]
        assert max(low - 0.05, 0.1) <= member.temperature <= min(high + 0.05, 1.0)
    # Fixed per annotator: the same in every load, whatever the panel's size.
    assert [m.temperature for m in load_panel("scaling-ambiguity", 8).members()] == [
        m.temperature for m in members[:8]
    ]
    assert len({m.temperature for m in members}) == 20
    assert SCALING_AMBIGUITY.annotators == 8
    assert len({p.focus for p in SCALING_AMBIGUITY.personas}) == 5


def test_a_panel_file_defines_personas_temperatures_weights_and_size(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: two-ears\nannotators: 3\npersonas:\n  - {name: calm, focus: Listen calmly.}\n"
        "  - {name: keen, focus: Listen keenly.}\ntemperatures: [0.2, 0.8]\nweights: [3, 1]\n"
    )
    members = load_panel(str(path)).members()
    assert [(m.persona, m.temperature, m.weight) for m in members] == [
        ("calm", 0.2, 3.0),
        ("keen", 0.8, 1.0),
        ("calm", 0.2, 3.0),
    ]
    assert len(load_panel(str(path), annotators=1).members()) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("personas: []\ntemperatures: [0.5]\n", "personas"),
        ("personas: [{name: a, focus: b}]\n", "either temperatures"),
        ("personas: [{name: a, focus: b}]\ntemperatures: [0.5]\ntemperature_bands: [[0.1, 0.2]]\n", "either"),
        ("personas: [{name: a, focus: b}]\ntemperature_bands: [[0.9, 0.1]]\n", "band"),
        ("personas: [{name: a, focus: b}]\ntemperatures: [3]\n", "within"),
        ("personas: [{name: a, focus: b}]\ntemperatures: [0.5]\nweights: [-1]\n", "weights"),
        ("personas: [{name: a, focus: b}]\ntemperatures: [0.5]\nannotators: 0\n", "annotators"),
        ("personas: [{name: a}]\ntemperatures: [0.5]\n", "focus"),
        ("personas: [{name: a, focus: b}, {name: a, focus: c}]\ntemperatures: [0.5]\n", "differ"),
        ("personas: [{name: a, focus: b}]\ntemperatures: [0.5]\ntemprature: 1\n", "temprature"),
        ("- just a list\n", "mapping"),
        ("personas: [unclosed\n", "YAML"),
    ],
)
def test_a_bad_panel_file_is_one_error_naming_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(MeltError, match=message) as caught:
        load_panel(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_panel_name_is_an_error():
    with pytest.raises(MeltError, match="neither a built-in panel"):
        load_panel("scaling-ambiguty")


# -- a panel of 8 with audio ----------------------------------------------------------------------------------


def test_a_panel_of_8_hears_the_audio_with_8_distinct_temperatures(tmp_path, voices):
    loudness = ["loud", "soft", "soft", "loud", "soft"]
    table = audio_table(voices, loudness)
    with FakeOpenAIServer() as server:
        config = panel_config(server, annotators=8, audio=True)
        result = run_annotation(table, config, tmp_path / "run")
        entries = asked(server)
        # A rerun sends nothing: every vote is in the store, the probe's result remembered.
        before = len(server.entries())
        rerun = run_annotation(table, config, tmp_path / "run")
        assert len(server.entries()) == before
    assert rerun.stats.cached == 40 and rerun.annotations.equals(result.annotations)
    # 5 utterances × 8 annotators, each asked once, with the annotator's own temperature and focus.
    assert len(entries) == 40 and len({e["key"] for e in entries}) == 40
    temperatures = {e["temperature"] for e in entries}
    assert len(temperatures) == 8
    assert temperatures == {m.temperature for m in SCALING_AMBIGUITY.members()}
    assert len({e["system"] for e in entries}) == 5  # five focus instructions
    # Each annotator is asked for one label from the set: an answer schema with the emotion alone, an enum.
    labels = list(config.labels.labels)
    for entry in entries:
        assert entry["response_format"] == "json_schema"
        assert entry["answer_schema"]["required"] == ["emotion"]
        (emotion,) = entry["answer_schema"]["properties"].values()
        assert emotion["type"] == "string" and sorted(e.lower() for e in emotion["enum"]) == sorted(labels)
    for entry in entries:
        (audio,) = entry["audio"]
        line = int(entry["text"].rsplit("(", 1)[1].rstrip(")")) % 2
        path = voices[(line, "loud" if entry["emotion"] == "anger" else "soft")]
        info = soundfile.info(str(path))
        assert audio["sample_rate"] == 16000 and audio["channels"] == 1 and audio["format"] == "wav"
        assert audio["seconds"] == pytest.approx(info.duration, abs=1 / 16000)
    # The label follows the loudness of each utterance's own audio, for all 8 annotators.
    assert result.annotations["emotion"].tolist() == ["anger" if x == "loud" else "sadness" for x in loudness]
    assert result.annotations["agreement"].tolist() == [1.0] * 5
    assert result.annotations["samples"].tolist() == [8] * 5
    assert json.loads(result.annotations["distribution"].iloc[0]) == {"anger": 1.0}

    votes = pd.read_parquet(tmp_path / "run" / "votes.parquet")
    assert votes.columns.tolist()[:7] == [
        "id",
        "annotator",
        "persona",
        "temperature",
        "label",
        "status",
        "reason",
    ]
    assert len(votes) == 40 and (votes["status"] == "ok").all() and votes["reason"].isna().all()
    assert sorted(set(votes["annotator"])) == list(range(8))
    assert votes.groupby("annotator")["temperature"].nunique().eq(1).all()
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["panel"]["fleiss_kappa"] == 1.0 and run["panel"]["fleiss_kappa_utterances"] == 5
    table = pd.read_parquet(tmp_path / "run" / "annotations.parquet")
    assert (table["panel_fleiss_kappa"] == 1.0).all() and "panel_fleiss_kappa" in run["columns"]
    assert run["audio"]["check"]["status"] == "hears audio"
    assert run["audio"]["utterances"] == 5 and run["identity"]["audio"]["audio_max_seconds"] == 30.0
    assert run["identity"]["panel"]["panel"] == "scaling-ambiguity"

    # The store keeps the audio's sha256 and segment, never its base64: every request is a few kB.
    with sqlite3.connect(tmp_path / "run" / STORE_NAME) as db:
        requests = [r for (r,) in db.execute("SELECT request FROM requests")]
    assert max(len(r) for r in requests) < 8000
    stored_audio = [json.loads(r)["messages"][-1]["content"][-1] for r in requests if "input_audio" in r]
    assert all(set(a["input_audio"]) >= {"sha256", "start", "seconds"} for a in stored_audio)
    assert not any("data" in a["input_audio"] for a in stored_audio)


def test_more_annotators_continue_the_folder_and_a_changed_panel_is_refused(tmp_path):
    table = text_table(["One line [[split-at:0.5]].", "Another line."])
    with FakeOpenAIServer() as server:
        run_annotation(table, panel_config(server, annotators=3), tmp_path / "run")
        first = len(asked(server))
        result = run_annotation(table, panel_config(server, annotators=5), tmp_path / "run")
        # Only annotators 3 and 4 are asked: the first three are in the store.
        assert len(asked(server)) - first == 4
        assert result.stats.cached == 6
        other = tmp_path / "other.yaml"
        other.write_text("personas: [{name: a, focus: Listen.}]\ntemperatures: [0.3]\n")
        with pytest.raises(MeltError, match="panel"):
            run_annotation(table, panel_config(server, panel=str(other)), tmp_path / "run")
    votes = pd.read_parquet(tmp_path / "run" / "votes.parquet")
    assert len(votes) == 10
    first_row = votes[votes["id"] == "u0"].sort_values("annotator")
    # split-at 0.5: annotators at or above 0.5 say joy, the others anger.
    assert first_row["label"].tolist() == ["joy" if t >= 0.5 else "anger" for t in first_row["temperature"]]


def test_weights_of_a_panel_file_weigh_the_distribution(tmp_path):
    path = tmp_path / "weighted.yaml"
    path.write_text(
        "annotators: 2\npersonas: [{name: a, focus: Listen.}, {name: b, focus: Read.}]\n"
        "temperatures: [0.2, 0.8]\nweights: [3, 1]\n"
    )
    table = text_table(["Weighted line [[split-at:0.5]]."])
    with FakeOpenAIServer() as server:
        result = run_annotation(table, panel_config(server, panel=str(path)), tmp_path / "run")
    row = result.annotations.iloc[0]
    assert json.loads(row["distribution"]) == {"anger": 0.75, "joy": 0.25}
    assert row["emotion"] == "anger" and row["agreement"] == 0.75
    assert pd.read_parquet(tmp_path / "run" / "votes.parquet")["weight"].tolist() == [3.0, 1.0]


# -- votes that are not votes ---------------------------------------------------------------------------------


def test_zero_valid_votes_and_off_set_or_empty_answers_are_dropped_and_counted(tmp_path):
    table = text_table(
        [
            "Nobody agrees on this one [[offlabel-always]].",  # every annotator, re-ask included: frustration
            "Hot annotators go off the list [[offlabel-above:0.6]].",
            "Hot annotators say nothing [[empty-above:0.6]].",
            "A plain line.",
        ]
    )
    with FakeOpenAIServer() as server:
        result = run_annotation(table, panel_config(server, annotators=8), tmp_path / "run")
    hot = sum(m.temperature >= 0.6 for m in SCALING_AMBIGUITY.members())
    assert 0 < hot < 8
    annotations = result.annotations.set_index("id")
    assert annotations.at["u0", "status"] == "invalid" and pd.isna(annotations.at["u0", "emotion"])
    assert pd.isna(annotations.at["u0", "distribution"])
    for uid in ("u1", "u2"):
        assert annotations.at[uid, "status"] == "ok"
        assert annotations.at[uid, "samples"] == 8 - hot  # the dropped votes are not in the distribution
        assert sum(json.loads(annotations.at[uid, "distribution"]).values()) == pytest.approx(1.0)
    votes = pd.read_parquet(tmp_path / "run" / "votes.parquet")
    by_id = votes.groupby("id")["status"].apply(lambda s: (s == "invalid").sum())
    assert by_id.to_dict() == {"u0": 8, "u1": hot, "u2": hot, "u3": 0}
    invalid = votes[votes["status"] == "invalid"]
    assert invalid["label"].isna().all() and invalid["reason"].notna().all()
    assert invalid[invalid["id"] == "u2"]["reason"].str.contains("empty").all()
    assert invalid[invalid["id"] == "u0"]["reason"].str.contains("frustration").all()
    panel = json.loads((tmp_path / "run" / "run.json").read_text())["panel"]
    assert panel["utterances_without_valid_votes"] == 1
    assert panel["utterances_without_valid_votes_examples"] == ["u0"]
    assert panel["off_set_labels_dropped"] == {"frustration": 8 + hot}
    assert panel["votes"] == {"invalid": 8 + 2 * hot, "ok": 32 - 8 - 2 * hot}
    # Each invalid vote was re-asked once with the error before it was dropped.
    assert result.stats.repairs == 8 + 2 * hot


def test_a_panel_of_one_has_no_kappa_and_says_so(tmp_path):
    table = text_table(["Just one annotator."])
    with FakeOpenAIServer() as server:
        result = run_annotation(table, panel_config(server, annotators=1), tmp_path / "run")
    assert result.panel["fleiss_kappa"] is None and result.panel["fleiss_kappa_utterances"] == 0
    assert result.annotations["panel_fleiss_kappa"].isna().all()
    assert result.annotations["samples"].tolist() == [1]


# -- audio: trim, split, probes -------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected"), [("trim", [1.0]), ("split", [1.0, 1.0, None])])
def test_audio_longer_than_the_limit_is_trimmed_or_split(tmp_path, voices, mode, expected):
    table = audio_table(voices, ["loud"])
    duration = soundfile.info(str(voices[(0, "loud")])).duration
    with FakeOpenAIServer() as server:
        config = panel_config(server, annotators=1, audio=True, max_audio_seconds=1.0, long_audio=mode)
        run_annotation(table, config, tmp_path / "run")
        (entry,) = asked(server)
    seconds = [a["seconds"] for a in entry["audio"]]
    expected = [duration - 2.0 if x is None else x for x in expected]
    assert seconds == pytest.approx(expected, abs=2 / 16000)
    audio = json.loads((tmp_path / "run" / "run.json").read_text())["audio"]
    assert audio[mode if mode == "split" else "trimmed"] == 1
    assert audio["seconds_left_out"] == pytest.approx(duration - 1.0 if mode == "trim" else 0.0, abs=1e-3)


def test_audio_at_another_rate_and_in_stereo_arrives_as_16k_mono(tmp_path, voices):
    import subprocess

    source = voices[(0, "loud")]
    stereo = tmp_path / "stereo44k.wav"
    subprocess.run(
        ["sox", str(source), "-r", "44100", "-c", "2", str(stereo)], check=True, capture_output=True
    )
    table = conform(pd.DataFrame([{"id": "s", "speaker": "S", "text": "Stereo.", "audio": str(stereo)}]))
    with FakeOpenAIServer() as server:
        result = run_annotation(table, panel_config(server, annotators=1, audio=True), tmp_path / "run")
        (entry,) = asked(server)
    (audio,) = entry["audio"]
    assert (audio["sample_rate"], audio["channels"]) == (16000, 1)
    assert audio["seconds"] == pytest.approx(soundfile.info(str(source)).duration, abs=0.01)
    assert result.annotations["emotion"].tolist() == ["anger"]


def test_a_huge_recording_is_cut_to_at_most_ten_pieces_and_never_read_whole(tmp_path):
    rate, minutes = 16000, 12
    t = np.arange(rate * 60 * minutes) / rate
    signal = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, signal, rate, subtype="PCM_16")
    del signal, t
    table = conform(
        pd.DataFrame([{"id": "long", "speaker": "S", "text": "A long monologue.", "audio": str(path)}])
    )
    with FakeOpenAIServer() as server:
        config = panel_config(server, annotators=1, audio=True, long_audio="split")
        result = run_annotation(table, config, tmp_path / "run")
        (entry,) = asked(server)
    assert [a["seconds"] for a in entry["audio"]] == pytest.approx([30.0] * 10, abs=2 / 16000)
    assert result.annotations["emotion"].tolist() == ["anger"]  # a loud tone
    assert result.audio["split"] == 1 and result.audio["seconds_left_out"] == pytest.approx(12 * 60 - 300)


def test_rows_without_audio_or_with_a_missing_file_stop_before_any_request(tmp_path, voices):
    table = audio_table(voices, ["loud", "soft", "loud"])
    with FakeOpenAIServer() as server:
        config = panel_config(server, annotators=2, audio=True)
        no_audio = table.copy()
        no_audio.loc[[1, 2], "audio"] = pd.NA
        with pytest.raises(
            MeltError, match=r"no audio for utterance 'Ses01F_impro01_F001' \(1 more"
        ) as caught:
            run_annotation(no_audio, config, tmp_path / "a", corpus_path="corpus.parquet")
        assert "row 2" in str(caught.value) and "audio" in str(caught.value)
        gone = table.copy()
        gone.loc[2, "audio"] = str(tmp_path / "nowhere.wav")
        with pytest.raises(MeltError, match="file not found"):
            run_annotation(gone, config, tmp_path / "b")
        assert server.entries() == [] and server.gets == 0


def test_a_server_that_rejects_audio_stops_the_run_with_one_clear_error(tmp_path, voices):
    table = audio_table(voices, ["loud", "soft"])
    with FakeOpenAIServer(reject_audio=True) as server:
        with pytest.raises(MeltError, match=r"does not take audio.*input_audio") as caught:
            run_annotation(table, panel_config(server, annotators=4, audio=True), tmp_path / "run")
        # The probe was the only request with audio: no utterance was asked.
        assert not asked(server)
        assert len([e for e in server.entries() if e.get("audio")]) == 1
    assert "leave out --audio" in str(caught.value) and "\n" not in str(caught.value)


def test_a_server_that_ignores_audio_is_refused_unless_allowed(tmp_path, voices):
    table = audio_table(voices, ["loud", "soft"])
    with FakeOpenAIServer(ignore_audio=True) as server:
        with pytest.raises(MeltError, match="ignores audio") as caught:
            run_annotation(table, panel_config(server, annotators=4, audio=True), tmp_path / "run")
        assert "--allow-ignored-audio" in str(caught.value)
        assert not asked(server)
        config = panel_config(server, annotators=4, audio=True, allow_ignored_audio=True)
        result = run_annotation(table, config, tmp_path / "run")
    assert result.complete and len(asked(server)) == 8
    assert result.audio["check"]["status"] == "ignores audio"
    check = result.audio["check"]
    assert check["prompt_tokens_with_audio"] == check["prompt_tokens_without_audio"]


def test_audio_needs_a_server_and_the_bundled_model_is_refused_at_once(tmp_path, voices, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    from melt.annotate import AnnotateConfig

    table = audio_table(voices, ["loud"])
    with pytest.raises(MeltError, match="--audio needs a server"):
        run_annotation(table, AnnotateConfig(panel="scaling-ambiguity", audio=True), tmp_path / "run")
    with pytest.raises(MeltError, match="--audio needs a server"):
        estimate_run(table, AnnotateConfig(panel="scaling-ambiguity", audio=True))


# -- costs ------------------------------------------------------------------------------------------------------


def test_dry_run_counts_audio_tokens_at_the_models_rate_and_says_when_it_is_unknown(tmp_path, voices):
    table = audio_table(voices, ["loud", "soft", "soft"])
    seconds = sum(soundfile.info(a).duration for a in table["audio"])
    with FakeOpenAIServer() as server:
        qwen = estimate_run(table, panel_config(server, annotators=8, audio=True))
        assert qwen.requests == 24 and qwen.per_utterance == 8
        assert qwen.audio_seconds == pytest.approx(8 * seconds, abs=1e-3)
        assert qwen.audio_tokens == math.ceil(qwen.audio_seconds * 25)
        assert "Qwen2-Audio" in qwen.audio_rate.source
        assert qwen.cost_usd is None  # no price for a self-hosted model

        openai = estimate_run(
            table, panel_config(server, annotators=8, audio=True, model="gpt-4o-audio-preview")
        )
        assert openai.audio_tokens == math.ceil(openai.audio_seconds * 10)
        text_tokens = openai.prompt_tokens - openai.audio_tokens
        expected = (text_tokens * 2.5 + openai.audio_tokens * 40 + openai.completion_tokens * 10) / 1e6
        assert openai.cost_usd == pytest.approx(expected)

        unknown = estimate_run(table, panel_config(server, annotators=2, audio=True, model="my-audio-model"))
        assert unknown.audio_tokens is None and unknown.cost_usd is None
        configured = panel_config(
            server,
            annotators=2,
            audio=True,
            model="my-audio-model",
            audio_token_rates={"my-audio-model": 50.0},
            prices={"my-audio-model": {"input": 1.0, "output": 2.0}},
        )
        known = estimate_run(table, configured)
        assert known.audio_tokens == math.ceil(2 * seconds * 50) and known.cost_usd is not None
        text_only = estimate_run(table, panel_config(server, annotators=2))
        assert text_only.audio_seconds == 0 and text_only.audio_tokens == 0
        assert server.entries() == []  # a dry run sends nothing


def test_budget_with_audio_needs_the_audio_rate_and_counts_audio_tokens(tmp_path, voices):
    table = audio_table(voices, ["loud", "soft"])
    with FakeOpenAIServer() as server:
        config = panel_config(
            server, annotators=2, audio=True, model="my-audio-model", max_cost=1.0,
            prices={"my-audio-model": {"input": 1.0, "output": 2.0, "audio_input": 100.0}},
        )  # fmt: skip
        with pytest.raises(MeltError, match="audio_token_rates"):
            run_annotation(table, config, tmp_path / "run")
        config = config.model_copy(update={"audio_token_rates": {"my-audio-model": 25.0}})
        result = run_annotation(table, config, tmp_path / "run")
    # The server reports the audio tokens apart (prompt_tokens_details): they are billed at the audio price.
    with sqlite3.connect(tmp_path / "run" / STORE_NAME) as db:
        rows = db.execute("SELECT reply, prompt_tokens, completion_tokens, cost_usd FROM requests").fetchall()
    for reply, prompt_tokens, completion_tokens, cost in rows:
        audio_tokens = json.loads(reply)["usage"].get("prompt_tokens_details", {}).get("audio_tokens", 0)
        expected = (
            (prompt_tokens - audio_tokens) * 1.0 + audio_tokens * 100.0 + completion_tokens * 2.0
        ) / 1e6
        assert cost == pytest.approx(expected)
    assert any(json.loads(r[0])["usage"].get("prompt_tokens_details") for r in rows)
    assert result.complete
