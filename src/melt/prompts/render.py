"""Turn utterance rows into chat messages, and build the re-ask turn after an unusable reply."""

from __future__ import annotations

import bisect
import json
from pathlib import Path

import pandas as pd

from melt.corpus.schema import check_ids
from melt.errors import MeltError
from melt.prompts.answer import json_structure
from melt.prompts.config import EVIDENCE, PromptConfig, prompt_labels, substitute


def quote(text: str) -> str:
    """JSON string literal: quotes, newlines and anything resembling an instruction stay inside the quotes."""
    return json.dumps(text, ensure_ascii=False)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value))


def _name(value: object) -> str | None:
    return None if _missing(value) else " ".join(str(value).split()) or None


def _integer(value: object) -> int | None:
    if _missing(value):
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


class _Problems:
    """Collects bad rows so the error names the first one and says how many more there are."""

    def __init__(self, source: str | Path):
        self.source = source
        self.items: list[tuple[int, str, str]] = []

    def add(self, row: int, column: str, message: str) -> None:
        self.items.append((row, column, message))

    def raise_first(self) -> None:
        if not self.items:
            return
        row, column, message = self.items[0]
        rows = {r for r, _, _ in self.items}
        more = f" ({len(rows) - 1} more row(s) have problems)" if len(rows) > 1 else ""
        raise MeltError(message + more, file=self.source, row=row, column=column)


def _context_index(
    table: pd.DataFrame, source: str | Path
) -> dict[tuple[str | None, int], tuple[list[int], list[str]]]:
    """(split, dialogue) -> utterance ids in order and the rendered line of each."""
    groups: dict[tuple[str | None, int], list[tuple[int, str]]] = {}
    for split, dialogue, utterance, speaker, text in zip(
        table["split"],
        table["dialogue_id"],
        table["utterance_id"],
        table["speaker"],
        table["text"],
        strict=True,
    ):
        dialogue, utterance = _integer(dialogue), _integer(utterance)
        if dialogue is None or utterance is None or _missing(text) or not str(text).strip():
            continue  # a context line that cannot be placed or shown is left out, not fatal
        key = (None if _missing(split) else str(split), dialogue)
        name = _name(speaker)
        groups.setdefault(key, []).append(
            (utterance, f"{quote(name) if name else '(unknown speaker)'} said: {quote(str(text))}")
        )
    index = {}
    for key, items in groups.items():
        items.sort(key=lambda item: item[0])
        index[key] = ([u for u, _ in items], [line for _, line in items])
    return index


def fixed_values(config: PromptConfig, focus: str = "") -> dict[str, str]:
    """The placeholders that are the same for every utterance. `focus` is a panel annotator's instruction
    (empty outside panels, whose annotators each get their own system message from `system_message`)."""
    return {
        "labels": ", ".join(prompt_labels(config.labels)),
        "json_structure": json_structure(config.schema_kind),
        "evidence": EVIDENCE[config.audio],
        "focus": focus,
    }


def system_message(config: PromptConfig, focus: str) -> str | None:
    """The template's system message with `focus` as the annotator's instruction (None without one). Only the
    placeholders that do not read the corpus may be in it, so it is the same for every utterance."""
    template = config.load()
    if template.system is None:
        return None
    return substitute(template.system, fixed_values(config, focus))


#: The re-ask after an unusable answer: the conversation so far, the unusable reply, then this ({error}: why).
REPAIR_TEXT = (
    "Your answer could not be used: {error}\n"
    "Reply again with only the corrected answer as one JSON object in the structure given above."
)


def template_text(config: PromptConfig) -> dict[str, str | None]:
    """The prompt as sent for every utterance, for the record: the system and user messages with the label list
    and the answer's JSON structure filled in, and the per-utterance placeholders ({speaker}, {utterance},
    {context}, ...) left as they are; `repair` is the re-ask sent after an unusable answer."""
    template = config.load()
    # a panel annotator's {focus} stays a placeholder: it differs between annotators
    fixed = {k: v for k, v in fixed_values(config).items() if k != "focus"}
    values = {name: fixed.get(name, "{" + name + "}") for name in template.placeholders()}
    return {
        "system": substitute(template.system, values) if template.system is not None else None,
        "user": substitute(template.user, values),
        "repair": REPAIR_TEXT,
    }


