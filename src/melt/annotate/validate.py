"""Judge a model's reply: find its JSON answer, check it, normalise the label, flag what looks wrong.

A reply is never repaired by guessing: an emotion outside the label set makes the reply unusable (the engine
re-asks with the error), while suspicious but usable facts (a different character name, a synonym that was
mapped) only raise flags.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from melt.corpus.labels import LabelSet, _clean
from melt.llm.openai import valid_text
from melt.prompts import PromptConfig, answer_model, prompt_labels

#: Every flag a row of annotations.csv can carry (`flags`, `;`-separated), by the name before any `:`, with what
#: it means: the validator raises the first four, the engine the last two. Reports print these as their legend.
FLAG_MEANINGS: dict[str, str] = {
    "json_repaired": "the reply's JSON had a trailing comma, removed before it was read (nothing else changed)",
    "label_synonym": "the model named the emotion by a synonym (e.g. 'happy'), mapped to its label (joy)",
    "character_mismatch": "the character the model names is not the corpus's speaker (first names compared, "
    "ignoring case): it may have misread who speaks",
    "off_label:X": "the model's emotion X is not in the label set: the answer was rejected (never mapped to a "
    "label), and the row is invalid unless the re-ask fixed it",
    "re_asked": "the first answer was unusable; the model was asked once more, with the reason, and this row "
    "holds its second answer",
    "invalid_samples:N": "with --samples, N of the samples gave no usable answer; the label is the majority of "
    "the others",
}
#: Every `status` of a row of annotations.csv, with what it means.
STATUS_MEANINGS: dict[str, str] = {
    "ok": "a usable answer: the emotion is in the label set",
    "invalid": "the model answered, but no answer was usable, even after the re-ask; the raw reply and the reason "
    "(error) are kept, and no label is given",
    "failed": "no reply after the retries (server errors, timeouts); rerunning the command retries it",
    "pending": "not asked yet: the run stopped first (--max-cost, Ctrl-C, a server asking to wait); rerunning "
    "continues it",
}


def flag_name(flag: str) -> str:
    """The legend entry of a flag: `off_label:frustration` -> `off_label:X`, `invalid_samples:2` ->
    `invalid_samples:N`."""
    name = flag.split(":", 1)[0]
    return next((key for key in FLAG_MEANINGS if key.split(":", 1)[0] == name), name)


@dataclass
class Validation:
    ok: bool
    #: flat answer (character, context, emotion, loudness, pitch, rhythm_speed, emotional_impact) whenever the
    #: reply held a well-formed answer, also when `ok` is False because of its label, so a last failed attempt
    #: can still be recorded (with its off_label flag); None when no answer could be read
    answer: dict[str, str] | None
    error: str | None
    flags: list[str] = field(default_factory=list)


def _outside_strings(text: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, character) of every character from `start` that is not inside a JSON string."""
    in_string, escaped = False, False
    for i in range(start, len(text)):
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        yield i, char


def _closing_braces(text: str, start: int) -> tuple[dict[int, int], set[int]]:
    """From `start` on, skipping braces in JSON strings: the index of the brace closing each opening brace, and
    the opening braces never closed. One walk finds them all, so a reply of many unclosed braces is read once,
    not once per brace."""
    opened: list[int] = []
    closing: dict[int, int] = {}
    for i, char in _outside_strings(text, start):
        if char == "{":
            opened.append(i)
        elif char == "}" and opened:
            closing[opened.pop()] = i
    return closing, set(opened)


def _drop_trailing_commas(text: str) -> str:
    """`{"a": 1,}` -> `{"a": 1}`: a slip models make; commas inside strings are kept."""
    trailing = {
        i for i, char in _outside_strings(text) if char == "," and text[i + 1 :].lstrip()[:1] in ("}", "]")
    }
    return "".join(char for i, char in enumerate(text) if i not in trailing)


