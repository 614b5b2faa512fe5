"""Why an utterance of an annotation run deserves a human look, and how strongly.

Every utterance gets a list of reasons, each with a strength in [0, 1]. The doubt score is
`INVALID_WEIGHT` (10) for an invalid answer plus the sum of the other reasons' strengths, so invalid answers
come first, then utterances with more and stronger reasons; ties keep the corpus order. docs/review.md has
the table of reasons.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.errors import MeltError

#: reason code -> what it means, in the order reasons are listed on a task.
REASONS: dict[str, str] = {
    "invalid": "the LLM gave no usable answer (status invalid, failed or pending); strength 1",
    "low_agreement": "self-consistency: the majority label won less than min_agreement of the samples; "
    "strength 1 - agreement",
    "low_confidence": "the label's confidence (from log probabilities) is below min_confidence; "
    "strength 1 - confidence",
    "disagrees_with_human": "the LLM's label differs from the corpus's human label; strength 1",
    "acoustic_mismatch": "a voice description contradicts the acoustic bin of `melt acoustics check`; strength "
    "the mean distance between description and bin over the checked attributes (low-high counts 1, "
    "adjacent 0.5)",
    "ambiguous_panel": "the annotator panel's votes (RUN_DIR/votes.parquet) spread over several labels: "
    "normalised entropy at least min_ambiguity; strength the normalised entropy",
}
INVALID_WEIGHT = 10.0
#: The panel votes of a run, written by the panel engine (contract in the project brief).
PANEL_VOTES = "votes.parquet"
_LEVELS = {"low": 0, "mid": 1, "high": 2}


class DoubtSettings(BaseModel):
    """Thresholds of the doubt reasons."""

    model_config = ConfigDict(extra="forbid")

    min_agreement: float = Field(
        0.7, ge=0, le=1, description="doubtful when the majority label's share of samples is below this"
    )
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="doubtful when the label's confidence is below this"
    )
    min_ambiguity: float = Field(
        0.5, ge=0, le=1, description="doubtful when the panel votes' normalised entropy is at least this"
    )


@dataclass
class RunTable:
    """An annotation run joined to its corpus: one row per utterance of the run."""

    table: pd.DataFrame
    run_dir: Path
    corpus_path: Path
    run_info: dict[str, Any]
    labels: LabelSet

    @property
    def model(self) -> str | None:
        return self.run_info.get("model")


def load_run(run_dir: str | Path, corpus: str | Path | None = None) -> RunTable:
    """The run's annotations joined to the corpus table (`corpus`, else the one named in run.json).

    Adds `audio_path` (the audio file as an absolute path, relative paths resolved against the corpus table's
    folder), `human_label` (the corpus's `label` normalised with the run's label set) and `llm_label`."""
    from melt.acoustics.check import read_annotations
    from melt.corpus.schema import check_ids, read_table, require_columns

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MeltError("not a run folder (expected the folder `melt annotate --out` wrote)", file=run_dir)
    run_json = run_dir / "run.json"
    info: dict[str, Any] = {}
    if run_json.exists():
        try:
            info = json.loads(run_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MeltError(f"not valid JSON ({exc})", file=run_json) from exc
        if not isinstance(info, dict):
            raise MeltError("expected a JSON object", file=run_json)
    if corpus is None:
        if not info.get("corpus"):
            raise MeltError("run.json names no corpus table; pass --corpus", file=run_dir)
        corpus = info["corpus"]
    corpus_path = Path(corpus)
    annotations, source = read_annotations(run_dir)
    require_columns(annotations, ["id", "status", "emotion"], source=source, purpose="a review export")
    check_ids(annotations, source=source)
    table = read_table(corpus_path)
    labels = _run_labels(info, run_json)

    annotations = annotations.copy()
    annotations["id"] = annotations["id"].astype("string")
    known = set(table["id"])
    missing = [i for i in annotations["id"] if i not in known]
    if missing:
        row = int(annotations["id"].tolist().index(missing[0])) + 1
        raise MeltError(
            f"id {missing[0]!r} of the run is not in the corpus table {corpus_path} "
            f"({len(missing)} ids missing); pass the corpus the run annotated with --corpus",
            file=source,
            row=row,
            column="id",
        )
    run_columns = [
        c
        for c in ("status", "emotion", "confidence", "agreement", "samples", "flags", "error", "distribution")
        if c in annotations.columns
    ]
    corpus_columns = [c for c in table.columns if c not in run_columns]
    joined = annotations[["id", *run_columns]].merge(table[corpus_columns], on="id", how="left")
    joined["audio_path"] = pd.Series(
        [_absolute_audio(value, corpus_path.parent) for value in joined["audio"]], dtype="string"
    )
    joined["human_label"] = labels.normalize_series(joined["label"])
    joined["llm_label"] = labels.normalize_series(joined["emotion"])
    for column in ("confidence", "agreement", "samples"):
        values = joined[column] if column in joined.columns else pd.Series(pd.NA, index=joined.index)
        joined[column] = pd.to_numeric(values, errors="coerce").astype("Float64")
    if "error" not in joined.columns:
        joined["error"] = pd.Series(pd.NA, index=joined.index, dtype="string")
    joined["status"] = joined["status"].astype("string").str.strip().str.lower()
    return RunTable(joined, run_dir, corpus_path, info, labels)


def _run_labels(info: dict[str, Any], run_json: Path) -> LabelSet:
    labels = (info.get("config") or {}).get("labels")
    if not labels:
        return MELT_LABEL_SET
    try:
        return LabelSet.model_validate(labels)
    except ValueError as exc:
        raise MeltError(f"the run's label set is not readable ({exc})", file=run_json) from exc


def _absolute_audio(value: object, base: Path) -> str | None:
    if value is None or pd.isna(value) or not str(value).strip():
        return None
    path = Path(str(value))
    return os.path.abspath(path if path.is_absolute() else base / path)


def normalised_entropy(counts: Iterable[float]) -> float:
    """Shannon entropy of the vote counts divided by the log of the number of distinct labels present (the
    Scaling Ambiguity paper's ambiguity): 0 when unanimous, 1 when the votes split evenly."""
    values = [c for c in counts if c > 0]
    if len(values) < 2:
        return 0.0
    total = sum(values)
    entropy = -sum(c / total * math.log(c / total) for c in values)
    return entropy / math.log(len(values))


def panel_votes(run_dir: Path, labels: LabelSet) -> dict[str, Counter[str]] | None:
    """id -> label counts of the panel's usable votes (status ok with a label); None without votes.parquet."""
    from melt.corpus.schema import read_any, require_columns

    path = run_dir / PANEL_VOTES
    if not path.exists():
        return None
    votes = read_any(path)
    require_columns(votes, ["id", "label", "status"], source=path, purpose="the panel's ambiguity")
    usable = votes[votes["status"].astype("string").str.strip().str.lower().eq("ok").fillna(False)]
    counts: dict[str, Counter[str]] = {}
    for uid, label in zip(usable["id"].astype(str), usable["label"], strict=True):
        normalised = labels.normalize(label)
        if normalised is not None:
            counts.setdefault(uid, Counter())[normalised] += 1
    return counts


def acoustic_rows(check: str | Path) -> tuple[pd.DataFrame, Path]:
    """The per-row outcomes of `melt acoustics check` (its output folder or its rows.csv)."""
    from melt.corpus.schema import read_any, require_columns

    path = Path(check)
    if path.is_dir():
        path = path / "rows.csv"
        if not path.exists():
            raise MeltError("no rows.csv: expected the output folder of `melt acoustics check`", file=check)
    rows = read_any(path)
    require_columns(
        rows, ["id", "attribute", "described", "bin", "outcome"], source=path, purpose="the acoustic check"
    )
    return rows, path


def _mismatches(rows: pd.DataFrame) -> dict[str, tuple[float, list[str]]]:
    """id -> (strength, details) over the scored attributes of the acoustic check."""
    scored = rows[rows["outcome"].astype("string").eq("scored").fillna(False)]
    found: dict[str, tuple[float, list[str]]] = {}
    for uid, part in scored.groupby(scored["id"].astype(str), sort=False):
        distance = 0.0
        details = []
        for attribute, described, measured in zip(
            part["attribute"], part["described"], part["bin"], strict=True
        ):
            gap = abs(_LEVELS.get(str(described), 1) - _LEVELS.get(str(measured), 1))
            if gap:
                distance += gap / 2
                details.append(f"{attribute} described {described}, measured {measured}")
        if details:
            found[uid] = (distance / len(part), details)
    return found


def _reason(code: str, strength: float, detail: str) -> dict[str, Any]:
    return {"reason": code, "strength": round(float(strength), 4), "detail": detail}


def score_doubt(
    run: RunTable, settings: DoubtSettings | None = None, *, check: str | Path | None = None
) -> pd.DataFrame:
    """The run table with `reasons` (JSON list of {reason, strength, detail}), `reason_codes` (";"-joined),
    `doubt` (the score), and `panel_ambiguity`/`panel_votes` where the run has panel votes."""
    settings = settings or DoubtSettings()
    table = run.table.copy()
    votes = panel_votes(run.run_dir, run.labels)
    mismatches: dict[str, tuple[float, list[str]]] = {}
    if check is not None:
        rows, rows_path = acoustic_rows(check)
        if not set(rows["id"].astype(str)) & set(table["id"].astype(str)):
            raise MeltError("the acoustic check shares no id with the run", file=rows_path)
        mismatches = _mismatches(rows)

    ambiguity: list[float | None] = []
    vote_totals: list[int | None] = []
    all_reasons: list[list[dict[str, Any]]] = []
    for row in table.itertuples(index=False):
        uid = str(row.id)
        reasons: list[dict[str, Any]] = []
        status = row.status if isinstance(row.status, str) else "missing"
        if status != "ok":
            error = row.error if isinstance(row.error, str) else ""
            reasons.append(
                _reason("invalid", 1.0, f"status {status}" + (f": {error[:120]}" if error else ""))
            )
        else:
            agreement = _number(row.agreement)
            samples = _number(row.samples)
            if (
                samples is not None
                and samples > 1
                and agreement is not None
                and agreement < settings.min_agreement
            ):
                reasons.append(
                    _reason(
                        "low_agreement",
                        1 - agreement,
                        f"{agreement:.0%} of {int(samples)} samples chose {row.llm_label}",
                    )
                )
            confidence = _number(row.confidence)
            # Without logprobs the engine reports the agreement as the confidence: do not count it twice.
            fallback = (
                samples is not None and samples > 1 and agreement is not None and confidence == agreement
            )
            if confidence is not None and not fallback and confidence < settings.min_confidence:
                reasons.append(
                    _reason(
                        "low_confidence", 1 - confidence, f"confidence {confidence:.2f} for {row.llm_label}"
                    )
                )
            human, llm = _text(row.human_label), _text(row.llm_label)
            if human is not None and llm is not None and human != llm:
                reasons.append(_reason("disagrees_with_human", 1.0, f"LLM {llm}, human {human}"))
            if uid in mismatches:
                strength, details = mismatches[uid]
                reasons.append(_reason("acoustic_mismatch", strength, "; ".join(details)))
        counts = votes.get(uid) if votes is not None else None
        if counts and sum(counts.values()) >= 2:
            value = normalised_entropy(counts.values())
            ambiguity.append(value)
            vote_totals.append(sum(counts.values()))
            if value >= settings.min_ambiguity and value > 0:
                listed = ", ".join(f"{label} {n}" for label, n in counts.most_common())
                reasons.append(
                    _reason("ambiguous_panel", value, f"panel votes {listed} (entropy {value:.2f})")
                )
        else:
            ambiguity.append(None)
            vote_totals.append(sum(counts.values()) if counts else None)
        all_reasons.append(reasons)

    table["reasons"] = pd.Series([json.dumps(r, ensure_ascii=False) for r in all_reasons], dtype="string")
    table["reason_codes"] = pd.Series(
        [";".join(r["reason"] for r in rs) for rs in all_reasons], dtype="string"
    )
    table["doubt"] = [doubt_score(rs) for rs in all_reasons]
    if votes is not None:
        table["panel_ambiguity"] = pd.Series(ambiguity, dtype="Float64")
        table["panel_votes"] = pd.Series(vote_totals, dtype="Int64")
    return table


def doubt_score(reasons: list[dict[str, Any]]) -> float:
    return round(
        sum(INVALID_WEIGHT if r["reason"] == "invalid" else r["strength"] for r in reasons),
        4,
    )


SELECTIONS: dict[str, str] = {
    "doubtful": "utterances with at least one reason",
    "changed": "the LLM's label differs from the human label",
    "invalid": "the LLM gave no usable answer",
    "all": "every utterance of the run",
}


def select(table: pd.DataFrame, selection: str, limit: int | None = None) -> pd.DataFrame:
    """The rows of a scored table in `selection`, highest doubt first (ties in corpus order), at most `limit`."""
    if selection not in SELECTIONS:
        raise MeltError(f"unknown selection {selection!r}; choose one of {', '.join(SELECTIONS)}")
    if selection == "doubtful":
        keep = table["reason_codes"].fillna("").ne("")
    elif selection == "changed":
        keep = (
            table["human_label"].notna()
            & table["llm_label"].notna()
            & table["human_label"].ne(table["llm_label"])
        ).fillna(False)
    elif selection == "invalid":
        keep = table["status"].ne("ok").fillna(True)
    else:
        keep = pd.Series(True, index=table.index)
    chosen = table[keep.astype(bool)].copy()
    chosen["_order"] = range(len(chosen))
    chosen = chosen.sort_values(["doubt", "_order"], ascending=[False, True], kind="stable").drop(
        columns="_order"
    )
    return chosen.head(limit) if limit else chosen


def _number(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _text(value: object) -> str | None:
    return (
        None
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))
        else str(value)
    )
