"""`melt review export`: the doubtful utterances of a run as a Label Studio project or an Argilla dataset.

Label Studio: `tasks.json` (one task per utterance: audio URL, transcript, speaker, our id, the audio's sha256,
the LLM's and the human's labels as predictions) and `labeling-config.xml` (Audio, Choices of the run's label
set, a comment TextArea). Argilla 2.x: the folder layout of `rg.Dataset.to_disk` (`.argilla/settings.json`,
`.argilla/dataset.json`, `records.json`), which `rg.Dataset.from_disk` loads. Both: `export.json` (how the
export was made) and `selection.csv` (the chosen utterances with their reasons). docs/review.md has the details.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import pandas as pd
from pydantic import Field

from melt import __version__
from melt.corpus.labels import LabelSet
from melt.corpus.schema import atomic_write, write_table
from melt.errors import MeltError
from melt.review.doubt import REASONS, SELECTIONS, DoubtSettings, RunTable, load_run, score_doubt, select

#: Label Studio serves files below LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT under this URL.
LABEL_STUDIO_LOCAL_FILES = "/data/local-files/?d="
#: Argilla serves no files: the default is a plain HTTP server on the audio folder (docs/review.md).
ARGILLA_AUDIO_URL = "http://localhost:8081/"
#: The names of the controls in the labeling config, which an export's `result` entries refer to.
CHOICES_NAME = "emotion"
COMMENT_NAME = "comment"
AUDIO_NAME = "audio"
FORMATS = ("labelstudio", "argilla")


class ExportSettings(DoubtSettings):
    """What to export and how its audio is reached, plus the doubt thresholds."""

    select: Literal["doubtful", "changed", "invalid", "all"] = "doubtful"
    limit: int | None = Field(
        None, ge=1, description="export at most this many utterances, most doubtful first"
    )
    format: Literal["labelstudio", "argilla"] = "labelstudio"
    audio_root: str | None = Field(
        None,
        description="folder the audio URLs are relative to (default: the audio files' common folder; for "
        "Label Studio's local files, the folder above it, Label Studio's document root)",
    )
    audio_prefix: str | None = Field(
        None,
        description=f"prepended to each relative audio path (default {LABEL_STUDIO_LOCAL_FILES!r} for Label "
        f"Studio, {ARGILLA_AUDIO_URL!r} for Argilla)",
    )

    def prefix(self) -> str:
        if self.audio_prefix is not None:
            return self.audio_prefix
        return LABEL_STUDIO_LOCAL_FILES if self.format == "labelstudio" else ARGILLA_AUDIO_URL


@dataclass
class ExportResult:
    out_dir: Path
    #: the exported utterances, most doubtful first, with `audio_sha256` and `audio_url`
    selected: pd.DataFrame
    #: utterances in the run
    total: int
    #: the folder audio URLs are relative to (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)
    audio_root: Path | None
    #: the common folder of the exported audio files (the Local files storage Label Studio needs)
    audio_folder: Path | None = None
    files: list[Path] = field(default_factory=list)

    def label_studio_storages(self) -> list[Path]:
        """The Local files storages Label Studio needs to serve the audio: the common folder, or, when that is
        the document root itself (which Label Studio refuses as a storage), each sub-folder of the root that
        holds audio. Empty when some audio lies directly in the root: Label Studio cannot serve it."""
        if self.audio_root is None or self.audio_folder is None:
            return []
        if self.audio_folder != self.audio_root:
            return [self.audio_folder]
        paths = [
            Path(p) for p, h in zip(self.selected["audio_path"], self.selected["audio_sha256"], strict=True)
        ]
        paths = [p for p, h in zip(paths, self.selected["audio_sha256"], strict=True) if pd.notna(h)]
        if any(p.parent == self.audio_root for p in paths):
            return []
        return sorted({self.audio_root / p.relative_to(self.audio_root).parts[0] for p in paths})

    @property
    def missing_audio(self) -> int:
        return int(self.selected["audio_sha256"].isna().sum())


def export_review(
    run_dir: str | Path,
    out_dir: str | Path,
    settings: ExportSettings | None = None,
    *,
    corpus: str | Path | None = None,
    check: str | Path | None = None,
) -> ExportResult:
    """Select, rank and write the review export of the run in `run_dir` into `out_dir`."""
    settings = settings or ExportSettings()
    out_dir = Path(out_dir)
    run = load_run(run_dir, corpus)
    scored = score_doubt(run, settings, check=check)
    chosen = select(scored, settings.select, settings.limit).reset_index(drop=True)
    if chosen.empty:
        raise MeltError(
            f"no utterance of the run is selected by --select {settings.select} "
            f"({SELECTIONS[settings.select]}; {len(scored)} utterances); nothing to export",
            file=run.run_dir,
        )
    chosen["audio_sha256"] = pd.Series([_sha256(p) for p in chosen["audio_path"]], dtype="string")
    root, folder = _audio_root(chosen, settings)
    chosen["audio_url"] = pd.Series(
        [_audio_url(row, root, settings.prefix()) for row in chosen.itertuples(index=False)], dtype="string"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ExportResult(
        out_dir=out_dir, selected=chosen, total=len(scored), audio_root=root, audio_folder=folder
    )
    if settings.format == "labelstudio":
        result.files += write_label_studio(chosen, run, out_dir)
    else:
        result.files += write_argilla(chosen, run, out_dir)
    result.files.append(_write_selection(chosen, out_dir))
    result.files.append(_write_manifest(result, run, settings, check))
    return result


def _sha256(path: object) -> str | None:
    from melt.acoustics.features import file_sha256

    if path is None or pd.isna(path):
        return None
    try:
        return file_sha256(str(path))
    except OSError:
        return None


def _audio_root(chosen: pd.DataFrame, settings: ExportSettings) -> tuple[Path | None, Path | None]:
    """(the folder URLs are relative to, the common folder of the audio files)."""
    folders = [
        str(Path(p).parent)
        for p, h in zip(chosen["audio_path"], chosen["audio_sha256"], strict=True)
        if pd.notna(h)
    ]
    common = Path(os.path.commonpath(folders)) if folders else None
    if settings.audio_root is not None:
        return Path(os.path.abspath(settings.audio_root)), common
    if (
        common is not None
        and settings.format == "labelstudio"
        and settings.prefix() == LABEL_STUDIO_LOCAL_FILES
    ):
        # Label Studio serves a local file only through a Local files storage that holds it, and refuses a
        # storage equal to its document root: the root must be the folder above the audio.
        return common.parent, common
    return common, common


def _audio_url(row: Any, root: Path | None, prefix: str) -> str:
    if pd.isna(row.audio_sha256) or root is None:
        return ""
    path = Path(row.audio_path)
    try:
        relative = path.relative_to(root)
    except ValueError as exc:
        raise MeltError(
            f"the audio of {row.id!r} ({path}) is not inside --audio-root {root}", column="audio"
        ) from exc
    return prefix + quote(relative.as_posix(), safe="/")


def _reasons_text(reasons_json: str) -> str:
    reasons = json.loads(reasons_json)
    return "; ".join(f"{r['reason']} ({r['detail']})" for r in reasons) if reasons else "none"


def _optional(value: object) -> Any:
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and value != value:
        return None
    return value.item() if hasattr(value, "item") else value


def _human_share(votes: dict[str, dict[str, float]], human: str | None, labels: LabelSet) -> float | None:
    """The share of the corpus's raters who chose the human label, when the corpus has per-rater votes."""
    if not votes or human is None:
        return None
    weight = sum(
        w for vote in votes.values() for label, w in vote.items() if labels.normalize(label) == human
    )
    return round(weight / len(votes), 4)