def json_objects(text: str) -> tuple[list[tuple[dict[str, Any], bool]], bool]:
    """Top-level JSON objects in `text` in order, each with whether trailing commas had to be removed; and
    whether some object was left unclosed (a reply cut off by the token limit)."""
    stripped = text.strip()
    if stripped[:1] == "{" and stripped[-1:] == "}":
        # The usual reply is one JSON object and nothing else: the brace walk below (a Python loop over every
        # character) would find just that object.
        with contextlib.suppress(json.JSONDecodeError, RecursionError):
            value = json.loads(stripped)
            if isinstance(value, dict):
                return [(value, False)], False
    found: list[tuple[dict[str, Any], bool]] = []
    unclosed = False
    position = 0
    # What a walk from an opening brace outside strings found holds for a walk from any later such brace.
    closing: dict[int, int] = {}
    never_closed: set[int] = set()
    while (start := text.find("{", position)) >= 0:
        if start not in closing and start not in never_closed:
            closing, never_closed = _closing_braces(text, start)
        end = closing.get(start)
        if end is None:
            unclosed = True
            position = start + 1
            continue
        candidate = text[start : end + 1]
        value, repaired = None, False
        try:
            value = json.loads(candidate)
        except RecursionError:  # nested beyond the parser's depth: no answer
            pass
        except json.JSONDecodeError:
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                value, repaired = json.loads(_drop_trailing_commas(candidate)), True
        if isinstance(value, dict):
            found.append((value, repaired))
            position = end + 1
        else:
            # Prose such as "{curly}" is not JSON; an answer may still start at a later brace.
            position = start + 1
    return found, unclosed


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "answer"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


_TITLES = {"mr", "mrs", "ms", "miss", "dr", "doctor", "the", "a"}


def same_character(answer: str, speaker: str) -> bool:
    """Whether the answer names the speaker: case-insensitive, "Monica Geller" matches "monica" (first names);
    with a title ("Mrs. Geller") the surname must match instead."""
    said = re.findall(r"[^\W_]+", answer.casefold())
    expected = re.findall(r"[^\W_]+", speaker.casefold())
    if not said or not expected:
        return False
    if said == expected:
        return True
    if expected[0] in _TITLES:
        rest = [t for t in expected if t not in _TITLES]
        return bool(rest) and all(t in said for t in rest)
    named = [t for t in said if t not in _TITLES]
    return bool(named) and named[0] == expected[0]


def validate_reply(text: str | None, config: PromptConfig, speaker: str | None) -> Validation:
    if text is None or not text.strip():
        return Validation(False, None, "the reply is empty", [])
    objects, unclosed = json_objects(text)
    if not objects and config.schema_kind == "label":
        bare = _bare_label(text, config)
        if bare is not None:
            return bare
    if not objects:
        error = (
            "the JSON answer is incomplete (cut off before its closing brace)"
            if unclosed
            else "no JSON object found in the reply"
        )
        return Validation(False, None, error, [])

    model = answer_model(config)
    parsed, repaired, errors = None, False, []
    for value, was_repaired in objects:
        try:
            parsed = model.model_validate(value)
        except ValidationError as exc:
            errors.append((_describe(exc), bool({"character", "elements"} & set(value))))
            continue
        repaired = was_repaired
        break
    if parsed is None:
        # Report the object that looks like the answer, not a stray object from the reasoning.
        error = next((e for e, looks_like_answer in errors if looks_like_answer), errors[0][0])
        return Validation(False, None, f"the JSON answer does not match the required structure: {error}", [])

    data = parsed.model_dump()
    elements = data.pop("elements", {})  # the label schema has the emotion alone, at the top
    # A JSON escape of half a surrogate pair decodes to a string no table can hold.
    answer = {key: valid_text(str(value).strip()) for key, value in {**data, **elements}.items()}
    flags = ["json_repaired"] if repaired else []
    return _judge_label(answer, config, speaker, flags)


def _bare_label(text: str, config: PromptConfig) -> Validation | None:
    """A reply that is one label and nothing else (`Anger`, `"sadness".`), as servers without a JSON answer
    format give it to the label schema: read as that label. Anything longer is not guessed at."""
    word = text.strip().strip("\"'`*.").strip()
    if not word or len(word.split()) > 3 or config.labels.normalize(word) is None:
        return None
    judged = _judge_label({"emotion": word}, config, None, ["bare_label"])
    return judged if judged.ok else None


