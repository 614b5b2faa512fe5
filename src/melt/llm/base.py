"""The contract between the annotation engine and a chat model, whatever serves it.

A backend turns one `ChatRequest` into one `ChatReply`. The engine owns concurrency, retries, caching and
cost; a backend only speaks to its model and classifies its failures with the exceptions below, so that the
engine knows whether to retry, to fall back to a weaker answer format, to fail one request, or to stop.

Besides `complete` and `aclose`, a backend may offer (the engine looks for them with `getattr`):

- `identity() -> dict`: what decides its replies, recorded in the run folder (server URL without credentials,
  model, model file hash); by default `{"kind": name, "model": model}`;
- `max_concurrency: int`: requests it can usefully serve at once (an in-process model: 1);
- `server_profile() -> dict` / `use_server_profile(profile)` and `async detect_server()`: what the engine
  remembers about a server between runs (its family, the answer format it takes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from melt.errors import MeltError


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. `response_format` uses the OpenAI form:
    `{"type": "json_schema", "json_schema": {"name": ..., "schema": ..., "strict": true}}`,
    `{"type": "json_object"}`, or None for plain text. A backend sends it in whatever form its server takes."""

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
    #: the server's rate-limit state as it reported it with this reply (see `RateLimitState`)
    rate_limits: RateLimitState | None = None


@dataclass(frozen=True)
class RateLimitState:
    """What a server says about its rate limits (OpenAI's `x-ratelimit-*` headers), per kind ("requests",
    "tokens"): (limit or None, remaining, seconds until the limit is back to full)."""

    kinds: dict[str, tuple[float | None, float, float]]


class Backend(Protocol):
    #: short name for summaries and run metadata, e.g. "openai" or "local"
    name: str
    #: the model as it is recorded in the cache key and run metadata
    model: str

    async def complete(self, request: ChatRequest) -> ChatReply: ...

    async def aclose(self) -> None: ...


class BackendError(MeltError):
    """The backend failed in a way retrying will not fix (bad key, unknown model, unreachable server, broken
    model file): the run stops."""


class RequestFailed(Exception):
    """This one request cannot succeed as it is (a prompt longer than the model's context, a reply that is not
    a chat completion, a body beyond the size cap): its utterance is `failed` with `reason`, the run goes on,
    and a rerun asks again. `prompt_tokens`/`completion_tokens` are what the server billed, when it said."""

    def __init__(self, reason: str, *, prompt_tokens: int = 0, completion_tokens: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class RetryableError(Exception):
    """A failure worth retrying: rate limit, server error, timeout, dropped connection.

    `retry_after` is the server's own advice in seconds (HTTP Retry-After), None when it gave none or gave
    something unusable; it may be `math.inf` (a date too far away to represent). `rate_limited` marks a 429,
    `timed_out` a reply that did not come within the timeout: both tell the engine the server has more work
    than it can take."""

    def __init__(
        self,
        reason: str,
        *,
        retry_after: float | None = None,
        rate_limited: bool = False,
        timed_out: bool = False,
        rate_limits: RateLimitState | None = None,
    ):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.timed_out = timed_out
        self.rate_limits = rate_limits


class ResponseFormatRejected(Exception):
    """The server does not accept the requested `response_format`; the engine falls back to a weaker one."""
