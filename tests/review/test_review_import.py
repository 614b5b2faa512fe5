"""`melt review import`: Label Studio and Argilla exports back to decisions, and `melt compare` on them.

The exports are written here the way Label Studio (JSON export, current and old `completions` format; checked
against a real Label Studio 1.23 export) and Argilla 2.x (`records.to_json`/`to_disk`, nested: Argilla 2.8 writes
responses without their status; with a status as hand-made files have it; and `to_list(flatten=True)`) write
them, from the tasks and records `melt review export` produced.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from melt.acoustics.features import file_sha256
from melt.review.decisions import import_review, reviews_path

from .conftest import EXPECTED_DOUBT

U_INVALID, U_PANEL, U_CHANGED, U_OFFSET, U_LOWCONF, U_LOWAGREE = (uid for uid, _ in EXPECTED_DOUBT)


def _choice(label: str, rid: str) -> dict:
    return {
        "value": {"choices": [label]},
        "id": rid,
        "from_name": "emotion",
        "to_name": "audio",
        "type": "choices",
        "origin": "manual",
    }


def _comment(text: str, rid: str) -> dict:
    return {
        "value": {"text": [text]},
        "id": rid,
        "from_name": "comment",
        "to_name": "audio",
        "type": "textarea",
    }


def _annotation(
    aid: int, task_id: int, who, result: list, *, cancelled=False, lead=8.2, at="2025-03-01T10:00:00Z"
):
    return {
        "id": aid,
        "completed_by": who,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": at,
        "updated_at": at,
        "draft_created_at": None,
        "lead_time": lead,
        "prediction": {},
        "result_count": len(result),
        "unique_id": f"uid-{aid}",
        "import_id": None,
        "last_action": None,
        "task": task_id,
        "project": 3,
        "updated_by": who if isinstance(who, int) else who["id"],
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


#: utterance -> the annotations reviewers gave it
def _label_studio_annotations(task_id: int, uid: str) -> list[dict]:
    alice = 1
    bob = {"id": 2, "first_name": "Bob", "last_name": "", "email": "bob@lab.example"}
    carol = 3
    if uid == U_INVALID:
        return [
            _annotation(
                11, task_id, alice, [_choice("neutral", "a1"), _comment("flat voice, tired", "c1")], lead=12.5
            ),
            _annotation(12, task_id, bob, [_choice("neutral", "b1")], lead=20.0),
        ]
    if uid == U_PANEL:  # a tie, and a skip
        return [
            _annotation(13, task_id, alice, [_choice("surprise", "a2")]),
            _annotation(14, task_id, bob, [_choice("joy", "b2")]),
            _annotation(15, task_id, carol, [], cancelled=True, lead=3.0),
        ]
    if uid == U_CHANGED:
        return [
            _annotation(16, task_id, alice, [_choice("anger", "a3")]),
            _annotation(17, task_id, bob, [_choice("neutral", "b3")]),
            _annotation(18, task_id, carol, [_choice("neutral", "c3"), _comment("  ", "c3c")]),
        ]
    if uid == U_OFFSET:  # skipped by the only reviewer who saw it
        return [_annotation(19, task_id, carol, [], cancelled=True)]
    if uid == U_LOWAGREE:  # alice changed her mind: the later annotation stands
        return [
            _annotation(20, task_id, alice, [_choice("joy", "a4")], at="2025-03-01T09:00:00Z"),
            _annotation(21, task_id, alice, [_choice("fear", "a5")], at="2025-03-02T09:00:00Z"),
        ]
    return []  # U_LOWCONF: nobody reviewed it


def label_studio_export(tasks: list[dict], *, old: bool = False) -> list[dict]:
    exported = []
    for number, task in enumerate(tasks, start=1):
        annotations = _label_studio_annotations(number, task["data"]["utterance_id"])
        if old:
            for annotation in annotations:
                annotation["skipped"] = annotation.pop("was_cancelled")
        exported.append(
            {
                "id": number,
                ("completions" if old else "annotations"): annotations,
                "file_upload": "tasks.json",
                "drafts": [],
                "predictions": [100 + number, 200 + number],
                "data": task["data"],
                "meta": {},
                "created_at": "2025-02-28T12:00:00Z",
                "updated_at": "2025-03-02T09:00:00Z",
                "inner_id": number,
                "total_annotations": sum(not a.get("was_cancelled", a.get("skipped")) for a in annotations),
                "cancelled_annotations": sum(
                    bool(a.get("was_cancelled", a.get("skipped"))) for a in annotations
                ),
                "total_predictions": 2,
                "comment_count": 0,
                "unresolved_comment_count": 0,
                "last_comment_updated_at": None,
                "project": 3,
                "updated_by": 1,
                "comment_authors": [],
            }
        )
    return exported


@pytest.fixture
def exported(review_run, tmp_path, melt_cli):
    out = tmp_path / "ls"
    result = melt_cli("review", "export", review_run.run_dir, "--out", out)
    assert result.code == 0, result.stderr
    return json.loads((out / "tasks.json").read_text())


def _write(path: Path, payload) -> Path:
    path.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return path


def test_label_studio_round_trip(review_run, exported, tmp_path, melt_cli):
    export = _write(tmp_path / "project-3-at-2025-03-02.json", label_studio_export(exported))
    out = tmp_path / "decisions.parquet"
    result = melt_cli("review", "import", export, "--out", out)
    assert result.code == 0, result.stderr
    assert "6 tasks, 10 reviews by 3 reviewers (2 skipped, 1 replaced" in result.stdout
    decisions = pd.read_parquet(out).set_index("id")
    reviews = pd.read_parquet(reviews_path(out))
    made = json.loads((tmp_path / "decisions.json").read_text())
    assert made["export_sha256"] == file_sha256(export) and made["format"] == "labelstudio"
    assert made["decisions"] == {"decided": 3, "tie": 1, "skipped": 1, "unreviewed": 1}
    # ids and audio hashes survive the round trip; the audio is checked against the files
    assert set(decisions.index) == {
        uid for uid in (U_INVALID, U_PANEL, U_CHANGED, U_OFFSET, U_LOWCONF, U_LOWAGREE)
    }
    for uid, row in decisions.iterrows():
        assert row["audio_sha256"] == file_sha256(review_run.audio[uid])
        assert row["audio_check"] == "ok"
    assert decisions.loc[U_INVALID, ["label", "decision", "reviewers", "agreement"]].tolist() == [
        "neutral",
        "decided",
        2,
        1.0,
    ]
    assert decisions.loc[U_INVALID, "lead_time_median"] == pytest.approx(16.25)
    assert decisions.loc[U_INVALID, "comments"] == "user:1: flat voice, tired"
    assert json.loads(decisions.loc[U_INVALID, "votes"]) == {
        "bob@lab.example": {"neutral": 1.0},
        "user:1": {"neutral": 1.0},
    }
    panel = decisions.loc[U_PANEL]
    assert pd.isna(panel["label"]) and panel["decision"] == "tie" and panel["candidates"] == "joy|surprise"
    assert panel["skipped"] == 1 and panel["agreement"] == 0.5
    changed = decisions.loc[U_CHANGED]
    assert changed["label"] == "neutral" and changed["agreement"] == pytest.approx(2 / 3)
    assert changed["llm_label"] == "anger" and changed["human_label"] == "neutral"
    assert decisions.loc[U_OFFSET, "decision"] == "skipped" and pd.isna(decisions.loc[U_OFFSET, "label"])
    assert decisions.loc[U_LOWCONF, "decision"] == "unreviewed"
    assert decisions.loc[U_LOWAGREE, "label"] == "fear"  # the later of alice's two annotations
    assert decisions.loc[U_LOWAGREE, "reason_codes"] == "low_agreement"
    # one row per utterance and reviewer
    assert not reviews.duplicated(["id", "reviewer"]).any()
    skip = reviews[(reviews["id"] == U_PANEL) & (reviews["reviewer"] == "user:3")].iloc[0]
    assert bool(skip["skipped"]) and pd.isna(skip["label"]) and skip["lead_time"] == 3.0
    assert set(reviews["task"]) == {"1", "2", "3", "4", "6"}  # task 5 has no annotation

    # `melt compare` takes the decisions as a label source: review decision (label) vs the LLM (llm_label)
    cmp_dir = tmp_path / "cmp"
    result = melt_cli("compare", out, "--out", cmp_dir)
    assert result.code == 0, result.stderr
    summary = json.loads((cmp_dir / "summary.json").read_text())
    assert (summary["n"], summary["changed"], summary["missing"]) == (2, 1, 4)
    assert summary["transition"]["neutral"]["anger"] == 1 and summary["transition"]["fear"]["fear"] == 1
    result = melt_cli("compare", out, "--candidate", "human_label", "--out", cmp_dir)
    assert result.code == 0, result.stderr
    summary = json.loads((cmp_dir / "summary.json").read_text())
    assert (summary["n"], summary["changed"]) == (3, 0)


def test_label_studio_ground_truth_decides(exported, tmp_path, melt_cli):
    tasks = label_studio_export(exported)
    by_id = {t["data"]["utterance_id"]: t for t in tasks}
    # a tie between alice (surprise) and bob (joy), until the manager marks alice's annotation as ground truth
    by_id[U_PANEL]["annotations"][0]["ground_truth"] = True
    # two ground-truth annotations that disagree are no verdict: a second look
    by_id[U_CHANGED]["annotations"][0]["ground_truth"] = True
    by_id[U_CHANGED]["annotations"][1]["ground_truth"] = True
    out = tmp_path / "decisions.csv"
    result = melt_cli("review", "import", _write(tmp_path / "gt.json", tasks), "--out", out)
    assert result.code == 0, result.stderr
    decisions = pd.read_csv(out).set_index("id")
    assert decisions.loc[U_PANEL, ["label", "decision"]].tolist() == ["surprise", "ground_truth"]
    assert decisions.loc[U_PANEL, "agreement"] == 0.5
    assert decisions.loc[U_CHANGED, "decision"] == "tie"
    assert decisions.loc[U_CHANGED, "candidates"] == "anger|neutral"
    reviews = pd.read_csv(reviews_path(out))
    marked = reviews[reviews["ground_truth"]]
    assert sorted(zip(marked["id"], marked["label"], strict=True)) == [
        (U_CHANGED, "anger"),
        (U_CHANGED, "neutral"),
        (U_PANEL, "surprise"),
    ]


def test_argilla_records_as_argilla_writes_them(review_run, tmp_path, melt_cli):
    """Argilla 2.8's `records.to_json`/`to_disk` write each response as {value, user_id}: no status, so a draft
    or a discarded answer cannot be told from a submitted one. The import says so instead of passing them off as
    submitted reviews silently."""
    records, _ = argilla_records(review_run, tmp_path, melt_cli)
    for record in records:
        record["status"] = "completed" if record["responses"] else "pending"
        for answers in record["responses"].values():
            for answer in answers:
                del answer["status"]
    out = tmp_path / "decisions.parquet"
    result = melt_cli("review", "import", _write(tmp_path / "records.json", records), "--out", out)
    assert result.code == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert "9 Argilla responses carry no status" in said and "to_list(flatten=True)" in said
    made = json.loads((tmp_path / "decisions.json").read_text())
    assert made["argilla_responses_without_status"] == 9 and made["drafts"] == 0


def test_old_completions_format(exported, tmp_path):
    export = _write(tmp_path / "old.json", label_studio_export(exported, old=True))
    result = import_review(export)
    assert result.source == "labelstudio" and result.skipped == 2
    decisions = result.decisions.set_index("id")
    assert decisions.loc[U_CHANGED, "label"] == "neutral" and decisions.loc[U_PANEL, "decision"] == "tie"


def test_changed_or_missing_audio(review_run, exported, tmp_path, melt_cli):
    export = _write(tmp_path / "export.json", label_studio_export(exported))
    audio = review_run.audio[U_CHANGED]
    original = audio.read_bytes()
    try:
        audio.write_bytes(original + b"\0\0")
        result = melt_cli("review", "import", export, "--out", tmp_path / "d.parquet")
        row = [t["data"]["utterance_id"] for t in exported].index(U_CHANGED) + 1
        assert (
            result.code == 2
            and "changed since the export" in result.stderr
            and f"row {row}," in result.stderr
        )
        assert "Traceback" not in result.stderr
        result = melt_cli("review", "import", export, "--out", tmp_path / "d.csv", "--allow-changed-audio")
        assert result.code == 0, result.stderr
        decisions = pd.read_csv(tmp_path / "d.csv").set_index("id")
        assert decisions.loc[U_CHANGED, "audio_check"] == "changed"
        assert (tmp_path / "d.reviews.csv").exists()
    finally:
        audio.write_bytes(original)
    moved = label_studio_export(exported)
    moved[0]["data"]["audio_path"] = str(tmp_path / "elsewhere.wav")
    result = import_review(_write(tmp_path / "moved.json", moved))
    assert result.decisions.set_index("id").loc[U_INVALID, "audio_check"] == "not_found"


def argilla_records(review_run, tmp_path, melt_cli) -> list[dict]:
    out = tmp_path / "argilla"
    result = melt_cli("review", "export", review_run.run_dir, "--out", out, "--format", "argilla")
    assert result.code == 0, result.stderr
    records = json.loads((out / "records.json").read_text())
    users = {name: f"3f5c{n}a1e-0000-4000-8000-00000000000{n}" for n, name in enumerate("abcd")}
    answers = {
        U_INVALID: [("a", "neutral", "submitted"), ("b", "neutral", "submitted"), ("c", "joy", "discarded")],
        U_PANEL: [("a", "surprise", "submitted"), ("b", "joy", "submitted"), ("d", "joy", "draft")],
        U_CHANGED: [
            ("a", "anger", "submitted"),
            ("b", "neutral", "submitted"),
            ("c", "neutral", "submitted"),
        ],
    }
    for number, record in enumerate(records):
        record["_server_id"] = f"9b1e0000-0000-4000-8000-{number:012d}"
        given = answers.get(record["id"], [])
        record["responses"] = {
            "emotion": [{"value": v, "user_id": users[u], "status": s} for u, v, s in given],
        }
        if record["id"] == U_INVALID:
            record["responses"]["comment"] = [
                {"value": "flat voice", "user_id": users["a"], "status": "submitted"}
            ]
        if not given:
            record["responses"] = {}
    return records, users


def test_argilla_round_trip(review_run, tmp_path, melt_cli):
    records, users = argilla_records(review_run, tmp_path, melt_cli)
    folder = tmp_path / "argilla"
    (folder / "records.json").write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path / "decisions.parquet"
    result = melt_cli("review", "import", folder, "--out", out)  # the to_disk folder itself
    assert result.code == 0, result.stderr
    assert "Argilla: 6 tasks" in result.stdout and "1 drafts not counted" in result.stdout
    decisions = pd.read_parquet(out).set_index("id")
    assert decisions.loc[U_INVALID, "label"] == "neutral" and decisions.loc[U_INVALID, "skipped"] == 1
    assert decisions.loc[U_INVALID, "comments"] == f"{users['a']}: flat voice"
    assert decisions.loc[U_PANEL, "decision"] == "tie"
    assert decisions.loc[U_CHANGED, "label"] == "neutral"
    assert decisions.loc[U_LOWCONF, "decision"] == "unreviewed"
    for uid, row in decisions.iterrows():
        assert row["audio_sha256"] == file_sha256(review_run.audio[uid]) and row["audio_check"] == "ok"
    assert decisions.loc[U_CHANGED, "reason_codes"] == "disagrees_with_human"


def test_argilla_flattened_records(review_run, tmp_path, melt_cli):
    records, _ = argilla_records(review_run, tmp_path, melt_cli)
    flat = []
    for record in records:
        row = {
            "id": record["id"],
            "_server_id": record["_server_id"],
            **record["fields"],
            **record["metadata"],
        }
        for question, answers in record["responses"].items():
            row[f"{question}.responses"] = [a["value"] for a in answers]
            row[f"{question}.responses.users"] = [a["user_id"] for a in answers]
            row[f"{question}.responses.status"] = [a["status"] for a in answers]
        for question, suggestion in record["suggestions"].items():
            row[f"{question}.suggestion"] = suggestion["value"]
            row[f"{question}.suggestion.score"] = suggestion["score"]
            row[f"{question}.suggestion.agent"] = suggestion["agent"]
        flat.append(row)
    result = import_review(_write(tmp_path / "flat.json", flat))
    decisions = result.decisions.set_index("id")
    assert result.source == "argilla" and result.drafts == 1 and result.skipped == 1
    assert (
        decisions.loc[U_CHANGED, "label"] == "neutral"
        and decisions.loc[U_PANEL, "candidates"] == "joy|surprise"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "file is empty"),
        ("[]", "holds no task"),
        ('"text"', "expected a JSON list"),
        ('[{"unrelated": 1}]', "neither a Label Studio JSON export"),
        ('[{"data": {"audio": "x.wav"}, "annotations": []}]', "row 1, column 'utterance_id'"),
        ('[{"data": {"utterance_id": "a"}, "annotations": {"x": 1}}]', "annotations are not a list"),
        ('[{"data": {"utterance_id": "a"}, "annotations": [7]}]', "is not a JSON object"),
        (
            '[{"data": {"utterance_id": "a"}, "annotations": [{"result": [{"type": "choices", "from_name": '
            '"emotion", "value": {"choices": ["joy", "anger"]}}]}]}]',
            "chose several emotions",
        ),
        (
            '[{"data": {"utterance_id": "a"}, "annotations": [{"result": [{"type": "choices", "value": {"choices": 3}}]}]}]',
            "not a list of labels",
        ),
        ('[{"id": "a", "fields": {}, "responses": {"emotion": "joy"}}]', "responses.emotion is not a list"),
        (
            '[{"id": "a", "fields": {}, "responses": {"emotion": [{"value": ["joy", "fear"], "user_id": "u"}]}}]',
            "is not one label",
        ),
        (
            '[{"id": "a", "emotion.responses": ["joy"], "emotion.responses.users": []}]',
            "not lists of one length",
        ),
        (
            '[{"data": {"utterance_id": "a", "audio_sha256": "1"}, "annotations": []}, '
            '{"data": {"utterance_id": "a", "audio_sha256": "2"}, "annotations": []}]',
            "appears twice with different audio hashes",
        ),
    ],
)
def test_malformed_exports(tmp_path, melt_cli, payload, message):
    export = tmp_path / "export.json"
    export.write_text(payload, encoding="utf-8")
    result = melt_cli("review", "import", export, "--out", tmp_path / "d.parquet")
    assert result.code == 2, result.stdout
    assert message in result.stderr and str(export) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_import_output_must_be_a_table(exported, tmp_path, melt_cli):
    export = _write(tmp_path / "export.json", label_studio_export(exported))
    result = melt_cli("review", "import", export, "--out", tmp_path / "decisions.xlsx")
    assert result.code == 2 and "must end in .parquet or .csv" in result.stderr