def _choice_result(label: str) -> list[dict[str, Any]]:
    return [
        {
            "from_name": CHOICES_NAME,
            "to_name": AUDIO_NAME,
            "type": "choices",
            "value": {"choices": [label]},
        }
    ]


def _score(row: Any) -> float | None:
    for value in (row.confidence, row.agreement):
        number = _optional(value)
        if number is not None:
            return round(float(number), 4)
    return None


def label_studio_tasks(chosen: pd.DataFrame, run: RunTable) -> list[dict[str, Any]]:
    from melt.corpus.schema import votes_of

    tasks = []
    model = run.model or "unknown model"
    human_votes = votes_of(chosen, source=run.corpus_path)
    for row, votes in zip(chosen.itertuples(index=False), human_votes, strict=True):
        speaker = _optional(row.speaker) or ""
        text = _optional(row.text) or ""
        data = {
            "utterance_id": str(row.id),
            "audio": row.audio_url,
            "audio_sha256": _optional(row.audio_sha256),
            "audio_path": _optional(row.audio_path),
            "text": text,
            "speaker": speaker,
            "header": f"{speaker}: “{text}”" if speaker else f"“{text}”",
            "llm_label": _optional(row.llm_label),
            "human_label": _optional(row.human_label),
            "doubt": float(row.doubt),
            "reasons": _reasons_text(row.reasons),
            "reason_codes": _optional(row.reason_codes) or "",
        }
        predictions = []
        llm = _optional(row.llm_label)
        if llm is not None and run.labels.is_known(llm):
            prediction: dict[str, Any] = {"model_version": f"llm: {model}", "result": _choice_result(llm)}
            score = _score(row)
            if score is not None:
                prediction["score"] = score
            predictions.append(prediction)
        human = _optional(row.human_label)
        if human is not None and run.labels.is_known(human):
            prediction = {"model_version": "human: corpus label", "result": _choice_result(human)}
            share = _human_share(votes, human, run.labels)
            if share is not None:
                prediction["score"] = share
            predictions.append(prediction)
        tasks.append({"data": data, "predictions": predictions})
    return tasks


