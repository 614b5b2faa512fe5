"""The answer the model must give: its pydantic model, its JSON schema for the API, its form in the prompt."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, create_model

from melt.prompts.config import PromptConfig, prompt_labels

LEVELS: tuple[str, ...] = ("low", "medium", "high")

_PAPER_STRUCTURE = """\
{
  "character": "[Character’s name]",
  "context": "[Simple context of the situation]",
  "elements": {
    "emotion": "[Primary emotion]",
    "loudness": "[Loudness of voice]",
    "pitch": "[Pitch of voice]",
    "rhythm_speed": "[Speed of voice’s rhythm]",
    "emotional_impact": "[Emotional impact created by the voice]"
  }
}"""

_STRUCTURED_STRUCTURE = """\
{
  "character": "[Character’s name]",
  "context": "[Simple context of the situation]",
  "elements": {
    "emotion": "[Primary emotion]",
    "loudness": "[low, medium or high]",
    "pitch": "[low, medium or high]",
    "rhythm_speed": "[low, medium or high]",
    "emotional_impact": "[Emotional impact created by the voice]"
  }
}"""


_LABEL_STRUCTURE = """\
{
  "emotion": "[One label from the list]"
}"""


def json_structure(schema_kind: str) -> str:
    """The JSON structure block shown in the prompt (the paper's, word for word, for "paper")."""
    return {"paper": _PAPER_STRUCTURE, "structured": _STRUCTURED_STRUCTURE, "label": _LABEL_STRUCTURE}[
        schema_kind
    ]


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


# "High" or " medium " are the same level; anything else is an error the model is asked to fix.
Level = Annotated[Literal["low", "medium", "high"], BeforeValidator(_lower)]


class _Answer(BaseModel):
    # Extra keys in a reply are ignored rather than fatal; the schema sent to the API still forbids them.
    model_config = ConfigDict(extra="ignore")


def answer_model(config: PromptConfig) -> type[BaseModel]:
    return _answer_model(config.schema_kind, tuple(prompt_labels(config.labels)))


@lru_cache(maxsize=32)
def _answer_model(schema_kind: str, labels: tuple[str, ...]) -> type[BaseModel]:
    # The emotion accepts any text so that synonyms reach LabelSet.normalize in validation (and an off-label
    # answer is reported by name); only the JSON schema sent to the API restricts it to the label set.
    emotion = Annotated[str, WithJsonSchema({"type": "string", "enum": list(labels)})]
    if schema_kind == "label":
        return create_model("LabelAnswer", __base__=_Answer, emotion=(emotion, ...))
    level: Any = Level if schema_kind == "structured" else str
    elements = create_model(
        "Elements",
        __base__=_Answer,
        emotion=(emotion, ...),
        loudness=(level, ...),
        pitch=(level, ...),
        rhythm_speed=(level, ...),
        emotional_impact=(str, ...),
    )
    return create_model(
        "MeltAnswer", __base__=_Answer, character=(str, ...), context=(str, ...), elements=(elements, ...)
    )


def _strict(node: Any) -> Any:
    """OpenAI strict mode: every object closed and every property required."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        if node.get("type") == "object" and "properties" in node:
            node["additionalProperties"] = False
            node["required"] = list(node["properties"])
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Replace `$ref`s by their definitions: some OpenAI-compatible servers (grammar-based local ones) handle
    `$ref` partially, and the answer has no recursion that would need it."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def response_format(config: PromptConfig) -> dict[str, Any]:
    """OpenAI `response_format` for strict structured output of the answer."""
    raw = answer_model(config).model_json_schema()
    schema = _strict(_inline(copy.deepcopy(raw), raw.get("$defs", {})))
    return {
        "type": "json_schema",
        "json_schema": {"name": "melt_annotation", "schema": schema, "strict": True},
    }
