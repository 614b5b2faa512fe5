from __future__ import annotations

import json
import math

import pytest

from melt.annotate.validate import label_confidence, same_character, validate_reply
from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.prompts import PromptConfig

PAPER = PromptConfig()
STRUCTURED = PromptConfig(schema_kind="structured")


def reply(emotion="Joy", character="Chandler", loudness="Loud", **extra):
    return json.dumps(
        {
            "character": character,
            "context": "Chandler brags at a job interview.",
            "elements": {
                "emotion": emotion,
                "loudness": loudness,
                "pitch": "High",
                "rhythm_speed": "Fast",
                "emotional_impact": "Playful",
                **extra,
            },
        },
        indent=2,
    )


def test_plain_json_reply_gives_the_flat_answer():
    result = validate_reply(reply(), PAPER, "Chandler")
    assert result.ok and result.error is None and result.flags == []
    assert result.answer == {
        "character": "Chandler",
        "context": "Chandler brags at a job interview.",
        "emotion": "joy",
        "loudness": "Loud",
        "pitch": "High",
        "rhythm_speed": "Fast",
        "emotional_impact": "Playful",
    }


@pytest.mark.parametrize(
    "text",
    [
        f"```json\n{reply()}\n```",
        f"```\n{reply()}\n```",
        f"Sure! Here is the description:\n\n{reply()}\n\nLet me know if you need more.",
        # prose with braces that are not JSON, before the answer
        f"I'll use the {{usual}} structure, not {{this: one}}.\n{reply()}",
    ],
)
def test_json_is_found_in_fences_and_prose(text):
    result = validate_reply(text, PAPER, "Chandler")
    assert result.ok, result.error
    assert result.answer["emotion"] == "joy"


def test_cot_reasoning_before_the_json():
    text = (
        "1. Character: Chandler Bing, known for sarcasm {and jokes}.\n"
        "2. Situation: a job interview.\n"
        "3. Emotion: the list has Joy; he is pleased with himself, so Joy.\n"
        "4. Voice: upbeat.\n5. Impact: playful.\n\n"
        f"Final answer:\n```json\n{reply(character='Chandler Bing')}\n```"
    )
    result = validate_reply(text, PromptConfig(template="cot"), "Chandler")
    assert result.ok and result.answer["emotion"] == "joy" and result.flags == []


def test_a_stray_object_in_the_reasoning_is_skipped_for_the_answer():
    text = f'Step 3 considers {{"candidate": "Joy"}} first.\n{reply(emotion="Surprise")}'
    result = validate_reply(text, PAPER, "Chandler")
    assert result.ok and result.answer["emotion"] == "surprise"


def test_braces_and_quotes_inside_strings_do_not_end_the_object():
    text = reply(character="Chandler", loudness='Loud } {"x": 1} \\" still inside')
    result = validate_reply("Answer: " + text + " trailing } brace", PAPER, "Chandler")
    assert result.ok, result.error
    assert result.answer["loudness"] == 'Loud } {"x": 1} \\" still inside'


def test_trailing_commas_are_tolerated_and_flagged():
    text = reply().replace('"Playful"', '"Playful",').replace("  }\n}", "  },\n}")
    assert text.count(",\n}") == 1
    result = validate_reply(text, PAPER, "Chandler")
    assert result.ok and result.flags == ["json_repaired"]


def test_a_comma_inside_a_string_is_not_a_trailing_comma():
    text = reply(character="Chandler", loudness="soft, }").replace('"Playful"', '"Playful",')
    result = validate_reply(text, PAPER, "Chandler")
    assert result.ok and result.answer["loudness"] == "soft, }"


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("happy", "joy"),
        ("Angry", "anger"),
        ("scared", "fear"),
        ("Sad.", "sadness"),
        ("surprised", "surprise"),
    ],
)
def test_synonyms_are_mapped_and_flagged(raw, label):
    result = validate_reply(reply(emotion=raw), PAPER, "Chandler")
    assert result.ok and result.answer["emotion"] == label
    assert result.flags == ["label_synonym"]