def labeling_config(labels: LabelSet) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels.labels)
    return f"""<View>
  <Header value="$header"/>
  <Audio name="{AUDIO_NAME}" value="$audio"/>
  <Choices name="{CHOICES_NAME}" toName="{AUDIO_NAME}" choice="single-radio" showInline="true" required="true">
{choices}
  </Choices>
  <TextArea name="{COMMENT_NAME}" toName="{AUDIO_NAME}" rows="2" editable="true" maxSubmissions="1"
            placeholder="Comment (optional): what you hear, why the label is hard"/>
  <Header value="Why this utterance is reviewed" size="6"/>
  <Text name="why" value="$reasons"/>
</View>
"""


def write_json(path: Path, payload: Any) -> Path:
    """Indented UTF-8 JSON, written atomically (orjson: the standard encoder is slow on large exports)."""
    import orjson

    data = orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_label_studio(chosen: pd.DataFrame, run: RunTable, out_dir: Path) -> list[Path]:
    config = labeling_config(run.labels)
    return [
        write_json(out_dir / "tasks.json", label_studio_tasks(chosen, run)),
        atomic_write(out_dir / "labeling-config.xml", lambda tmp: tmp.write_text(config, encoding="utf-8")),
    ]


_ARGILLA_PLAYER = (
    '<audio controls preload="metadata" style="width:100%" src="{{record.fields.audio.url}}"></audio>'
    '<div style="color:#777;font-size:.8em">sha256 {{record.fields.audio.sha256}}</div>'
)


def _argilla_field(
    name: str, title: str, settings: dict[str, Any], *, required: bool = True
) -> dict[str, Any]:
    return {
        "id": None,
        "inserted_at": None,
        "updated_at": None,
        "name": name,
        "settings": settings,
        "title": title,
        "required": required,
        "description": None,
        "dataset_id": None,
    }


def _argilla_question(
    name: str, title: str, settings: dict[str, Any], description: str, *, required: bool
) -> dict:
    return {
        "id": None,
        "name": name,
        "settings": settings,
        "title": title,
        "description": description,
        "required": required,
        "inserted_at": None,
        "updated_at": None,
    }


def _argilla_metadata(name: str, title: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": None,
        "inserted_at": None,
        "updated_at": None,
        "name": name,
        "settings": {**settings, "visible_for_annotators": True},
        "type": settings["type"],
        "title": title,
        "visible_for_annotators": True,
        "dataset_id": None,
    }


def argilla_settings(labels: LabelSet) -> dict[str, Any]:
    options = [{"value": label, "text": label, "description": None} for label in labels.labels]
    return {
        "guidelines": (
            "Listen to the clip and choose the emotion the speaker expresses. The suggestion is the LLM's label; "
            "the context field names the human label and why the utterance is reviewed. Discard a record you "
            "cannot judge (no audio, unintelligible)."
        ),
        "questions": [
            _argilla_question(
                CHOICES_NAME,
                "Emotion",
                {"type": "label_selection", "options": options, "visible_options": len(options)},
                "The emotion you hear.",
                required=True,
            ),
            _argilla_question(
                COMMENT_NAME,
                "Comment",
                {"type": "text", "use_markdown": False},
                "Optional: what you hear, why the label is hard.",
                required=False,
            ),
        ],
        "fields": [
            _argilla_field(
                AUDIO_NAME, "Audio", {"type": "custom", "template": _ARGILLA_PLAYER, "advanced_mode": False}
            ),
            _argilla_field("text", "Transcript", {"type": "text", "use_markdown": False}),
            _argilla_field("context", "Context", {"type": "text", "use_markdown": True}),
        ],
        "vectors": [],
        "metadata": [
            _argilla_metadata("reasons", "Reasons", {"type": "terms", "values": list(REASONS)}),
            _argilla_metadata("doubt", "Doubt score", {"type": "float", "min": None, "max": None}),
            _argilla_metadata("llm_label", "LLM label", {"type": "terms", "values": None}),
            _argilla_metadata("human_label", "Human label", {"type": "terms", "values": None}),
        ],
        "allow_extra_metadata": True,
    }


