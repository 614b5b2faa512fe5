"""`melt review import`: reviewers' labels from a Label Studio or Argilla export, one row per utterance and
reviewer, and one merged decision per utterance.

Merge rule: an annotation Label Studio marks as ground truth decides (`decision` = ground_truth: the project
manager's verdict); otherwise the label most reviewers chose (a plurality of the submitted labels) is the
decision; a tie for the top leaves the utterance undecided (`decision` = tie, no label, the tied labels in
`candidates`); an utterance whose reviews were all skipped is `skipped`, one nobody reviewed `unreviewed`. A
reviewer counts once per utterance: when one reviewer annotated a task twice, the later annotation stands.

Every task carries the utterance id and the audio's sha256 written by `melt review export`; the import checks
the hash against the audio file when the file is reachable, so a decision is never attached to other audio.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import pandas as pd

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.errors import MeltError
from melt.review.export import CHOICES_NAME, COMMENT_NAME

REVIEW_DTYPES: dict[str, str] = {
    "id": "string",
    "reviewer": "string",
    "label": "string",
    "skipped": "boolean",
    "ground_truth": "boolean",
    "comment": "string",
    "lead_time": "Float64",
    "submitted_at": "string",
    "source": "string",
    "task": "string",
    "audio_sha256": "string",
    "audio_check": "string",
}
DECISION_DTYPES: dict[str, str] = {
    "id": "string",
    "label": "string",
    "decision": "string",
    "reviewers": "Int64",
    "skipped": "Int64",
    "agreement": "Float64",
    "candidates": "string",
    "votes": "string",
    "comments": "string",
    "lead_time_median": "Float64",
    "llm_label": "string",
    "human_label": "string",
    "reason_codes": "string",
    "audio_sha256": "string",
    "audio_check": "string",
    "source": "string",
}
#: audio_check values: the file's hash equals the export's; it differs (only with allow_changed_audio); the file
#: is not reachable here; the export had no audio for the utterance.
AUDIO_CHECKS = ("ok", "changed", "not_found", "no_audio")


@dataclass
class Task:
    """One exported utterance as it came back, with its reviews."""

    id: str
    position: int  # 1-based place in the export file, for error messages
    task: str | None
    audio_sha256: str | None
    audio_path: str | None
    llm_label: str | None
    human_label: str | None
    reason_codes: str | None
    reviews: list[dict[str, Any]]


@dataclass
class ImportResult:
    source: str  # labelstudio | argilla
    path: Path
    reviews: pd.DataFrame
    decisions: pd.DataFrame
    tasks: int
    #: annotations replaced by a later one of the same reviewer on the same task
    superseded: int
    #: Argilla responses still in draft, not counted
    drafts: int
    #: Argilla responses without a status (records.json of `to_disk`/`records.to_json` drops it): submitted,
    #: draft and discarded answers cannot be told apart there, and all were counted as submitted
    without_status: int = 0

    @property
    def skipped(self) -> int:
        return int(self.reviews["skipped"].sum())


def import_review(
    path: str | Path, *, labels: LabelSet = MELT_LABEL_SET, allow_changed_audio: bool = False
) -> ImportResult:
    """Read a Label Studio JSON export (a list of tasks with `annotations`, or the older `completions`) or an
    Argilla export (`records.json` of `Dataset.to_disk`/`records.to_json`, nested or flattened, or its folder)."""
    path = Path(path)
    source, payload, origin = _read_export(path)
    without_status = 0
    if source == "labelstudio":
        tasks, superseded, drafts = _label_studio_tasks(payload, origin), 0, 0
    else:
        tasks, drafts, without_status = _argilla_tasks(payload, origin)
        superseded = 0
    if not tasks:
        raise MeltError("the export holds no task", file=origin)
    rows: list[dict[str, Any]] = []
    checks: dict[str, str] = {}
    hashes: dict[str, str | None] = {}
    seen_hash: dict[str, tuple[str | None, int]] = {}
    for task in tasks:
        previous = seen_hash.get(task.id)
        if previous is not None and previous[0] != task.audio_sha256:
            raise MeltError(
                f"utterance {task.id!r} appears twice with different audio hashes (task {previous[1]} and "
                f"task {task.position})",
                file=origin,
                row=task.position,
            )
        seen_hash[task.id] = (task.audio_sha256, task.position)
        check = checks[task.id] = _audio_check(task, hashes, origin, allow_changed_audio)
        kept, replaced = _latest_per_reviewer(task.reviews)
        superseded += replaced
        for review in kept:
            label = labels.normalize(review.get("label"))
            rows.append(
                {
                    "id": task.id,
                    "reviewer": review["reviewer"],
                    "label": None if review["skipped"] else label,
                    "skipped": review["skipped"],
                    "ground_truth": bool(review.get("ground_truth")) and not review["skipped"],
                    "comment": review.get("comment") or None,
                    "lead_time": review.get("lead_time"),
                    "submitted_at": review.get("submitted_at"),
                    "source": source,
                    "task": task.task,
                    "audio_sha256": task.audio_sha256,
                    "audio_check": check,
                }
            )
    reviews = _frame(rows, REVIEW_DTYPES)
    decisions = merge_decisions(rows, tasks, checks, source)
    return ImportResult(source, path, reviews, decisions, len(tasks), superseded, drafts, without_status)


def _frame(rows: list[dict[str, Any]], dtypes: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(dtypes))
    return (
        frame.astype(dtypes)
        if len(frame)
        else pd.DataFrame({c: pd.Series(dtype=t) for c, t in dtypes.items()})
    )


def _read_export(path: Path) -> tuple[str, Any, Path]:
    if path.is_dir():
        records = path / "records.json"
        if not records.exists():
            raise MeltError(
                "a folder given to import must be an Argilla dataset folder with records.json", file=path
            )
        path = records
    if not path.exists():
        raise MeltError("file not found", file=path)
    raw = path.read_bytes()
    if not raw.strip():
        raise MeltError("file is empty", file=path)
    try:
        payload = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise MeltError(f"not UTF-8 text (byte at offset {exc.start})", file=path) from exc
    except json.JSONDecodeError as exc:
        raise MeltError(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); export Label Studio projects "
            "as JSON (not CSV or JSON-MIN)",
            file=path,
        ) from exc
    if isinstance(payload, dict):
        # An API response or a hand-made file may wrap the list.
        for key in ("tasks", "records", "items"):
            if isinstance(payload.get(key), list):
                payload = payload[key]
                break
        else:
            payload = [payload]
    if not isinstance(payload, list):
        raise MeltError("expected a JSON list of tasks (Label Studio) or records (Argilla)", file=path)
    first = next((item for item in payload if isinstance(item, dict)), None)
    if first is None:
        raise MeltError("the export holds no task or record (an empty list?)", file=path)
    if "data" in first or "annotations" in first or "completions" in first:
        return "labelstudio", payload, path
    if (
        "fields" in first
        or "responses" in first
        or "suggestions" in first
        or any(".responses" in key for key in first)
    ):
        return "argilla", payload, path
    raise MeltError(
        "neither a Label Studio JSON export (tasks with data and annotations; JSON-MIN lacks them) nor Argilla "
        "records "
        f"(records with fields and responses); the first item has keys {sorted(first)[:8]}",
        file=path,
    )


def _object(value: Any, what: str, origin: Path, position: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MeltError(f"{what} is not a JSON object", file=origin, row=position)
    return value


def _reviewer(completed_by: Any) -> str:
    """Label Studio names the annotator by user id, or by {id, email, ...} in some exports."""
    if isinstance(completed_by, dict):
        email = completed_by.get("email")
        if email:
            return str(email)
        if completed_by.get("id") is not None:
            return f"user:{completed_by['id']}"
        return "unknown"
    if completed_by is None or completed_by == "":
        return "unknown"
    if isinstance(completed_by, int | float):
        return f"user:{int(completed_by)}"
    return str(completed_by)


def _label_studio_tasks(payload: list[Any], origin: Path) -> list[Task]:
    tasks = []
    for position, item in enumerate(payload, start=1):
        task = _object(item, f"task {position}", origin, position)
        data = _object(task.get("data"), f"task {position}'s data", origin, position)
        uid = data.get("utterance_id")
        if not isinstance(uid, str) or not uid:
            raise MeltError(
                f"task {position} (Label Studio id {task.get('id')}) has no data.utterance_id: not a task "
                "written by `melt review export`",
                file=origin,
                row=position,
                column="utterance_id",
            )
        annotations = task["annotations"] if "annotations" in task else task.get("completions", [])
        if annotations is None:
            annotations = []
        if not isinstance(annotations, list):
            raise MeltError(f"task {position}'s annotations are not a list", file=origin, row=position)
        reviews = [_label_studio_review(a, position, origin) for a in annotations]
        tasks.append(
            Task(
                id=uid,
                position=position,
                task=None if task.get("id") is None else str(task["id"]),
                audio_sha256=_str_or_none(data.get("audio_sha256")),
                audio_path=_str_or_none(data.get("audio_path")),
                llm_label=_str_or_none(data.get("llm_label")),
                human_label=_str_or_none(data.get("human_label")),
                reason_codes=_str_or_none(data.get("reason_codes")),
                reviews=reviews,
            )
        )
    return tasks


def _label_studio_review(item: Any, position: int, origin: Path) -> dict[str, Any]:
    annotation = _object(item, f"an annotation of task {position}", origin, position)
    skipped = bool(annotation.get("was_cancelled") or annotation.get("skipped"))
    result = annotation.get("result") or []
    if not isinstance(result, list):
        raise MeltError(f"task {position}: an annotation's result is not a list", file=origin, row=position)
    labels: list[str] = []
    comments: list[str] = []
    for entry in result:
        entry = _object(entry, f"a result of task {position}", origin, position)
        value = entry.get("value") if isinstance(entry.get("value"), dict) else {}
        kind = str(entry.get("type", "")).lower()
        if kind == "choices" and entry.get("from_name", CHOICES_NAME) == CHOICES_NAME:
            choices = value.get("choices")
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise MeltError(
                    f"task {position}: value.choices of the emotion result is not a list of labels",
                    file=origin,
                    row=position,
                    column="choices",
                )
            labels += choices
        elif kind == "textarea" and entry.get("from_name", COMMENT_NAME) == COMMENT_NAME:
            text = value.get("text")
            comments += [
                t for t in (text if isinstance(text, list) else [text]) if isinstance(t, str) and t.strip()
            ]
    if len(set(labels)) > 1:
        raise MeltError(
            f"task {position}: an annotation chose several emotions {labels}; the labeling config allows one",
            file=origin,
            row=position,
            column="choices",
        )
    lead_time = annotation.get("lead_time")
    return {
        "reviewer": _reviewer(annotation.get("completed_by")),
        "label": labels[0] if labels and not skipped else None,
        "skipped": skipped,
        "ground_truth": bool(annotation.get("ground_truth")),
        "comment": "\n".join(c.strip() for c in comments) or None,
        "lead_time": float(lead_time)
        if isinstance(lead_time, int | float) and not isinstance(lead_time, bool)
        else None,
        "submitted_at": _str_or_none(annotation.get("updated_at") or annotation.get("created_at")),
    }


def _argilla_tasks(payload: list[Any], origin: Path) -> tuple[list[Task], int, int]:
    tasks = []
    drafts = without_status = 0
    for position, item in enumerate(payload, start=1):
        record = _object(item, f"record {position}", origin, position)
        if "fields" in record or "responses" in record or "suggestions" in record:
            metadata = record.get("metadata") or {}
            responses = _nested_responses(record.get("responses") or {}, position, origin)
        else:  # flattened: fields and metadata at the top, responses as parallel lists
            metadata = record
            responses = _flat_responses(record, position, origin)
        metadata = _object(metadata, f"record {position}'s metadata", origin, position)
        uid = metadata.get("utterance_id") or record.get("id")
        if not isinstance(uid, str) or not uid:
            raise MeltError(
                f"record {position} has no utterance id (metadata.utterance_id or id)",
                file=origin,
                row=position,
                column="utterance_id",
            )
        reviews = []
        for user, answer in responses.items():
            label = answer.get(CHOICES_NAME)
            if label is not None and not isinstance(label, str):
                raise MeltError(
                    f"record {position}: the emotion response of {user} is not one label ({label!r})",
                    file=origin,
                    row=position,
                    column=CHOICES_NAME,
                )
            if not answer.get("status"):
                without_status += 1
            status = str(answer.get("status") or "submitted").lower()
            if status == "draft":
                drafts += 1
                continue
            reviews.append(
                {
                    "reviewer": user,
                    "label": label if status != "discarded" else None,
                    "skipped": status == "discarded",
                    "comment": answer.get(COMMENT_NAME),
                    "lead_time": None,
                    "submitted_at": None,
                }
            )
        tasks.append(
            Task(
                id=uid,
                position=position,
                task=_str_or_none(record.get("_server_id")),
                audio_sha256=_str_or_none(metadata.get("audio_sha256")),
                audio_path=_str_or_none(metadata.get("audio_path")),
                llm_label=_str_or_none(metadata.get("llm_label")),
                human_label=_str_or_none(metadata.get("human_label")),
                reason_codes=";".join(metadata["reasons"])
                if isinstance(metadata.get("reasons"), list)
                else None,
                reviews=reviews,
            )
        )
    return tasks, drafts, without_status


def _nested_responses(responses: Any, position: int, origin: Path) -> dict[str, dict[str, Any]]:
    """{question: [{value, user_id, status?}]} -> {user: {question: value, status}}."""
    responses = _object(responses, f"record {position}'s responses", origin, position)
    users: dict[str, dict[str, Any]] = {}
    for question, answers in responses.items():
        if not isinstance(answers, list):
            raise MeltError(
                f"record {position}: responses.{question} is not a list", file=origin, row=position
            )
        for answer in answers:
            answer = _object(answer, f"a response of record {position}", origin, position)
            user = str(answer.get("user_id") or "unknown")
            entry = users.setdefault(user, {})
            entry[question] = answer.get("value")
            if answer.get("status"):
                entry["status"] = str(answer["status"])
    return users


def _flat_responses(record: dict[str, Any], position: int, origin: Path) -> dict[str, dict[str, Any]]:
    """`to_list(flatten=True)`: "q.responses", "q.responses.users", "q.responses.status" parallel lists."""
    users: dict[str, dict[str, Any]] = {}
    for key in record:
        if not key.endswith(".responses"):
            continue
        question = key[: -len(".responses")]
        values = record.get(key) or []
        who = record.get(f"{key}.users") or []
        statuses = record.get(f"{key}.status") or [None] * len(values)
        if not (isinstance(values, list) and isinstance(who, list) and isinstance(statuses, list)) or not (
            len(values) == len(who) == len(statuses)
        ):
            raise MeltError(
                f"record {position}: {key}, {key}.users and {key}.status are not lists of one length",
                file=origin,
                row=position,
                column=key,
            )
        for value, user, status in zip(values, who, statuses, strict=True):
            entry = users.setdefault(str(user), {})
            entry[question] = value
            if status:
                entry["status"] = str(status)
    return users


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _latest_per_reviewer(reviews: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    latest: dict[str, tuple[int, dict[str, Any]]] = {}
    for order, review in enumerate(reviews):
        key = review["reviewer"]
        stamp = (review.get("submitted_at") or "", order)
        if key not in latest or stamp >= (latest[key][1].get("submitted_at") or "", latest[key][0]):
            latest[key] = (order, review)
    kept = [review for _, review in sorted(latest.values(), key=lambda pair: pair[0])]
    return kept, len(reviews) - len(kept)


def _audio_check(task: Task, hashes: dict[str, str | None], origin: Path, allow_changed: bool) -> str:
    from melt.acoustics.features import file_sha256

    if task.audio_sha256 is None:
        return "no_audio"
    if task.audio_path is None:
        return "not_found"
    if task.audio_path not in hashes:
        try:
            hashes[task.audio_path] = file_sha256(task.audio_path)
        except OSError:
            hashes[task.audio_path] = None
    actual = hashes[task.audio_path]
    if actual is None:
        return "not_found"
    if actual != task.audio_sha256:
        if allow_changed:
            return "changed"
        raise MeltError(
            f"the audio of {task.id!r} ({task.audio_path}) changed since the export (sha256 {actual[:12]}…, "
            f"exported {task.audio_sha256[:12]}…); the reviewers heard other audio. Pass --allow-changed-audio "
            "to import anyway (marked audio_check=changed)",
            file=origin,
            row=task.position,
            column="audio_sha256",
        )
    return "ok"


def merge_decisions(
    reviews: Iterable[dict[str, Any]], tasks: Iterable[Task], checks: dict[str, str], source: str
) -> pd.DataFrame:
    """One row per utterance: the plurality label of its submitted reviews (see the module docstring).
    `reviews` are the per-reviewer rows (dicts with id, reviewer, label, skipped, comment, lead_time)."""
    info: dict[str, Task] = {}
    for task in tasks:
        info.setdefault(task.id, task)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for review in reviews:
        by_id.setdefault(review["id"], []).append(review)
    rows = []
    for uid, task in info.items():
        mine = by_id.get(uid, [])
        labelled = [r for r in mine if not r["skipped"] and r["label"] is not None]
        counts = Counter(str(r["label"]) for r in labelled)
        truth = Counter(str(r["label"]) for r in labelled if r.get("ground_truth"))
        skipped = sum(bool(r["skipped"]) for r in mine)
        label = candidates = None
        agreement = None
        if counts:
            top = max(counts.values())
            leaders = sorted(label for label, n in counts.items() if n == top)
            agreement = top / sum(counts.values())
            truths = sorted(label for label, n in truth.items() if n == max(truth.values())) if truth else []
            if len(truths) == 1:
                decision, label = "ground_truth", truths[0]
                agreement = counts[label] / sum(counts.values())
            elif truths:  # ground-truth annotations that disagree: a second look
                decision, candidates = "tie", "|".join(truths)
            elif len(leaders) == 1:
                decision, label = "decided", leaders[0]
            else:
                decision, candidates = "tie", "|".join(leaders)
        else:
            decision = "skipped" if skipped else "unreviewed"
        votes = {str(r["reviewer"]): {str(r["label"]): 1.0} for r in labelled}
        comments = [f"{r['reviewer']}: {r['comment']}" for r in mine if r["comment"]]
        times = [
            float(r["lead_time"])
            for r in mine
            if r["lead_time"] is not None and r["lead_time"] == r["lead_time"]
        ]
        rows.append(
            {
                "id": uid,
                "label": label,
                "decision": decision,
                "reviewers": len(labelled),
                "skipped": skipped,
                "agreement": agreement,
                "candidates": candidates,
                "votes": json.dumps(votes, ensure_ascii=False, sort_keys=True),
                "comments": " | ".join(comments) or None,
                "lead_time_median": median(times) if times else None,
                "llm_label": task.llm_label,
                "human_label": task.human_label,
                "reason_codes": task.reason_codes,
                "audio_sha256": task.audio_sha256,
                "audio_check": checks.get(uid),
                "source": source,
            }
        )
    return _frame(rows, DECISION_DTYPES)


def reviews_path(decisions_path: str | Path) -> Path:
    """Where the per-reviewer rows go: next to the decisions file, `<name>.reviews.<suffix>`."""
    path = Path(decisions_path)
    return path.with_name(f"{path.stem}.reviews{path.suffix}")


def write_import(
    result: ImportResult, out: str | Path, *, labels: LabelSet = MELT_LABEL_SET
) -> tuple[Path, Path]:
    """The decisions at `out`, the per-reviewer rows next to it (`reviews_path`), and `<name>.json`: how they were
    made (melt version, date, the export file and its sha256, counts, the label set and the merge rule)."""
    from datetime import UTC, datetime

    from melt import __version__
    from melt.acoustics.features import file_sha256
    from melt.corpus.schema import write_table
    from melt.review.export import write_json

    out = Path(out)
    if out.suffix not in (".parquet", ".csv"):
        raise MeltError("the decisions file must end in .parquet or .csv", file=out)
    decisions = write_table(result.decisions, out)
    reviews = write_table(result.reviews, reviews_path(out))
    source = result.path / "records.json" if result.path.is_dir() else result.path
    write_json(
        out.with_suffix(".json"),
        {
            "melt_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "export": str(source.absolute()),
            "export_sha256": file_sha256(source),
            "format": result.source,
            "tasks": result.tasks,
            "reviews": len(result.reviews),
            "reviewers": int(result.reviews["reviewer"].nunique()),
            "skipped": result.skipped,
            "superseded": result.superseded,
            "drafts": result.drafts,
            "argilla_responses_without_status": result.without_status,
            "decisions": {str(k): int(v) for k, v in result.decisions["decision"].value_counts().items()},
            "audio_check": {
                str(k): int(v) for k, v in result.decisions["audio_check"].value_counts().items()
            },
            "label_set": list(labels.labels),
            "merge_rule": "a Label Studio ground-truth annotation decides (decision ground_truth); else the "
            "plurality of submitted labels; a tie for the top is undecided (decision tie); all skipped: skipped; "
            "none: unreviewed; one vote per reviewer, the later annotation stands",
            "outputs": {"decisions": str(decisions), "reviews": str(reviews)},
        },
    )
    return decisions, reviews