@pytest.mark.parametrize("raw", ["JOY", " joy ", "Joy"])
def test_case_and_spacing_are_not_synonyms(raw):
    result = validate_reply(reply(emotion=raw), PAPER, "Chandler")
    assert result.ok and result.answer["emotion"] == "joy" and result.flags == []


@pytest.mark.parametrize("raw", ["frustration", "Comfort", "joy and surprise", "Joy (mild)"])
def test_labels_outside_the_set_are_rejected_never_guessed(raw):
    result = validate_reply(reply(emotion=raw), PAPER, "Chandler")
    assert not result.ok
    assert repr(raw) in result.error
    assert "Anger, Disgust, Sadness, Joy, Neutral, Surprise, Fear" in result.error
    assert result.flags == [f"off_label:{MELT_LABEL_SET.normalize(raw)}"]
    # the answer is kept with its raw label so a last failed attempt can be recorded, never as a known label
    assert result.answer["emotion"] == MELT_LABEL_SET.normalize(raw)
    assert not MELT_LABEL_SET.is_known(result.answer["emotion"])


def test_empty_emotion_is_rejected():
    result = validate_reply(reply(emotion="  "), PAPER, "Chandler")
    assert not result.ok and "emotion is empty" in result.error


def test_custom_label_set():
    config = PromptConfig(labels=LabelSet.from_labels(["positive", "negative", "neutral"]))
    assert validate_reply(reply(emotion="Positive"), config, None).ok
    result = validate_reply(reply(emotion="Joy"), config, None)
    assert not result.ok and "Positive, Negative, Neutral" in result.error


@pytest.mark.parametrize(
    ("character", "speaker", "same"),
    [
        ("Monica Geller", "monica", True),
        ("monica", "Monica", True),
        ("Chandler Bing", "Chandler", True),
        ("Chandler", "Chandler Bing", True),
        ("The Interviewer", "The Interviewer", True),
        ("Interviewer", "The Interviewer", True),
        ("Mrs. Geller (Judy)", "Mrs. Geller", True),
        ("Ross Geller", "Mrs. Geller", True),  # a surname match is the best a title allows
        ("Mrs. Green", "Mrs. Geller", False),
        ("Ross", "Rachel", False),
        ("Joey Tribbiani", "Chandler", False),
        ("", "Chandler", False),
    ],
)
def test_same_character(character, speaker, same):
    assert same_character(character, speaker) is same


def test_wrong_character_is_flagged_but_usable():
    result = validate_reply(reply(character="Ross Geller"), PAPER, "Chandler")
    assert result.ok and result.flags == ["character_mismatch"]
    assert validate_reply(reply(character="Ross Geller"), PAPER, None).flags == []


def test_structured_levels_are_checked():
    assert (
        validate_reply(reply(loudness="HIGH"), STRUCTURED, "Chandler").ok is False
    )  # pitch "High" ok, speed "Fast" not
    text = reply(loudness="HIGH").replace('"Fast"', '"medium"')
    result = validate_reply(text, STRUCTURED, "Chandler")
    assert result.ok and (result.answer["loudness"], result.answer["rhythm_speed"]) == ("high", "medium")
    result = validate_reply(reply(loudness="very loud").replace('"Fast"', '"low"'), STRUCTURED, "Chandler")
    assert (
        not result.ok and "elements.loudness" in result.error and "'low', 'medium' or 'high'" in result.error
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("I think Chandler sounds happy.", "no JSON object found"),
        (reply()[:80], "incomplete"),
        ('{"character": "Chandler", "context": "x"}', "elements: Field required"),
        ('{"character": "Chandler", "context": "x", "elements": {"emotion": ["Joy"]}}', "elements.emotion"),
        ("[1, 2, 3]", "no JSON object found"),
    ],
)
def test_unusable_replies_say_why(text, message):
    result = validate_reply(text, PAPER, "Chandler")
    assert not result.ok and result.answer is None
    assert message in result.error


def test_extra_keys_in_the_reply_are_ignored():
    result = validate_reply(reply(confidence="0.9"), PAPER, "Chandler")
    assert result.ok and "confidence" not in result.answer


# --- label confidence ---------------------------------------------------------------------------------------