def argilla_records(chosen: pd.DataFrame, run: RunTable) -> list[dict[str, Any]]:
    records = []
    model = run.model or "unknown model"
    for row in chosen.itertuples(index=False):
        llm, human = _optional(row.llm_label), _optional(row.human_label)
        speaker = _optional(row.speaker) or "unknown speaker"
        context = (
            f"**{speaker}** · id `{row.id}`  \nLLM: **{llm or '(no answer)'}** · human: **{human or '(none)'}**  \n"
            f"Why reviewed: {_reasons_text(row.reasons)}"
        )
        metadata = {
            "utterance_id": str(row.id),
            "audio_sha256": _optional(row.audio_sha256),
            "audio_path": _optional(row.audio_path),
            "doubt": float(row.doubt),
            "reasons": [r for r in (_optional(row.reason_codes) or "").split(";") if r],
            "llm_label": llm,
            "human_label": human,
        }
        suggestions = {}
        if llm is not None and run.labels.is_known(llm):
            suggestions[CHOICES_NAME] = {"value": llm, "score": _score(row), "agent": f"melt llm: {model}"}
        records.append(
            {
                "id": str(row.id),
                "fields": {
                    AUDIO_NAME: {"url": row.audio_url, "sha256": _optional(row.audio_sha256) or ""},
                    "text": _optional(row.text) or "(no transcript)",
                    "context": context,
                },
                "metadata": {k: v for k, v in metadata.items() if v is not None and v != []},
                "suggestions": suggestions,
                "responses": {},
                "vectors": {},
                "_server_id": None,
            }
        )
    return records


def write_argilla(chosen: pd.DataFrame, run: RunTable, out_dir: Path) -> list[Path]:
    name = f"melt-review-{run.run_dir.absolute().name}"
    dataset = {
        "id": None,
        "inserted_at": None,
        "updated_at": None,
        "name": name,
        "status": "draft",
        "guidelines": None,
        "allow_extra_metadata": True,
        "distribution": {"strategy": "overlap", "min_submitted": 1},
        "workspace_id": None,
        "last_activity_at": None,
    }
    parts = {
        out_dir / ".argilla" / "settings.json": argilla_settings(run.labels),
        out_dir / ".argilla" / "dataset.json": dataset,
        out_dir / "records.json": argilla_records(chosen, run),
    }
    return [write_json(path, payload) for path, payload in parts.items()]


SELECTION_COLUMNS = (
    "id",
    "doubt",
    "reason_codes",
    "reasons",
    "llm_label",
    "human_label",
    "status",
    "confidence",
    "agreement",
    "speaker",
    "text",
    "audio_path",
    "audio_sha256",
    "audio_url",
)


def _write_selection(chosen: pd.DataFrame, out_dir: Path) -> Path:
    return write_table(
        chosen[[c for c in SELECTION_COLUMNS if c in chosen.columns]], out_dir / "selection.csv"
    )


def _write_manifest(
    result: ExportResult, run: RunTable, settings: ExportSettings, check: str | Path | None
) -> Path:
    from melt.acoustics.features import file_sha256

    chosen = result.selected
    reason_counts: dict[str, int] = {}
    for codes in chosen["reason_codes"].fillna(""):
        for code in filter(None, codes.split(";")):
            reason_counts[code] = reason_counts.get(code, 0) + 1
    manifest = {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "format": settings.format,
        "run": str(run.run_dir.absolute()),
        "model": run.model,
        "corpus": str(run.corpus_path.absolute()),
        "corpus_sha256": file_sha256(run.corpus_path),
        "check": str(Path(check).absolute()) if check is not None else None,
        "settings": settings.model_dump(mode="json"),
        "audio_root": str(result.audio_root) if result.audio_root else None,
        "audio_folder": str(result.audio_folder) if result.audio_folder else None,
        "label_studio_storages": [str(p) for p in result.label_studio_storages()]
        if settings.format == "labelstudio"
        else None,
        "audio_prefix": settings.prefix(),
        "label_set": list(run.labels.labels),
        "utterances_in_run": result.total,
        "exported": len(chosen),
        "without_audio": result.missing_audio,
        "reasons": dict(sorted(reason_counts.items(), key=lambda kv: list(REASONS).index(kv[0]))),
        "utterances": [
            {"id": str(uid), "audio_sha256": _optional(sha)}
            for uid, sha in zip(chosen["id"], chosen["audio_sha256"], strict=True)
        ],
    }
    return write_json(result.out_dir / "export.json", manifest)
