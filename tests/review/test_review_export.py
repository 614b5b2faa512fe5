"""`melt review export`: the doubt ranking and its reasons, and the Label Studio / Argilla files."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from melt.acoustics.features import file_sha256
from melt.review.doubt import DoubtSettings, load_run, normalised_entropy, score_doubt, select

from .conftest import EXPECTED_DOUBT, UTTERANCES


def test_doubtful_ranking_and_reasons(review_run):
    scored = score_doubt(load_run(review_run.run_dir), check=review_run.check_dir)
    chosen = select(scored, "doubtful")
    assert [(row.id, row.reason_codes.split(";")) for row in chosen.itertuples()] == EXPECTED_DOUBT
    reasons = {row.id: json.loads(row.reasons) for row in chosen.itertuples()}
    assert reasons["train/dia1_utt1"][0]["strength"] == pytest.approx(0.6)  # 1 - agreement 0.4
    assert reasons["train/dia1_utt0"][0]["strength"] == pytest.approx(0.7)  # 1 - confidence 0.3
    panel = reasons["train/dia1_utt2"][1]
    assert panel["strength"] == pytest.approx(normalised_entropy([2, 2, 1]), abs=1e-4)
    assert "pitch described high, measured low" in reasons["train/dia1_utt2"][0]["detail"]
    # the invalid answer outranks everything; the score is 10 + the other strengths
    assert chosen["doubt"].iloc[0] == 10
    assert chosen["doubt"].iloc[1] == pytest.approx(1 + normalised_entropy([2, 2, 1]), abs=1e-3)
    # a unanimous panel (four "happy" votes, normalised to joy) is no reason
    unanimous = scored.set_index("id").loc["train/dia0_utt0"]
    assert unanimous["reason_codes"] == "" and unanimous["panel_ambiguity"] == 0


def test_reasons_that_do_not_apply(review_run, tmp_path):
    (review_run.run_dir / "votes.parquet").unlink()
    scored = score_doubt(load_run(review_run.run_dir))
    assert "panel_ambiguity" not in scored.columns
    codes = ";".join(scored["reason_codes"])
    assert "ambiguous_panel" not in codes and "acoustic_mismatch" not in codes
    # thresholds move the cut: confidence 0.3 is no longer low at min_confidence 0.25
    strict = score_doubt(load_run(review_run.run_dir), DoubtSettings(min_confidence=0.25, min_agreement=0.3))
    assert set(select(strict, "doubtful")["id"]) == {"train/dia0_utt1", "train/dia0_utt2", "train/dia2_utt1"}


def test_selections(review_run):
    scored = score_doubt(load_run(review_run.run_dir))
    assert list(select(scored, "invalid")["id"]) == ["train/dia0_utt1"]
    assert list(select(scored, "changed")["id"]) == ["train/dia0_utt2", "train/dia2_utt1"]
    assert len(select(scored, "all")) == len(UTTERANCES)
    assert list(select(scored, "doubtful", limit=2)["id"]) == ["train/dia0_utt1", "train/dia0_utt2"]


def test_label_studio_export(review_run, tmp_path, melt_cli):
    out = tmp_path / "ls"
    result = melt_cli("review", "export", review_run.run_dir, "--out", out, "--check", review_run.check_dir)
    assert result.code == 0, result.stderr
    assert "exported 6 of 8 utterances" in result.stdout
    assert "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=" in result.stdout
    assert "with the absolute local path" in " ".join(result.stdout.split())
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["utterance_id"] for t in tasks] == [uid for uid, _ in EXPECTED_DOUBT]
    manifest = json.loads((out / "export.json").read_text())
    root = Path(manifest["audio_root"])
    for task in tasks:
        data = task["data"]
        audio = review_run.audio[data["utterance_id"]]
        assert data["audio_sha256"] == file_sha256(audio)
        # the URL Label Studio serves: /data/local-files/?d=<path relative to the document root>
        assert data["audio"].startswith("/data/local-files/?d=")
        assert (root / unquote(data["audio"].split("?d=", 1)[1])).resolve() == audio.resolve()
        # Label Studio serves a file only through a Local files storage holding it, and refuses a storage equal
        # to its document root (checked on Label Studio 1.23): no file may lie directly in the root
        assert audio.parent.resolve() != root.resolve()
        assert audio.resolve().is_relative_to(Path(manifest["audio_folder"]).resolve())
        assert data["reasons"] and data["header"].startswith(data["speaker"])
    by_id = {t["data"]["utterance_id"]: t for t in tasks}
    changed = by_id["train/dia0_utt2"]["predictions"]
    assert [p["model_version"] for p in changed] == ["llm: gpt-test-2024", "human: corpus label"]
    assert changed[0]["result"][0]["value"]["choices"] == ["anger"] and changed[0]["score"] == 0.9
    assert changed[1]["result"][0]["value"]["choices"] == ["neutral"]
    assert changed[1]["score"] == pytest.approx(0.5)  # r1 neutral, r2 half neutral, r3 angry
    # an off-set human label (frustration) is no prediction: it is not a choice of the config
    assert [p["model_version"] for p in by_id["train/dia2_utt1"]["predictions"]] == ["llm: gpt-test-2024"]
    assert [p["model_version"] for p in by_id["train/dia0_utt1"]["predictions"]] == ["human: corpus label"]

    config = ET.fromstring((out / "labeling-config.xml").read_text())
    assert config.find("Audio").get("value") == "$audio"
    choices = config.find("Choices")
    assert choices.get("name") == "emotion" and choices.get("toName") == "audio"
    assert [c.get("value") for c in choices] == [
        "anger",
        "disgust",
        "fear",
        "joy",
        "neutral",
        "sadness",
        "surprise",
    ]
    assert config.find("TextArea").get("name") == "comment"
    for tag in config.iter():
        for value in tag.attrib.values():
            if value.startswith("$"):
                assert value[1:] in tasks[0]["data"], value

    assert manifest["exported"] == 6 and manifest["utterances_in_run"] == 8
    assert manifest["reasons"] == {
        "invalid": 1,
        "low_agreement": 1,
        "low_confidence": 1,
        "disagrees_with_human": 2,
        "acoustic_mismatch": 1,
        "ambiguous_panel": 1,
    }
    assert manifest["corpus_sha256"] == file_sha256(review_run.corpus)
    selection = pd.read_csv(out / "selection.csv")
    assert list(selection["id"]) == [uid for uid, _ in EXPECTED_DOUBT]


def test_argilla_export(review_run, tmp_path, melt_cli):
    out = tmp_path / "argilla"
    result = melt_cli(
        "review",
        "export",
        review_run.run_dir,
        "--out",
        out,
        "--format",
        "argilla",
        "--select",
        "all",
        "--limit",
        "7",
    )
    assert result.code == 0, result.stderr
    assert "python3 -m http.server 8081 --directory" in result.stdout
    settings = json.loads((out / ".argilla" / "settings.json").read_text())
    dataset = json.loads((out / ".argilla" / "dataset.json").read_text())
    records = json.loads((out / "records.json").read_text())
    assert dataset["distribution"] == {"strategy": "overlap", "min_submitted": 1}
    question = settings["questions"][0]
    assert question["name"] == "emotion" and question["settings"]["type"] == "label_selection"
    assert [o["value"] for o in question["settings"]["options"]][:2] == ["anger", "disgust"]
    assert settings["questions"][1]["settings"]["type"] == "text" and not settings["questions"][1]["required"]
    fields = {f["name"]: f for f in settings["fields"]}
    assert fields["audio"]["settings"]["type"] == "custom"
    assert "{{record.fields.audio.url}}" in fields["audio"]["settings"]["template"]
    assert len(records) == 7
    for record in records:
        assert set(record["fields"]) == set(fields)
        uid = record["metadata"]["utterance_id"]
        assert record["id"] == uid
        assert (
            record["metadata"]["audio_sha256"]
            == record["fields"]["audio"]["sha256"]
            == file_sha256(review_run.audio[uid])
        )
        assert record["fields"]["audio"]["url"].startswith("http://localhost:8081/")
    by_id = {r["id"]: r for r in records}
    suggestion = by_id["train/dia0_utt2"]["suggestions"]["emotion"]
    assert suggestion == {"value": "anger", "score": 0.9, "agent": "melt llm: gpt-test-2024"}
    assert by_id["train/dia0_utt1"]["suggestions"] == {}  # no LLM answer, no suggestion


def test_audio_root_and_prefix(review_run, tmp_path, melt_cli):
    root = review_run.audio["train/dia0_utt0"].parent.parent
    out = tmp_path / "ls"
    result = melt_cli(
        "review", "export", review_run.run_dir, "--out", out, "--audio-root", root / "wav" / "..",
        "--audio-prefix", "https://files.example.org/clips/",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks[0]["data"]["audio"] == "https://files.example.org/clips/wav/train_dia0_utt1.wav"
    # audio outside the given root cannot get a relative URL: one clear error
    result = melt_cli(
        "review", "export", review_run.run_dir, "--out", out, "--audio-root", tmp_path / "elsewhere"
    )
    assert result.code == 2 and "is not inside --audio-root" in result.stderr
    assert "Traceback" not in result.stderr
    # a document root holding the audio directly cannot serve local files: said, not silently exported
    result = melt_cli("review", "export", review_run.run_dir, "--out", out, "--audio-root", root / "wav")
    assert result.code == 0, result.stderr
    assert "refuses a Local files storage equal to its document root" in " ".join(result.stdout.split())


def test_export_errors(review_run, tmp_path, melt_cli):
    out = tmp_path / "out"
    cases = [
        (("--select", "nothing"), "select"),
        (("--format", "excel"), "format"),
        (("--limit", "0"), "limit"),
        (("--check", tmp_path / "missing"), "file not found"),
        (("--corpus", tmp_path / "missing.csv"), "file not found"),
        (("--min-confidence", "2"), "min_confidence"),
    ]
    for options, message in cases:
        result = melt_cli("review", "export", review_run.run_dir, "--out", out, *options)
        assert result.code == 2, (options, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    # an output folder that cannot be made: one line, no traceback
    result = melt_cli(
        "review", "export", review_run.run_dir, "--out", "/proc/no/such/folder", "--select", "all"
    )
    assert result.code == 2 and "error: /proc/no" in result.stderr and "Traceback" not in result.stderr
    annotations = pd.read_parquet(review_run.run_dir / "annotations.parquet")
    pd.concat([annotations, annotations.head(1)]).to_parquet(review_run.run_dir / "annotations.parquet")
    result = melt_cli("review", "export", review_run.run_dir, "--out", out)
    assert result.code == 2 and "duplicate id 'train/dia0_utt0'" in result.stderr
    annotations.to_parquet(review_run.run_dir / "annotations.parquet")
    # an empty selection is an error, not an empty project
    (review_run.folder / "ok").mkdir()
    annotations = pd.read_parquet(review_run.run_dir / "annotations.parquet")
    annotations["status"] = "ok"
    annotations.to_parquet(review_run.run_dir / "annotations.parquet")
    result = melt_cli("review", "export", review_run.run_dir, "--out", out, "--select", "invalid")
    assert result.code == 2 and "nothing to export" in result.stderr
    # a run of another corpus: its ids are not in the table
    corpus = pd.read_csv(review_run.corpus)
    corpus["id"] = corpus["id"].str.replace("train", "test")
    corpus.to_csv(review_run.corpus, index=False)
    result = melt_cli("review", "export", review_run.run_dir, "--out", out)
    assert result.code == 2 and "is not in the corpus table" in result.stderr
    result = melt_cli("review", "export", tmp_path / "no-run", "--out", out)
    assert result.code == 2 and "not a run folder" in result.stderr


def test_missing_audio_is_exported_without_hash(review_run, tmp_path):
    from melt.review.export import ExportSettings, export_review

    missing = review_run.folder / "gone.wav"
    corpus = pd.read_csv(review_run.corpus)
    corpus.loc[corpus["id"] == "train/dia0_utt2", "audio"] = str(missing)
    corpus.to_csv(review_run.corpus, index=False)
    result = export_review(review_run.run_dir, tmp_path / "out", ExportSettings())
    assert result.missing_audio == 1
    tasks = {
        t["data"]["utterance_id"]: t["data"]
        for t in json.loads((tmp_path / "out" / "tasks.json").read_text())
    }
    assert tasks["train/dia0_utt2"]["audio_sha256"] is None and tasks["train/dia0_utt2"]["audio"] == ""


def test_published_melt_labels_as_a_run(shared_data, tmp_path, melt_cli):
    """The published MELT train file as a run (GPT-4o's label) over MELD's human labels: `changed` selects exactly
    the 3,261 utterances whose labels differ (46.43 %), and the export of them round-trips its ids."""
    from melt.corpus.loaders import load_melt_csv
    from melt.corpus.schema import write_table

    table = load_melt_csv(shared_data / "melt" / "meld_train.csv")
    corpus = write_table(table.drop(columns=["llm_label"]), tmp_path / "melt_train.parquet")
    run = tmp_path / "run"
    run.mkdir()
    write_table(
        pd.DataFrame({"id": table["id"], "status": "ok", "emotion": table["llm_label"]}),
        run / "annotations.parquet",
    )
    (run / "run.json").write_text(json.dumps({"corpus": str(corpus), "model": "gpt-4o-2024-08-06"}))
    out = tmp_path / "review"
    result = melt_cli("review", "export", run, "--out", out, "--select", "changed")
    assert result.code == 0, result.stderr
    assert "exported 3261 of 7024 utterances (changed)" in result.stdout
    tasks = json.loads((out / "tasks.json").read_text())
    assert len({t["data"]["utterance_id"] for t in tasks}) == 3261
    assert all(t["data"]["llm_label"] != t["data"]["human_label"] for t in tasks)
    # off-set labels (frustration, comfort) are in the test file only; train labels are all in the set
    assert all(len(t["predictions"]) == 2 for t in tasks)


def test_label_studio_storages_for_an_audio_root(tmp_path):
    """Label Studio serves a file only through a Local files storage holding it and refuses a storage equal to
    its document root: the storages to add, for each way the audio can lie under the root."""
    from melt.review.export import ExportResult

    def storages(root: Path, paths: list[str]) -> list[Path]:
        selected = pd.DataFrame({"audio_path": [str(root / p) for p in paths], "audio_sha256": "x" * 64})
        folder = Path(os.path.commonpath([str((root / p).parent) for p in paths]))
        return ExportResult(tmp_path, selected, len(paths), root, folder).label_studio_storages()

    root = tmp_path / "data"
    assert storages(root, ["audio/a.wav", "audio/b.wav"]) == [root / "audio"]
    # the audio in two sub-folders of the root: one storage each, never the root itself
    assert storages(root, ["train/a.wav", "dev/b.wav", "dev/c/d.wav"]) == [root / "dev", root / "train"]
    # a file directly in the root cannot be served at all
    assert storages(root, ["a.wav", "train/b.wav"]) == []
