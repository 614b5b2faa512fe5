"""Prompts for LLM annotation: templates, chat messages, the answer schema and the re-ask turn.

See docs/prompts.md.
"""

from melt.prompts.answer import answer_model, json_structure, response_format
from melt.prompts.config import (
    BUILTIN_TEMPLATES,
    PANEL_TEMPLATES,
    PromptConfig,
    Template,
    load_label_set,
    load_template,
    prompt_labels,
)
from melt.prompts.render import build_messages, repair_messages, system_message, template_text

__all__ = [
    "BUILTIN_TEMPLATES",
    "PANEL_TEMPLATES",
    "PromptConfig",
    "Template",
    "answer_model",
    "build_messages",
    "json_structure",
    "load_label_set",
    "load_template",
    "prompt_labels",
    "repair_messages",
    "response_format",
    "system_message",
    "template_text",
]
