from __future__ import annotations

import json
import typing

import pytest
from pydantic import ValidationError

from melt.corpus.labels import LabelSet
from melt.prompts import PromptConfig, answer_model, repair_messages, response_format

ANSWER = {
    "character": "Chandler",
    "context": "A job interview.",
    "elements": {
        "emotion": "Neutral",
        "loudness": "Moderate",
        "pitch": "Medium",
        "rhythm_speed": "Steady",
        "emotional_impact": "Confident",
    },
}


def _objects(schema):
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


@pytest.mark.parametrize("kind", ["paper", "structured"])
def test_response_format_is_strict_mode_compatible(kind):
    rf = response_format(PromptConfig(schema_kind=kind))
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "melt_annotation" and rf["json_schema"]["strict"] is True
    schema = rf["json_schema"]["schema"]
    objects = list(_objects(schema))
    assert len(objects) == 2  # the answer and its elements, inlined
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert "$ref" not in json.dumps(schema) and "default" not in json.dumps(schema)
    assert list(schema["properties"]) == ["character", "context", "elements"]
    elements = schema["properties"]["elements"]["properties"]
    assert list(elements) == ["emotion", "loudness", "pitch", "rhythm_speed", "emotional_impact"]
    assert elements["emotion"] == {
        "type": "string",
        "enum": ["Anger", "Disgust", "Sadness", "Joy", "Neutral", "Surprise", "Fear"],
    }
    levels = elements["pitch"].get("enum")
    assert levels == (["low", "medium", "high"] if kind == "structured" else None)


def test_emotion_enum_follows_a_custom_label_set():
    config = PromptConfig(labels=LabelSet.from_labels(["positive", "negative"]))
    schema = response_format(config)["json_schema"]["schema"]
    assert schema["properties"]["elements"]["properties"]["emotion"]["enum"] == ["Positive", "Negative"]


def test_paper_answer_model_takes_free_text_descriptions():
    answer = answer_model(PromptConfig()).model_validate(ANSWER)
    assert answer.elements.loudness == "Moderate"


def test_structured_answer_model_takes_only_levels():
    model = answer_model(PromptConfig(schema_kind="structured"))
    hint = typing.get_type_hints(model.model_fields["elements"].annotation, include_extras=True)["pitch"]
    assert typing.get_args(typing.get_args(hint)[0]) == ("low", "medium", "high")
    ok = json.loads(json.dumps(ANSWER))
    ok["elements"].update(loudness=" High", pitch="medium", rhythm_speed="LOW")
    parsed = model.model_validate(ok)
    assert (parsed.elements.loudness, parsed.elements.rhythm_speed) == ("high", "low")
    with pytest.raises(ValidationError, match="loudness"):
        model.model_validate(ANSWER)  # "Moderate" is not a level


def test_answer_model_requires_every_field():
    broken = json.loads(json.dumps(ANSWER))
    del broken["elements"]["emotional_impact"]
    with pytest.raises(ValidationError, match="emotional_impact"):
        answer_model(PromptConfig()).model_validate(broken)


def test_repair_messages_quote_the_error_after_the_reply():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    error = "the emotion 'frustration' is not in the label list; answer with exactly one of: Anger, Joy"
    repaired = repair_messages(messages, '{"emotion": "frustration"}', error)
    assert repaired[:2] == messages and len(messages) == 2  # the original list is not modified
    assert repaired[2] == {"role": "assistant", "content": '{"emotion": "frustration"}'}
    assert repaired[3]["role"] == "user"
    assert error in repaired[3]["content"] and "JSON" in repaired[3]["content"]
