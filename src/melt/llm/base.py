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

A message's content is a text, or a list of content parts in OpenAI's form: `{"type": "text", "text": ...}`
and `AudioPart`s. An `AudioPart` stands for an `input_audio` part whose data is made only when the request is
sent (`wire_messages`): requests held in memory, their keys and the store carry the audio's sha256 and
segment (`stored_form`), never its base64, and only the requests in flight hold encoded audio.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from melt.errors import MeltError


@dataclass(frozen=True)
class AudioPart:
    """An `input_audio` content part (base64 WAV) made when the request is sent. `load()` returns the WAV
    bytes of `seconds` of audio from `start` in the file whose content hashes to `sha256`, at `sample_rate` Hz
    mono; it raises `RequestFailed` when the file can no longer be read."""

    sha256: str
    start: float
    seconds: float
    sample_rate: int
    load: Callable[[], bytes] = field(compare=False, hash=False, repr=False)
    #: where the audio comes from and how long the whole recording is (reporting only: not part of the request)
    source: str = field(default="", compare=False)
    source_seconds: float = field(default=0.0, compare=False)

    def stored(self) -> dict[str, Any]:
        """The part as keys and the store record it: what decides the reply, without the payload."""
        audio = {"format": "wav", "sha256": self.sha256, "start": self.start, "seconds": self.seconds,
                 "sample_rate": self.sample_rate, "channels": 1}  # fmt: skip
        return {"type": "input_audio", "input_audio": audio}

    def wire(self) -> dict[str, Any]:
        """The part as sent: OpenAI's `input_audio` with the WAV file in base64."""
        data = base64.b64encode(self.load()).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def stored_form(value: Any) -> Any:
    """`default=` for JSON encoders: an `AudioPart` as `stored()`; anything else is not JSON."""
    if isinstance(value, AudioPart):
        return value.stored()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def wire_messages(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages as sent: every `AudioPart` encoded (text-only messages are passed on as they are)."""
    out: list[Mapping[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(part, AudioPart) for part in content):
            parts = [part.wire() if isinstance(part, AudioPart) else part for part in content]
            message = {**message, "content": parts}
        out.append(message)
    return out


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message: its content, or the text of its text parts."""
    content = message.get("content", "")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else str(content)


def text_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """Characters of text in `messages` (audio parts left out)."""
    return sum(len(message_text(m)) for m in messages)


def audio_parts(messages: Sequence[Mapping[str, Any]]) -> list[AudioPart]:
    return [
        part
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if isinstance(part, AudioPart)
    ]


def audio_seconds(messages: Sequence[Mapping[str, Any]]) -> float:
    """Seconds of audio in `messages`."""
    return sum(part.seconds for part in audio_parts(messages))


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. `response_format` uses the OpenAI form:
    `{"type": "json_schema", "json_schema": {"name": ..., "schema": ..., "strict": true}}`,
    `{"type": "json_object"}`, or None for plain text. A backend sends it in whatever form its server takes.
    `messages` may hold `AudioPart`s (see the module's docstring): a backend sends `wire_messages(messages)`."""

    messages: tuple[dict[str, Any], ...]
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
    #: of `prompt_tokens`, those the server counted as audio (OpenAI's `usage.prompt_tokens_details.audio_tokens`)
    audio_prompt_tokens: int = 0


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