def build_messages(
    table: pd.DataFrame,
    config: PromptConfig,
    *,
    source: str | Path = "<table>",
    context_table: pd.DataFrame | None = None,
) -> dict[str, list[dict[str, str]]]:
    """id -> chat messages for every row of `table`.

    `context_table` is where templates using {context} look up the preceding lines; it defaults to `table`,
    but a selected corpus (MELT drops short lines and unnamed speakers) should pass the full corpus here so
    the context has no holes."""
    template = config.load()
    names = template.placeholders()
    needed = ["id", *config.required_columns()]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise MeltError(
            f"missing column(s) {missing} needed by template {config.template!r}; "
            f"found {list(table.columns)}",
            file=source,
        )
    check_ids(table, source=source)
    fixed = fixed_values(config)
    index = None
    if "context" in names:
        context_source = table if context_table is None else context_table
        missing = [c for c in config.required_columns() if c not in context_source.columns]
        if missing:
            raise MeltError(f"context table lacks column(s) {missing}", file=source)
        index = _context_index(context_source, source)

    problems = _Problems(source)
    out: dict[str, list[dict[str, str]]] = {}
    for position, row in enumerate(table.to_dict("records")):
        row_number = position + 1
        values = dict(fixed)
        if "speaker" in names:
            # Quoted like the utterance: data, never prompt text (a speaker string could otherwise forge a
            # line of its own).
            speaker = _name(row["speaker"])
            values["speaker"] = quote(speaker) if speaker else ""
            if not speaker:
                problems.add(row_number, "speaker", "missing speaker")
        for column in ("season", "episode"):
            if column in names:
                number = _integer(row[column])
                if number is None:
                    problems.add(row_number, column, f"{column} must be a whole number, got {row[column]!r}")
                values[column] = str(number)
        text = row["text"]
        if _missing(text) or not str(text).strip():
            problems.add(row_number, "text", "empty utterance text")
            text = ""
        values["utterance"] = quote(str(text))
        if index is not None:
            values["context"] = _context(row, row_number, index, config.context_turns, problems)
        if problems.items:
            continue  # keep scanning only to count the bad rows
        messages = []
        if template.system is not None:
            messages.append({"role": "system", "content": substitute(template.system, values)})
        messages.append({"role": "user", "content": substitute(template.user, values)})
        out[str(row["id"])] = messages
    problems.raise_first()
    return out


def _context(
    row: dict,
    row_number: int,
    index: dict[tuple[str | None, int], tuple[list[int], list[str]]],
    turns: int,
    problems: _Problems,
) -> str:
    dialogue, utterance = _integer(row["dialogue_id"]), _integer(row["utterance_id"])
    for column, value in (("dialogue_id", dialogue), ("utterance_id", utterance)):
        if value is None:
            problems.add(row_number, column, f"{column} must be a whole number to find the preceding lines")
    if dialogue is None or utterance is None:
        return ""
    split = None if _missing(row["split"]) else str(row["split"])
    ids, lines = index.get((split, dialogue), ([], []))
    end = bisect.bisect_left(ids, utterance)
    shown = lines[max(0, end - turns) : end] if turns else []
    return "\n".join(shown) if shown else "(none)"


def repair_messages(messages: list[dict[str, str]], reply_text: str, error: str) -> list[dict[str, str]]:
    """The conversation so far, the unusable reply, and a request to correct exactly what was wrong."""
    return [
        *messages,
        {"role": "assistant", "content": reply_text},
        {"role": "user", "content": REPAIR_TEXT.replace("{error}", error)},
    ]
