"""Prompt configuration and prompt templates (built-in or user files).

A template is a system message (optional) and a user message with `{name}` placeholders. Substitution is a
single regex pass over known names only, never `str.format`: the JSON structure in a template keeps its braces
without doubling, and text inserted from the corpus is never scanned again, so an utterance containing
`{labels}` stays literal.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from melt.corpus.labels import MELT_LABEL_SET, MELT_LABELS, LabelSet
from melt.errors import MeltError

BUILTIN_TEMPLATES: tuple[str, ...] = ("melt", "dialogue", "cot")
#: Built-in templates for annotator panels (`--panel`): one label per annotator, with the annotator's focus.
PANEL_TEMPLATES: tuple[str, ...] = ("panel",)

#: placeholder -> corpus columns it reads. `labels`, `json_structure` and `evidence` come from the configuration,
#: `focus` from a panel's annotator.
PLACEHOLDER_COLUMNS: dict[str, tuple[str, ...]] = {
    "speaker": ("speaker",),
    "season": ("season",),
    "episode": ("episode",),
    "utterance": ("text",),
    "context": ("split", "dialogue_id", "utterance_id", "speaker", "text"),
    "labels": (),
    "json_structure": (),
    "evidence": (),
    "focus": (),
}

#: `{evidence}`: what the model is given, with and without the recording (`PromptConfig.audio`).
EVIDENCE = {
    True: "the recording of the line (the attached audio), its transcript and who speaks it",
    False: "the transcript of the line and who speaks it; there is no recording, so judge from the words alone",
}

#: The paper lists the labels in this order; other label sets keep their own order.
PAPER_LABEL_ORDER: tuple[str, ...] = ("anger", "disgust", "sadness", "joy", "neutral", "surprise", "fear")

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TEMPLATE_KEYS = {"system", "user", "free_text"}


@dataclass(frozen=True)
class Template:
    system: str | None
    user: str
    #: the reply is reasoning followed by JSON, so a strict JSON response format would suppress the reasoning
    free_text: bool
    source: str

    def placeholders(self) -> list[str]:
        found = PLACEHOLDER.findall((self.system or "") + "\n" + self.user)
        return list(dict.fromkeys(found))


def substitute(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load_template(template: str) -> Template:
    """A built-in template by name, or a user template file (.yaml/.yml: system + user; other: user)."""
    if template in BUILTIN_TEMPLATES + PANEL_TEMPLATES:
        return _load_builtin(template)
    path = Path(template)
    if not path.is_file():
        raise MeltError(
            f"template {template!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
            "nor an existing file"
        )
    stat = path.stat()
    return _load_file(template, str(path.resolve()), stat.st_mtime_ns, stat.st_size)


# The engine asks for the template per request; parsing YAML each time would cost seconds on a full corpus.
# The file's mtime and size are in the key so an edited template is read again.
@lru_cache(maxsize=16)
def _load_file(template: str, resolved: str, mtime_ns: int, size: int) -> Template:
    path = Path(template)  # errors name the file as the user wrote it
    try:
        text = Path(resolved).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MeltError("template is not UTF-8 text", file=path) from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        return _parse_yaml(text, source=str(path))
    return _check(Template(system=None, user=text.strip("\n"), free_text=False, source=str(path)))


@lru_cache(maxsize=len(BUILTIN_TEMPLATES + PANEL_TEMPLATES))
def _load_builtin(name: str) -> Template:
    resource = resources.files("melt.prompts").joinpath("templates", f"{name}.yaml")
    return _parse_yaml(resource.read_text(encoding="utf-8"), source=f"<built-in template {name}>")


def _parse_yaml(text: str, *, source: str) -> Template:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MeltError(f"not valid YAML ({exc})", file=source) from exc
    if not isinstance(data, dict):
        raise MeltError(
            "a YAML template must be a mapping with keys 'user' and optionally 'system'", file=source
        )
    unknown = sorted(set(data) - _TEMPLATE_KEYS)
    if unknown:
        raise MeltError(f"unknown key(s) {unknown}; allowed: {sorted(_TEMPLATE_KEYS)}", file=source)
    user, system, free_text = data.get("user"), data.get("system"), data.get("free_text", False)
    if not isinstance(user, str) or not user.strip():
        raise MeltError("'user' must be a non-empty text", file=source)
    if system is not None and not isinstance(system, str):
        raise MeltError("'system' must be a text", file=source)
    if not isinstance(free_text, bool):
        raise MeltError("'free_text' must be true or false", file=source)
    return _check(Template(system=system or None, user=user, free_text=free_text, source=source))


def _check(template: Template) -> Template:
    names = template.placeholders()
    unknown = [n for n in names if n not in PLACEHOLDER_COLUMNS]
    if unknown:
        raise MeltError(
            f"unknown placeholder(s) {['{' + n + '}' for n in unknown]}; "
            f"known: {', '.join('{' + n + '}' for n in PLACEHOLDER_COLUMNS)}",
            file=template.source,
        )
    if "utterance" not in names:
        raise MeltError("the template never shows the utterance: add {utterance}", file=template.source)
    return template


def prompt_labels(labels: LabelSet) -> list[str]:
    """The labels as the prompt lists them: capitalised, in the paper's order for the MELT set."""
    ordered = PAPER_LABEL_ORDER if sorted(labels.labels) == sorted(MELT_LABELS) else labels.labels
    return [label[:1].upper() + label[1:] for label in ordered]