def _judge_label(
    answer: dict[str, str], config: PromptConfig, speaker: str | None, flags: list[str]
) -> Validation:
    """The answer with its emotion normalised to the label set, never guessed; the character cross-checked."""
    raw = answer["emotion"]
    label = config.labels.normalize(raw)
    allowed = ", ".join(prompt_labels(config.labels))
    if label is None:
        return Validation(False, answer, f"the emotion is empty; choose one of: {allowed}", flags)
    answer["emotion"] = label
    if not config.labels.is_known(label):
        flags.append(f"off_label:{label}")
        error = f"the emotion {raw!r} is not in the label list; answer with exactly one of: {allowed}"
        return Validation(False, answer, error, flags)
    if label != _clean(raw):
        flags.append("label_synonym")

    if (
        "character" in answer
        and speaker is not None
        and str(speaker).strip()
        and not same_character(answer["character"], str(speaker))
    ):
        flags.append("character_mismatch")
    return Validation(True, answer, None, flags)


_EMOTION_VALUE = re.compile(r'"emotion"\s*:\s*"')


def label_confidence(
    logprobs: list[dict[str, Any]] | dict[str, Any] | None, labels: LabelSet
) -> dict[str, float] | None:
    """Probability of each label at the first token of the emotion value, from the model's top_logprobs.

    Alternatives are matched to labels (and their synonyms) by prefix; an alternative that could start several
    labels ("S": sadness or surprise) or none is left out, and the rest is renormalised. None when the reply
    carries no logprobs, no emotion value, or no alternative that names a label."""
    if isinstance(logprobs, dict):  # the whole choices[0].logprobs object
        logprobs = logprobs.get("content")
    # A server's logprobs of another shape say nothing about the labels: no confidence, never a crash.
    if not logprobs or not isinstance(logprobs, list) or not all(isinstance(i, dict) for i in logprobs):
        return None
    tokens = [str(item.get("token") or "") for item in logprobs]
    joined = "".join(tokens)
    match = _EMOTION_VALUE.search(joined)
    if match is None:
        return None
    value_start = match.end()
    # The first token ending after the value's start, found by bisection rather than a walk over the reply.
    ends = list(itertools.accumulate(map(len, tokens)))
    index = bisect.bisect_right(ends, value_start)
    if index == len(tokens):
        return None
    item = logprobs[index]
    position = ends[index] - len(tokens[index])
    # The token holding the value's first letters may also hold the opening quote; its alternatives share it.
    prefix = joined[position:value_start]
    label_of = _prefix_matcher(labels.labels, tuple(labels.synonyms.items()))
    mass = dict.fromkeys(labels.labels, 0.0)
    alternatives = item.get("top_logprobs")
    for alternative in alternatives if isinstance(alternatives, list) else ():
        logprob = alternative.get("logprob") if isinstance(alternative, dict) else None
        if isinstance(logprob, bool) or not isinstance(logprob, int | float) or not math.isfinite(logprob):
            continue
        piece = str(alternative.get("token") or "")
        piece = piece[len(prefix) :] if piece.startswith(prefix) else piece.lstrip(' "')
        piece = piece.strip().casefold()
        if not piece:
            continue
        label = label_of(piece)
        if label is not None:
            mass[label] += math.exp(min(float(logprob), 0.0))  # a probability is at most 1
    total = sum(mass.values())
    if total == 0:
        return None
    return {label: value / total for label, value in mass.items()}


@functools.lru_cache(maxsize=8)
def _prefix_matcher(
    labels: tuple[str, ...], synonyms: tuple[tuple[str, str], ...]
) -> Callable[[str], str | None]:
    """For a label set (as hashable parts): the one label whose names start with a piece, else None.

    Memoised per piece: the alternatives at the emotion value are a handful of label starts, seen again in
    every reply, and matching one against every name and synonym was the bulk of `label_confidence`."""
    names = {label: label for label in labels} | dict(synonyms)

    @functools.lru_cache(maxsize=4096)
    def label_of(piece: str) -> str | None:
        targets = {label for name, label in names.items() if name.startswith(piece)}
        return targets.pop() if len(targets) == 1 else None

    return label_of
