"""Chat model backends: the contract (`base`), HTTP servers speaking OpenAI's protocol (`openai`), prices."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

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
    none). Without one, a `--model` ending in .gguf is that file run in-process by llama.cpp; an API key in
    the environment means OpenAI itself; and with neither, the bundled small model runs in-process, so that
    melt works offline out of the box (and says once that its labels are not research-grade).
    """
    from melt.llm.openai import OPENAI_BASE_URL, OpenAIBackend

    api_key = os.environ.get(config.api_key_env) or None
    if config.base_url is None and config.model.lower().endswith(".gguf"):
        from melt.llm.local import LocalBackend

        return LocalBackend(config.model)
    if config.base_url is None and api_key is None:
        from melt.llm.local import LocalBackend

        backend = LocalBackend()
        print(
            f"melt: no --base-url and no API key in ${config.api_key_env}, so annotating offline with the "
            "bundled Gemma 3 270M model: it proves the pipeline, but its labels are not research-grade; for "
            "real labels use --base-url URL --model NAME (any OpenAI-compatible server) or --model PATH.gguf "
            "(a local GGUF model)",
            file=sys.stderr,
        )
        return backend
    return OpenAIBackend(
        config.base_url or OPENAI_BASE_URL,
        config.model,
        api_key=api_key,
        api_key_env=config.api_key_env,
        timeout=config.timeout,
        max_connections=config.concurrency,
    )