def lp(token, logprob, top=()):
    return {"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}


def tokens(value_tokens):
    head = [
        '{"',
        "character",
        '":',
        ' "',
        "Ch",
        "andler",
        '",',
        ' "',
        "elements",
        '":',
        " {",
        '"',
        "emotion",
        '":',
    ]
    return [lp(t, -0.01) for t in head] + value_tokens + [lp('",', -0.01), lp("}}", -0.01)]


def test_label_confidence_from_top_logprobs():
    value = [
        lp(' "', -0.01, [(' "', -0.01)]),
        lp(
            "Joy", math.log(0.6), [("Joy", math.log(0.6)), ("Sur", math.log(0.2)), ("Neutral", math.log(0.1))]
        ),
    ]
    dist = label_confidence(tokens(value), MELT_LABEL_SET)
    assert set(dist) == set(MELT_LABEL_SET.labels)
    assert dist["joy"] == pytest.approx(0.6 / 0.9)
    assert dist["surprise"] == pytest.approx(0.2 / 0.9)
    assert dist["neutral"] == pytest.approx(0.1 / 0.9)
    assert dist["anger"] == 0.0
    assert sum(dist.values()) == pytest.approx(1.0)


def test_label_confidence_when_the_quote_shares_the_token_and_alternatives_are_ambiguous():
    value = [
        lp(
            ' "Sad',
            math.log(0.5),
            [(' "Sad', math.log(0.5)), (' "happy', math.log(0.3)), (' "S', math.log(0.1))],
        ),
        lp("ness", -0.01),
    ]
    dist = label_confidence(tokens(value), MELT_LABEL_SET)
    # "S" could start sadness or surprise: left out; "happy" is a synonym of joy
    assert dist["sadness"] == pytest.approx(0.5 / 0.8)
    assert dist["joy"] == pytest.approx(0.3 / 0.8)


def test_label_confidence_accepts_the_whole_logprobs_object():
    value = [lp(' "', -0.01), lp("Fear", 0.0, [("Fear", 0.0)])]
    assert label_confidence({"content": tokens(value)}, MELT_LABEL_SET)["fear"] == 1.0


@pytest.mark.parametrize(
    "logprobs",
    [
        None,
        [],
        [lp("no", -0.1), lp(" emotion", -0.1)],
        tokens([lp(' "', -0.01), lp("Joy", -0.1)]),  # no top_logprobs
        tokens(
            [lp(' "', -0.01), lp("frustr", -0.1, [("frustr", -0.1), ("comfort", -2.0)])]
        ),  # nothing in the set
    ],
)
def test_label_confidence_is_none_when_unavailable(logprobs):
    assert label_confidence(logprobs, MELT_LABEL_SET) is None


def test_every_flag_written_has_a_legend_entry():
    """Reports explain each flag of the annotations table from FLAG_MEANINGS: a flag the code can write without
    an entry there would go unexplained."""
    import re
    from pathlib import Path

    from melt.annotate import validate

    made = [
        validate_reply(reply().replace('"Playful"', '"Playful",'), PAPER, "Chandler"),
        validate_reply(reply(emotion="happy"), PAPER, "Chandler"),
        validate_reply(reply(character="Ross"), PAPER, "Chandler"),
        validate_reply(reply(emotion="frustration"), PAPER, "Chandler"),
    ]
    flags = {flag for result in made for flag in result.flags}
    assert {"json_repaired", "label_synonym", "character_mismatch", "off_label:frustration"} <= flags, flags
    # The flags the engine adds (re-asks, failed samples), found where they are written.
    source = "\n".join(p.read_text() for p in Path(validate.__file__).parent.glob("*.py"))
    written = set(re.findall(r"flags\.append\(f?\"([a-z_]+)", source))
    assert {"re_asked", "invalid_samples"} <= written
    for flag in flags | written:
        name = validate.flag_name(flag)
        assert name in validate.FLAG_MEANINGS, flag
        assert len(validate.FLAG_MEANINGS[name]) > 30
    assert set(validate.STATUS_MEANINGS) == {"ok", "invalid", "failed", "pending"}
