"""Panels of simulated annotators (Scaling Ambiguity): one model asked N times per utterance, each time as a
different annotator with its own focus instruction and temperature, for one label each. The votes become an
emotion distribution per utterance (`RUN_DIR/votes.parquet`, read by `melt ambiguity`).

`scaling-ambiguity` is the paper's protocol, in melt's own words: annotator k gets focus instruction k mod 5
(vocal tone and content together; tone of voice; word choice; subtle vocal cues; what is said against how it
is said) and a temperature drawn from band k mod 5 (0.1–0.3, 0.3–0.5, 0.5–0.7, 0.7–0.9, 0.9–0.93) plus a
jitter of up to ±0.05, both drawn with a random generator seeded by k, clipped to [0.1, 1.0]: the same for
annotator k on every utterance and in every run. A panel file (YAML, `PanelDefinition`) defines its own
personas, temperatures (a list, or bands with jitter), weights and size.

An annotator is one `melt.annotate.engine.Variant` of each utterance's request (its system message, its
temperature, its weight), so panels go through the engine as any run: the store (the request's key holds the
annotator's index, focus and temperature, so panels resume), the budget, validation (a label outside the set is
re-asked once, then dropped and counted: never guessed), retries, rate control, signals and progress.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from melt.agreement import fleiss_kappa, items_with_pairs, rating_counts
from melt.annotate.engine import SampleOutcome, Variant
from melt.errors import MeltError
from melt.prompts import PromptConfig, system_message
from melt.prompts.config import PLACEHOLDER, PLACEHOLDER_COLUMNS

#: The built-in panels, by the name `--panel` takes.
BUILTIN_PANELS: tuple[str, ...] = ("scaling-ambiguity",)
#: Columns of RUN_DIR/votes.parquet: the shared contract (id … reason), then the annotator's weight.
VOTE_COLUMNS: tuple[str, ...] = (
    "id",
    "annotator",
    "persona",
    "temperature",
    "label",
    "status",
    "reason",
    "weight",
)
VOTE_DTYPES = {"id": "string", "annotator": "int64", "persona": "string", "temperature": "float64",
               "label": "string", "status": "string", "reason": "string", "weight": "float64"}  # fmt: skip


class Persona(BaseModel):
    """One way of listening: `focus` is the annotator's instruction, at `{focus}` in the template."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="short name, recorded with each vote")
    focus: str = Field(min_length=1, description="the annotator's instruction")


