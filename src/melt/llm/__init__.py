"""Chat model backends: the contract (`base`), HTTP servers speaking OpenAI's protocol (`openai`), prices."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from melt.errors import MeltError
from melt.llm.base import (
    Backend,
    BackendError,
    ChatReply,
    ChatRequest,
    ResponseFormatRejected,
    RetryableError,
)

if TYPE_CHECKING:
    from melt.annotate.config import AnnotateConfig

__all__ = [
    "Backend",
    "BackendError",
    "ChatReply",
    "ChatRequest",
    "ResponseFormatRejected",
    "RetryableError",
    "make_backend",
]


def make_backend(config: AnnotateConfig) -> Backend:
    """The backend a run's configuration asks for; the one place that chooses between them.

    A `--base-url` means that server (the key is optional: local vLLM, llama.cpp and Ollama servers need
    none); without one, an API key in the environment means OpenAI itself.
    """
    from melt.llm.openai import OPENAI_BASE_URL, OpenAIBackend

    api_key = os.environ.get(config.api_key_env) or None
    if config.base_url is None and api_key is None:
        raise MeltError(f"no --base-url and no API key in ${config.api_key_env}")
    return OpenAIBackend(
        config.base_url or OPENAI_BASE_URL,
        config.model,
        api_key=api_key,
        api_key_env=config.api_key_env,
        timeout=config.timeout,
        max_connections=config.concurrency,
    )
