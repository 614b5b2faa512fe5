"""The contract between the annotation engine and a chat model, whatever serves it.

A backend turns one `ChatRequest` into one `ChatReply`. The engine owns concurrency, retries, caching and
cost; a backend only speaks to its model and classifies its failures with the exceptions below, so that the
engine knows whether to retry, to fall back to a weaker answer format, or to stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from melt.errors import MeltError


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. `response_format` uses the OpenAI form:
    `{"type": "json_schema", "json_schema": {"name": ..., "schema": ..., "strict": true}}`,
    `{"type": "json_object"}`, or None for plain text."""

    messages: tuple[dict[str, str], ...]
    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


@dataclass
class ChatReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    #: OpenAI's `choices[0].logprobs.content`: [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]
    logprobs: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    #: short name for summaries and run metadata, e.g. "openai" or "local"
    name: str
    #: the model as it is recorded in the cache key and run metadata
    model: str

    async def complete(self, request: ChatRequest) -> ChatReply: ...

    async def aclose(self) -> None: ...


class BackendError(MeltError):
    """The backend failed in a way retrying will not fix (bad key, unknown model, broken model file)."""


class RetryableError(Exception):
    """A failure worth retrying: rate limit, server error, timeout, dropped connection.

    `retry_after` is the server's own advice in seconds (HTTP Retry-After), None when it gave none."""

    def __init__(self, reason: str, *, retry_after: float | None = None, rate_limited: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class ResponseFormatRejected(Exception):
    """The server does not accept the requested `response_format`; the engine falls back to a weaker one."""