class PanelDefinition(BaseModel):
    """A panel: annotator k gets persona k mod len(personas), a temperature (`temperatures[k mod len]`, or a draw
    from band k mod len(temperature_bands) plus ±`jitter`, seeded by k, clipped to `clip`) and weight
    `weights[k mod len]` (default 1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    annotators: int = Field(8, ge=1, le=1000, description="N, the number of annotators")
    personas: list[Persona] = Field(min_length=1)
    temperatures: list[float] | None = Field(None, min_length=1, description="fixed temperatures, cycled")
    temperature_bands: list[tuple[float, float]] | None = Field(
        None, min_length=1, description="[low, high] bands, cycled; a draw from the band plus jitter"
    )
    jitter: float = Field(0.05, ge=0, le=1)
    clip: tuple[float, float] = (0.1, 1.0)
    weights: list[float] | None = Field(
        None, min_length=1, description="each annotator's vote weight, cycled"
    )
    prompt: str = Field("panel", description="the template: panel, or a template file with {focus}")

    @model_validator(mode="after")
    def _check(self) -> PanelDefinition:
        if (self.temperatures is None) == (self.temperature_bands is None):
            raise ValueError("give either temperatures (a list) or temperature_bands (a list of [low, high])")
        low, high = self.clip
        if not 0 <= low <= high <= 2:
            raise ValueError(f"clip must be [low, high] with 0 <= low <= high <= 2, got {list(self.clip)}")
        for t in self.temperatures or ():
            if not 0 <= t <= 2:
                raise ValueError(f"temperatures must be within [0, 2], got {t}")
        for band in self.temperature_bands or ():
            if not 0 <= band[0] <= band[1] <= 2:
                raise ValueError(f"a temperature band must be [low, high] within [0, 2], got {list(band)}")
        for w in self.weights or ():
            if not w > 0 or w != w or w == float("inf"):
                raise ValueError(f"weights must be positive numbers, got {w}")
        names = [p.name for p in self.personas]
        if len(set(names)) != len(names):
            raise ValueError(f"persona names must differ, got {names}")
        return self

    def member(self, k: int) -> PanelMember:
        persona = self.personas[k % len(self.personas)]
        if self.temperatures is not None:
            temperature = self.temperatures[k % len(self.temperatures)]
        else:
            low, high = self.temperature_bands[k % len(self.temperature_bands)]  # type: ignore[index]
            draw = random.Random(k)  # seeded by k alone: annotator k is the same in every run
            temperature = draw.uniform(low, high) + draw.uniform(-self.jitter, self.jitter)
            temperature = min(max(temperature, self.clip[0]), self.clip[1])
        weight = self.weights[k % len(self.weights)] if self.weights else 1.0
        return PanelMember(k, persona.name, persona.focus, round(temperature, 4), float(weight))

    def members(self) -> list[PanelMember]:
        return [self.member(k) for k in range(self.annotators)]

    def identity(self) -> dict[str, Any]:
        """What decides the panel's replies (part of the run folder's identity): personas and temperatures.
        Not its size (more annotators continue a folder, as more samples do) nor its weights (they only weigh
        the votes)."""
        rule: Any = (
            {"values": self.temperatures}
            if self.temperatures is not None
            else {
                "bands": [list(b) for b in self.temperature_bands or ()],
                "jitter": self.jitter,
                "clip": list(self.clip),
            }
        )
        return {
            "panel": self.name,
            "panel_personas": [[p.name, p.focus] for p in self.personas],
            "panel_temperatures": rule,
        }


@dataclass(frozen=True)
class PanelMember:
    index: int
    persona: str
    focus: str
    temperature: float
    weight: float


SCALING_AMBIGUITY = PanelDefinition(
    name="scaling-ambiguity",
    annotators=8,
    personas=[
        Persona(
            name="tone-and-content",
            focus="Take in how the voice sounds and what the words say together, and choose the emotion they "
            "point to jointly.",
        ),
        Persona(
            name="tone-of-voice",
            focus="Go mainly by the tone of voice: its loudness, pitch, pace and tension, more than by the words.",
        ),
        Persona(
            name="word-choice",
            focus="Go mainly by the choice of words: what they reveal about how the speaker feels.",
        ),
        Persona(
            name="subtle-cues",
            focus="Listen for small cues that are easy to miss: a tremor, a sigh, a catch in the breath, a voice "
            "that speeds up, slows down or trails off.",
        ),
        Persona(
            name="said-versus-how",
            focus="Compare what is said with how it is said; where they disagree (sarcasm, a brave face, "
            "politeness over anger), go by how it is said.",
        ),
    ],
    temperature_bands=[(0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 0.93)],
    jitter=0.05,
    clip=(0.1, 1.0),
)


def load_panel(spec: str, annotators: int | None = None) -> PanelDefinition:
    """A built-in panel by name or a panel YAML file, with `annotators` (N) overriding its size."""
    if spec == "scaling-ambiguity":
        panel = SCALING_AMBIGUITY
    else:
        path = Path(spec)
        if not path.is_file():
            raise MeltError(
                f"--panel {spec!r} is neither a built-in panel ({', '.join(BUILTIN_PANELS)}) nor an existing file"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(exc, "problem", None) or " ".join(str(exc).split())
            raise MeltError(f"not a valid YAML panel file{where}: {what}", file=path) from exc
        if not isinstance(data, dict):
            raise MeltError(
                "a panel file is a mapping: name, annotators, personas, temperatures...", file=path
            )
        data.setdefault("name", path.stem)
        try:
            panel = PanelDefinition.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'panel'}: {e['msg']}" for e in exc.errors()
            )
            raise MeltError(f"invalid panel: {problems}", file=path) from exc
    if annotators is not None:
        panel = panel.model_copy(update={"annotators": annotators})
    return panel


def panel_of(config: Any) -> PanelDefinition | None:
    """The panel an `AnnotateConfig` asks for, or None."""
    return None if config.panel is None else load_panel(config.panel, config.annotators)


def panel_prompt(config: Any, panel: PanelDefinition) -> PromptConfig:
    """The panel's prompt: its template, the label schema (one label), the run's labels and audio setting."""
    prompt = PromptConfig(
        template=panel.prompt,
        schema_kind="label",
        labels=config.labels,
        context_turns=config.context_turns,
        audio=config.audio,
    )
    template = prompt.load()
    system_placeholders = set(PLACEHOLDER.findall(template.system or ""))
    if "focus" not in system_placeholders:
        raise MeltError(
            "a panel's template must give each annotator its focus: put {focus} in its system message",
            file=template.source,
        )
    reads_corpus = sorted(n for n in system_placeholders if PLACEHOLDER_COLUMNS[n])
    if reads_corpus:
        raise MeltError(
            f"a panel's system message is the same for every utterance: move {reads_corpus} to the user message",
            file=template.source,
        )
    return prompt


def panel_variants(panel: PanelDefinition, prompt: PromptConfig, seed: int | None) -> list[Variant]:
    """One engine `Variant` per annotator: the system message with its focus, its temperature, its weight, and
    (with --seed) seed + k."""
    focus_messages: dict[str, str | None] = {}
    variants = []
    for member in panel.members():
        if member.focus not in focus_messages:
            focus_messages[member.focus] = system_message(prompt, member.focus)
        variants.append(
            Variant(
                temperature=member.temperature,
                seed=None if seed is None else seed + member.index,
                system=focus_messages[member.focus],
                weight=member.weight,
            )
        )
    return variants


def votes_table(
    utterance_ids: list[str], outcomes: dict[str, list[SampleOutcome]], panel: PanelDefinition
) -> pd.DataFrame:
    """RUN_DIR/votes.parquet: one row per utterance and annotator (the shared contract's columns, then weight).
    Only `ok` rows have a label; an invalid vote keeps why in `reason` (its off-set label in the flags is not a
    vote), a failed one the server's error, a pending one that it was not asked."""
    members = panel.members()
    rows = []
    for uid in utterance_ids:
        for member, outcome in zip(members, outcomes[uid], strict=True):
            label = outcome.answer.get("emotion") if outcome.status == "ok" and outcome.answer else None
            if outcome.status == "ok":
                reason = None
            elif outcome.status == "pending":
                reason = "not asked: the run stopped before it (rerun to ask)"
            else:
                reason = outcome.error or outcome.status
            rows.append(
                {
                    "id": uid,
                    "annotator": member.index,
                    "persona": member.persona,
                    "temperature": member.temperature,
                    "label": label,
                    "status": outcome.status,
                    "reason": reason,
                    "weight": member.weight,
                }
            )
    return pd.DataFrame(rows, columns=list(VOTE_COLUMNS)).astype(VOTE_DTYPES)


def off_set_labels(outcomes: Iterable[list[SampleOutcome]]) -> Counter[str]:
    """Labels outside the set in votes that stayed invalid (after the re-ask): dropped, counted here."""
    found: Counter[str] = Counter()
    for votes in outcomes:
        for outcome in votes:
            if outcome.status == "invalid":
                found.update(f.split(":", 1)[1] for f in outcome.flags if f.startswith("off_label:"))
    return found


def panel_report(
    votes: pd.DataFrame, panel: PanelDefinition, labels: list[str], off_set: Counter[str]
) -> dict[str, Any]:
    """What run.json and the summary say about the panel: its members, votes by status, utterances without a
    valid vote, labels outside the set that were dropped, and Fleiss' κ of the annotators over the run."""
    labels_of: dict[str, list[str]] = {}
    statuses: dict[str, set[str]] = {}
    for uid, label, status in zip(votes["id"], votes["label"], votes["status"], strict=True):
        labels_of.setdefault(uid, [])
        statuses.setdefault(uid, set()).add(status)
        if status == "ok" and not pd.isna(label):
            labels_of[uid].append(label)
    ids = list(labels_of)
    counts = rating_counts([labels_of[uid] for uid in ids], labels)
    # Utterances every annotator answered (no failed or pending vote) with not one valid vote among them.
    without = [uid for uid in ids if statuses[uid] <= {"ok", "invalid"} and not labels_of[uid]]
    kappa = fleiss_kappa(counts)
    return {
        "name": panel.name,
        "annotators": panel.annotators,
        "members": [
            {"annotator": m.index, "persona": m.persona, "temperature": m.temperature, "weight": m.weight}
            for m in panel.members()
        ],
        "votes": {str(k): int(v) for k, v in sorted(votes["status"].value_counts().items())},
        "valid_votes": sum(len(v) for v in labels_of.values()),
        "utterances": len(ids),
        "utterances_without_valid_votes": len(without),
        "utterances_without_valid_votes_examples": without[:5],
        "off_set_labels_dropped": dict(off_set.most_common()),
        "fleiss_kappa": None if kappa != kappa else round(kappa, 6),
        "fleiss_kappa_utterances": items_with_pairs(counts),
    }