class PromptConfig(BaseModel):
    """What is sent to the model for each utterance, and what its answer must look like."""

    #: "melt" | "dialogue" | "cot" | "panel" | a path to a user template file
    template: str = "melt"
    #: paper / structured: the MELT answer (character, context, emotion, voice); label: the emotion alone
    schema_kind: Literal["paper", "structured", "label"] = "paper"
    labels: LabelSet = Field(default_factory=lambda: MELT_LABEL_SET.model_copy(deep=True))
    #: for templates using {context}: how many preceding utterances of the same dialogue to show
    context_turns: int = Field(default=5, ge=0)
    #: the utterance's recording goes with the request (what {evidence} says)
    audio: bool = False

    @model_validator(mode="after")
    def _load(self) -> PromptConfig:
        # Fail when the configuration is built (CLI start), not on the first row of a long run.
        self.load()
        return self

    def load(self) -> Template:
        return load_template(self.template)

    @property
    def free_text_reply(self) -> bool:
        """True when the template asks for reasoning before the JSON: send no strict JSON response format."""
        return self.load().free_text

    def required_columns(self) -> list[str]:
        """Corpus columns the template reads (besides `id`)."""
        columns = [c for name in self.load().placeholders() for c in PLACEHOLDER_COLUMNS[name]]
        return list(dict.fromkeys(columns))

    def template_hash(self) -> str:
        """sha256 over everything that changes the request or how its answer is judged."""
        from melt.prompts.answer import json_structure

        template = self.load()
        uses_context = "context" in template.placeholders()
        payload = {
            "system": template.system,
            "user": template.user,
            "free_text": template.free_text,
            "schema_kind": self.schema_kind,
            "json_structure": json_structure(self.schema_kind),
            "labels": list(self.labels.labels),
            "synonyms": sorted(self.labels.synonyms.items()),
            "context_turns": self.context_turns if uses_context else None,
        }
        if "evidence" in template.placeholders():
            payload["evidence"] = EVIDENCE[self.audio]
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def load_label_set(path: str | Path) -> LabelSet:
    """A label set from a file: YAML/JSON `{labels: [...], synonyms: {word: label}}` or a list, or text with
    one label per line. Default MELT synonyms are kept where they map onto one of the labels."""
    path = Path(path)
    if not path.is_file():
        raise MeltError("label set file not found", file=path)
    text = path.read_text(encoding="utf-8")
    synonyms: dict[str, str] | None = None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)  # JSON is YAML
        except yaml.YAMLError as exc:
            raise MeltError(f"not valid YAML/JSON ({exc})", file=path) from exc
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"labels", "synonyms"})
            if unknown:
                raise MeltError(f"unknown key(s) {unknown}; allowed: ['labels', 'synonyms']", file=path)
            labels, synonyms = data.get("labels"), data.get("synonyms")
        else:
            labels = data
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise MeltError("'labels' must be a list of texts", file=path)
        if synonyms is not None and not (
            isinstance(synonyms, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in synonyms.items())
        ):
            raise MeltError("'synonyms' must map texts to labels", file=path)
    else:
        labels = [
            line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise MeltError(f"need at least two distinct labels, got {labels}", file=path)
    try:
        return LabelSet.from_labels(labels, synonyms)
    except ValidationError as exc:
        raise MeltError(exc.errors()[0]["msg"], file=path) from exc
