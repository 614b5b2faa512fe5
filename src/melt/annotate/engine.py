"""The annotation run: ask the model about every utterance, remember every reply, validate, aggregate.

Work is a list of (utterance, sample) jobs taken by worker coroutines. A job asks once, and once more with the
validation error if the answer is unusable. Every request goes through the store first: a reply paid for in an
earlier invocation is reused, never requested again. The engine owns retries, the answer-format fallback, the
budget and the pace; backends only classify failures (see `melt.llm.base`).

Pace: requests in flight are bounded by an adaptive limit (`InFlightLimit`): halved when the server says it has
too much (a 429, a timeout), grown back on successes, never above --concurrency (nor above what the backend
can serve at once). A 429 delays only the request that got it, by the server's Retry-After. When the server
reports its rate limits (`x-ratelimit-*`), `Pacer` spaces requests at the rate it refills them.

Elsewhere: a `Dispatcher` (the Batch API, `melt.annotate.batch`) may take requests the store lacks instead of
the backend; their samples stay pending until a later invocation finds the replies in the store.

Stopping: `stop()` sends nothing more; requests in flight get a grace period to finish and be stored (a paid
reply is worth waiting for), then are cancelled. A failed store write, a fatal backend error, a signal, the
budget, or a server asking to wait longer than --backoff-max all stop the run this way.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from melt.annotate.config import RESPONSE_FORMATS, AnnotateConfig
from melt.annotate.store import RequestStore, StoredReply, StoreWriteError, request_key
from melt.annotate.validate import Validation, label_confidence, validate_reply
from melt.llm.base import (
    Backend,
    BackendError,
    ChatReply,
    ChatRequest,
    RateLimitState,
    RequestFailed,
    ResponseFormatRejected,
    RetryableError,
    audio_parts,
    audio_seconds,
    text_chars,
)
from melt.llm.openai import RAW_RESPONSE
from melt.llm.pricing import Price
from melt.prompts import PromptConfig, repair_messages, response_format

ANSWER_FIELDS: tuple[str, ...] = (
    "character",
    "context",
    "emotion",
    "loudness",
    "pitch",
    "rhythm_speed",
    "emotional_impact",
)
#: Characters per token for estimates before the server has reported real counts; low, so estimates are high.
CHARS_PER_TOKEN = 3.0
#: A token is at least about a character for every tokenizer in use (one byte at worst, four per character):
#: counts beyond these bounds are a server's bug, never billed.
_TOKENS_PER_CHAR_MAX = 4
_TOKENS_SLACK = 4096
#: Audio makes 10 to 32 tokens a second for the models in melt.llm.pricing: beyond this it is a server's bug.
_AUDIO_TOKENS_PER_SECOND_MAX = 100
#: The tiny request that finds out which answer format a server takes ("JSON" must be in the messages for
#: OpenAI's json_object mode).
PROBE_MESSAGES = ({"role": "user", "content": "Reply with a JSON object and nothing else."},)


@dataclass
class Utterance:
    id: str
    speaker: str | None
    #: the template's messages; a content may be a list of parts with `melt.llm.base.AudioPart`s (--audio)
    messages: list[dict[str, Any]]


@dataclass(frozen=True)
class Variant:
    """What differs between the requests for one utterance: sample i of a run with --samples, annotator k of a
    panel (melt.annotate.panel). `system` replaces the template's system message (None keeps it); `weight` is
    what the answer counts for in the utterance's distribution and majority."""

    temperature: float | None
    seed: int | None
    system: str | None = None
    weight: float = 1.0


def sample_variants(config: AnnotateConfig) -> list[Variant]:
    """`--samples N`: N requests that differ only in their seed (seed + i, when a seed is set)."""
    return [
        Variant(temperature=config.temperature, seed=None if config.seed is None else config.seed + i)
        for i in range(config.samples)
    ]


def request_variants(config: AnnotateConfig, prompt: PromptConfig) -> list[Variant]:
    """The requests for each utterance: a panel's annotators (melt.annotate.panel) or --samples."""
    if config.panel is None:
        return sample_variants(config)
    from melt.annotate.panel import panel_of, panel_variants  # the panel module builds on this one

    return panel_variants(panel_of(config), prompt, config.seed)


def variant_messages(messages: list[dict[str, Any]], variant: Variant) -> list[dict[str, Any]]:
    """An utterance's messages as `variant` sends them."""
    if variant.system is None:
        return messages
    return [
        {"role": "system", "content": variant.system},
        *(m for m in messages if m.get("role") != "system"),
    ]


@dataclass
class SampleOutcome:
    """One answer to one utterance, after the re-ask if there was one."""

    status: str  # ok | invalid | failed | pending
    answer: dict[str, str] | None = None
    flags: list[str] = field(default_factory=list)
    error: str | None = None
    raw_reply: str | None = None
    confidence: dict[str, float] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0


@dataclass
class RunStats:
    """What this invocation did. `requests` are logical requests (answers and re-asks); `sent` counts HTTP
    attempts, so `sent - completed` are the attempts lost to faults (the format probe included)."""

    requests: int = 0
    cached: int = 0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    repairs: int = 0
    #: requests left to a `Dispatcher` (taken into a batch, or already in one): their samples are pending
    deferred: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    format_fallbacks: list[str] = field(default_factory=list)
    probes: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    stopped_by_budget: bool = False
    #: why the run stopped before finishing (interrupted, the server asked to wait too long, ...), else None
    stop_reason: str | None = None
    #: the signal that interrupted the run (SIGINT, SIGTERM), else None
    interrupted: str | None = None
    #: the most requests in flight allowed (--concurrency, or less for a backend that serves fewer at once)
    concurrency: int = 0
    #: the lowest the adaptive in-flight limit went (429s and timeouts halve it)
    lowest_concurrency: int = 0
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["retries"] = dict(sorted(self.retries.items()))
        data["retries_total"] = sum(self.retries.values())
        return data


def chat_request(
    config: AnnotateConfig,
    schema_format: dict[str, Any],
    messages: list[dict[str, Any]],
    variant: Variant,
    level: str,
) -> ChatRequest:
    """The request for one variant of one prompt at answer-format `level` (see RESPONSE_FORMATS)."""
    formats = {"json_schema": schema_format, "json_object": {"type": "json_object"}, "text": None}
    return ChatRequest(
        messages=tuple(messages),
        temperature=variant.temperature,
        max_tokens=config.max_tokens,
        # The same seed for every sample would make servers that honour seeds repeat one answer N times.
        seed=variant.seed,
        response_format=formats[level],
        logprobs=config.logprobs,
        top_logprobs=config.top_logprobs if config.logprobs else None,
    )


def stored_key(model: str, request: ChatRequest, sample: int) -> tuple[str, str]:
    # A shallow dict: dataclasses.asdict would deep-copy the messages and the JSON schema of every request.
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    return request_key(model, fields, sample)


def backend_identity(backend: Backend) -> dict[str, Any]:
    """What decides a backend's replies (see `melt.llm.base`)."""
    identity = getattr(backend, "identity", None)
    return dict(identity()) if callable(identity) else {"kind": backend.name, "model": backend.model}


def implausible_usage(request: ChatRequest, reply: ChatReply) -> str | None:
    """Why the token counts of a reply cannot be right, or None. A server's bug must not be billed."""
    chars = text_chars(request.messages)
    if request.response_format is not None:
        chars += len(json.dumps(request.response_format))  # a schema is part of the prompt's tokens
    audio_cap = math.ceil(_AUDIO_TOKENS_PER_SECOND_MAX * audio_seconds(request.messages))
    prompt_cap = _TOKENS_PER_CHAR_MAX * chars + audio_cap + _TOKENS_SLACK
    completion_cap = _TOKENS_PER_CHAR_MAX * max(request.max_tokens or 0, len(reply.content)) + _TOKENS_SLACK
    if reply.prompt_tokens > prompt_cap:
        return (
            f"implausible usage from the server: {reply.prompt_tokens} prompt tokens for a request of {chars} "
            "characters (not billed)"
        )
    if reply.completion_tokens > completion_cap:
        return (
            f"implausible usage from the server: {reply.completion_tokens} completion tokens for a reply of "
            f"{len(reply.content)} characters with max_tokens {request.max_tokens} (not billed)"
        )
    return None


@dataclass(frozen=True)
class Outgoing:
    """A request the store has no reply to, about to be sent."""

    utterance: Utterance
    sample: int
    #: 0 the answer, 1 the re-ask
    turn: int
    request: ChatRequest
    key: str
    request_json: str


class Dispatcher(Protocol):
    """Decides where a request the store lacks goes (`Annotator(dispatch=...)`)."""

    #: what a request it takes costs (for --max-cost); None when unknown
    price: Price | None

    def route(self, outgoing: Outgoing) -> Literal["send", "take", "hold"]:
        """ "send": to the backend now; "take": `take` it (its sample stays pending); "hold": it is already on
        its way elsewhere (pending, nothing sent). Raises `RequestFailed` for a request that failed there."""
        ...

    def take(self, outgoing: Outgoing) -> None: ...


class _Stopped(Exception):
    """The run is stopping: send nothing more."""


class _Deferred(_Stopped):
    """The request went elsewhere (a `Dispatcher`): its sample stays pending, the run goes on."""


class _OutOfBudget(_Stopped):
    """Sending the next request could exceed --max-cost."""


class _GaveUp(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InFlightLimit:
    """How many requests may be in flight: additive increase, multiplicative decrease (AIMD).

    `congested()` halves the limit: on every timeout, and on a 429 when 429s are frequent (`FREQUENT` of the
    recent replies), once per round (a request sent before the last decrease reports the congestion that
    decrease already answered). An isolated 429 among many successes says nothing about the load:
    that request waits the server's Retry-After, the others go on. `succeeded()`, for a request sent since
    the last decrease, grows the limit back: by one per success up to where the last decrease happened while
    429s stay rare, otherwise by one per round of successes (probing); never above `maximum`."""

    #: Share of recent replies that are 429s above which a 429 means the server is at its limit.
    FREQUENT = 0.05
    #: Replies the share is averaged over (an exponential moving average).
    WINDOW = 50

    def __init__(self, maximum: int):
        self.maximum = max(1, maximum)
        self.limit = float(self.maximum)
        self.lowest = self.maximum
        self.in_flight = 0
        self.closed = False
        #: recent share of replies that were 429s
        self.rate_limited_share = 0.0
        self._round = 0
        self._recover_to = float(self.maximum)
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def cap(self, maximum: int) -> None:
        self.maximum = max(1, min(self.maximum, maximum))
        self.limit = min(self.limit, self.maximum)
        self.lowest = min(self.lowest, self.maximum)
        self._recover_to = min(self._recover_to, self.maximum)

    async def acquire(self) -> int:
        """Wait for a free place; returns the round the request is sent in (for `congested`)."""
        while self.in_flight >= int(self.limit) and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    waiter.cancel()
        if self.closed:
            raise _Stopped
        self.in_flight += 1
        return self._round

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    @property
    def overloaded(self) -> bool:
        """429s are frequent: the server is at its limit."""
        return self.rate_limited_share >= self.FREQUENT

    def congested(self, sent_in_round: int, *, rate_limited: bool) -> None:
        if rate_limited:
            self.rate_limited_share += (1.0 - self.rate_limited_share) / self.WINDOW
            if self.rate_limited_share < self.FREQUENT or sent_in_round != self._round:
                return
        # Every timeout halves: each is a request that waited the whole timeout, and on a server that works on
        # fewer requests than it is sent, the ones that time out were queued behind the others, so the round
        # they were sent in says nothing.
        self._round += 1
        self._recover_to = self.limit
        self.limit = max(1.0, self.limit / 2)
        self.lowest = min(self.lowest, int(self.limit))

    def succeeded(self, sent_in_round: int) -> None:
        self.rate_limited_share -= self.rate_limited_share / self.WINDOW
        if self.limit >= self.maximum or sent_in_round != self._round:
            return
        fast = self.limit < self._recover_to and self.rate_limited_share < self.FREQUENT
        self.limit = min(self.limit + (1.0 if fast else 1.0 / self.limit), float(self.maximum))
        self._wake()

    def close(self) -> None:
        """Every waiter stops waiting (and raises `_Stopped`)."""
        self.closed = True
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        free = int(self.limit) - self.in_flight
        while free > 0 and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class Pacer:
    """Spaces requests when the server says its rate limit is nearly used up (`x-ratelimit-*` headers).

    With plenty left, nothing is paced. Below a low-water mark, requests go out at the rate the server refills
    its limit: (limit - remaining) / reset for a bucket that refills continuously (OpenAI's `reset` is the time
    until the limit is whole again), or remaining / reset when the server does not give its limit. With nothing
    left and no limit given, requests wait until the limit is whole again, `reset` from now, and then go (not
    one per reset time). A reply saying there is room again ends every wait at once (`relaxed`)."""

    def __init__(self) -> None:
        self.interval = 0.0
        self._next = 0.0
        self._resume_at = 0.0
        self.tokens_per_request = 0.0
        #: set (and replaced) whenever the pace becomes less strict: paced requests look again
        self.relaxed = asyncio.Event()

    def observe(self, state: RateLimitState | None, in_flight: int) -> None:
        if state is None:
            return
        interval = resume_at = 0.0
        now = time.monotonic()
        for kind, (limit, remaining, reset) in state.kinds.items():
            cost = 1.0 if kind == "requests" else self.tokens_per_request
            if cost <= 0 or remaining >= 2 * cost * max(in_flight, 1) + cost or reset <= 0:
                continue
            if limit is not None and limit > remaining:
                interval = max(interval, cost * reset / (limit - remaining))
            elif remaining < cost:
                resume_at = max(resume_at, now + reset)
            else:
                interval = max(interval, cost * reset / remaining)
        # Only pacing lifted altogether wakes the paced requests: waking them on every easing of a pace that
        # replies move up and down would send their slots at once, in a burst the limit refuses.
        if (interval == 0 < self.interval) or (resume_at < self._resume_at and self._resume_at > now):
            self._next = now
            self.relaxed.set()
            self.relaxed = asyncio.Event()
        self.interval = interval
        self._resume_at = resume_at

    def delay(self) -> float:
        """Seconds the next request waits; reserves its slot."""
        now = time.monotonic()
        if self._resume_at > now:
            return self._resume_at - now
        if self.interval <= 0:
            return 0.0
        at = max(now, self._next)
        self._next = at + self.interval
        return at - now


#: A check of the server run once before the first request is sent (e.g. that it takes audio): it raises
#: `BackendError` to stop the run, and remembers what it found in the store itself.
ServerCheck = Callable[["Annotator"], Awaitable[None]]


class Annotator:
    def __init__(
        self,
        config: AnnotateConfig,
        prompt: PromptConfig,
        backend: Backend,
        store: RequestStore,
        price: Price | None,
        on_job_done: Callable[[RunStats], None] | None = None,
        *,
        dispatch: Dispatcher | None = None,
        variants: Sequence[Variant] | None = None,
        audio_tokens_per_second: float | None = None,
        server_checks: Sequence[ServerCheck] = (),
    ):
        self.config = config
        #: the requests for each utterance (default: `--samples`, or the panel's annotators)
        self.variants = list(variants) if variants is not None else request_variants(config, prompt)
        #: audio input tokens per second of audio for the budget's worst case (unknown: no --max-cost with audio)
        self.audio_tokens_per_second = audio_tokens_per_second
        self.server_checks = list(server_checks)
        self.prompt = prompt
        self.backend = backend
        self.store = store
        self.price = price
        self.on_job_done = on_job_done
        self.dispatch = dispatch
        self.stats = RunStats()
        self.identity = backend_identity(backend)
        self._profile_key = "server:" + json.dumps(self.identity, sort_keys=True)
        self.format_level = self._initial_format_level()
        self._schema_format = response_format(prompt)
        self.limit = InFlightLimit(config.concurrency)
        backend_cap = getattr(backend, "max_concurrency", None)
        if backend_cap:
            self.limit.cap(backend_cap)
        self.pacer = Pacer()
        self._profile: asyncio.Future[None] | None = None
        self._reserved = 0.0
        #: requests holding a reservation of budget
        self._reservations = 0
        #: whether a request to an utterance has come back (its usage tells the tokens per character)
        self._answered = False
        # The worst case of the requests taken by the dispatcher: spent as far as the budget is concerned.
        self._committed = 0.0
        # Set whenever a request gives back its reservation, so requests waiting for budget look again.
        self._budget_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tokens_per_char = 1 / CHARS_PER_TOKEN
        self._workers: list[asyncio.Task[None]] = []
        self._grace: asyncio.TimerHandle | None = None
        #: the error that stopped the run, raised once the run has wound down
        self.fatal: BaseException | None = None
        store.on_failure = lambda error: self.stop(str(error), fatal=error, grace=0)

    def _initial_format_level(self) -> str:
        if self.prompt.free_text_reply:
            return "text"  # reasoning first, JSON last: a JSON response format would suppress the reasoning
        if self.config.response_format != "auto":
            return self.config.response_format
        remembered = self.store.meta_json(self._profile_key) or {}
        level = remembered.get("level") if isinstance(remembered, dict) else None
        return level if level in RESPONSE_FORMATS else RESPONSE_FORMATS[0]

    @property
    def in_flight(self) -> int:
        return self.limit.in_flight

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    # -- the run ------------------------------------------------------------------------------------------

    async def run(self, utterances: list[Utterance]) -> dict[str, list[SampleOutcome]]:
        started = time.perf_counter()
        per_utterance = len(self.variants)
        outcomes: dict[str, list[SampleOutcome]] = {
            u.id: [SampleOutcome("pending") for _ in range(per_utterance)] for u in utterances
        }
        jobs = ((u, s) for u in utterances for s in range(per_utterance))
        workers = min(self.config.concurrency, max(1, len(utterances) * per_utterance))
        self._workers = [asyncio.create_task(self._worker(jobs, outcomes)) for _ in range(workers)]
        try:
            results = await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            for worker in self._workers:
                worker.cancel()
            if self._grace is not None:
                self._grace.cancel()
            if self._profile is not None and not self._profile.done():
                # The probe outlives the workers only when they were cancelled (a second Ctrl-C): it must not
                # write to the store after the run has closed it.
                self._profile.cancel()
                await asyncio.gather(self._profile, return_exceptions=True)
            self.stats.elapsed_s = time.perf_counter() - started
            self.stats.concurrency = self.limit.maximum
            self.stats.lowest_concurrency = self.limit.lowest
        errors = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]
        if errors:
            raise errors[0]
        return outcomes

    def stop(self, reason: str, *, fatal: BaseException | None = None, grace: float | None = None) -> None:
        """Send nothing more. Requests in flight have `grace` seconds (default: the timeout, at most 30 s) to
        finish and be stored; then they are cancelled. `fatal` is raised once the run has wound down."""
        if fatal is not None and self.fatal is None:
            self.fatal = fatal
        if self.stats.stop_reason is None and not isinstance(fatal, BaseException):
            self.stats.stop_reason = reason
        first = not self._stopped.is_set()
        self._stopped.set()
        self._budget_freed.set()
        self.limit.close()
        abort = getattr(self.backend, "abort", None)
        if callable(abort):
            abort()  # a local model stops generating (nothing is paid for there)
        grace = min(self.config.timeout, 30.0) if grace is None else grace
        if grace <= 0:
            self.cancel_in_flight()
        elif first and self._workers:
            self._grace = asyncio.get_running_loop().call_later(grace, self.cancel_in_flight)

    def cancel_in_flight(self) -> None:
        for worker in self._workers:
            worker.cancel()

    async def _worker(
        self, jobs: Iterator[tuple[Utterance, int]], outcomes: dict[str, list[SampleOutcome]]
    ) -> None:
        # One shared generator: the event loop is single-threaded, so next() never hands a job out twice.
        for utterance, sample in jobs:
            if self.stopping:
                return
            try:
                outcomes[utterance.id][sample] = await self._sample(utterance, sample)
            except (BackendError, StoreWriteError) as exc:
                self.stop(str(exc), fatal=exc, grace=0 if isinstance(exc, StoreWriteError) else None)
                return
            if self.on_job_done:
                self.on_job_done(self.stats)

    async def _sample(self, utterance: Utterance, sample: int) -> SampleOutcome:
        outcome = SampleOutcome("pending")
        messages = variant_messages(utterance.messages, self.variants[sample])
        try:
            reply = await self._request(utterance, sample, 0, messages, outcome)
            validation = validate_reply(reply.content, self.prompt, utterance.speaker)
            if not validation.ok and self.config.repair:
                self.stats.repairs += 1
                messages = repair_messages(messages, reply.content, validation.error or "invalid answer")
                reply = await self._request(utterance, sample, 1, messages, outcome)
                validation = validate_reply(reply.content, self.prompt, utterance.speaker)
                validation.flags.append("re_asked")
        except _Stopped as exc:
            # Pending, with what its requests so far cost (an answer paid for, its re-ask not sent).
            if isinstance(exc, _OutOfBudget):
                self.stats.stopped_by_budget = True
            outcome.status = "pending"
            return outcome
        except _GaveUp as exc:
            outcome.status, outcome.error = "failed", exc.reason
            return outcome
        self._finish(outcome, validation, reply)
        return outcome

    def _finish(self, outcome: SampleOutcome, validation: Validation, reply: StoredReply) -> None:
        outcome.flags = list(validation.flags)
        # Kept for usable answers too: the reply as the model wrote it, for a reader checking the parsed fields.
        outcome.raw_reply = reply.content
        if validation.ok:
            outcome.status = "ok"
            outcome.answer = validation.answer
            if reply.logprobs:
                outcome.confidence = label_confidence(reply.logprobs, self.prompt.labels)
        else:
            # Never a guessed label: the reply is kept for a human to read.
            outcome.status = "invalid"
            outcome.error = validation.error

    # -- one request ----------------------------------------------------------------------------------------

    async def _request(
        self,
        utterance: Utterance,
        sample: int,
        turn: int,
        messages: list[dict[str, Any]],
        outcome: SampleOutcome,
    ) -> StoredReply:
        """The reply to `messages`, from the store if it was ever received, otherwise from the backend."""
        self.stats.requests += 1
        while True:
            level = self.format_level
            request = chat_request(self.config, self._schema_format, messages, self.variants[sample], level)
            key, request_json = stored_key(self.backend.model, request, sample)
            stored = self.store.get(key)
            if stored is not None:
                self.stats.cached += 1
                self._account(outcome, stored.prompt_tokens, stored.completion_tokens, stored.cost_usd)
                return stored
            if self.stopping:
                raise _Stopped
            await self._know_server()
            if self.format_level != level:
                continue  # the probe chose a weaker format: this request is a different one
            if self.dispatch is not None:
                await self._dispatch(Outgoing(utterance, sample, turn, request, key, request_json))
            try:
                return await self._send(utterance, sample, turn, request, key, request_json, outcome)
            except ResponseFormatRejected as exc:
                self._fall_back(level, exc)

    async def _dispatch(self, outgoing: Outgoing) -> None:
        """Returns when the request is to be sent here; raises `_Deferred` when it went elsewhere."""
        assert self.dispatch is not None
        try:
            route = self.dispatch.route(outgoing)
        except RequestFailed as exc:
            self.stats.failed += 1
            raise _GaveUp(exc.reason) from exc
        if route == "send":
            return
        if route == "take":
            reservation = await self._reserve(outgoing.request, self.dispatch.price)
            self._release(reservation, price=self.dispatch.price, spent=True)
            self.dispatch.take(outgoing)
        self.stats.deferred += 1
        raise _Deferred

    def _fall_back(self, level: str, exc: ResponseFormatRejected) -> None:
        if self.format_level != level:
            return  # another worker already moved the run to a weaker format
        position = RESPONSE_FORMATS.index(level)
        if self.config.response_format != "auto" or position + 1 >= len(RESPONSE_FORMATS):
            raise BackendError(f"the server rejected response_format {level!r}: {exc}") from exc
        self.format_level = RESPONSE_FORMATS[position + 1]
        self.stats.format_fallbacks.append(f"{level} -> {self.format_level}")
        self._remember_server()

    # -- the server: its family and the answer format it takes, found once and remembered ----------------------

    async def _know_server(self) -> None:
        if self._profile is None:
            self._profile = asyncio.ensure_future(self._learn_server())
        # Shielded: a worker cancelled while waiting must not cancel the probe the others wait for.
        await asyncio.shield(self._profile)

    async def _learn_server(self) -> None:
        remembered = self.store.meta_json(self._profile_key)
        use = getattr(self.backend, "use_server_profile", None)
        if isinstance(remembered, dict) and isinstance(remembered.get("server"), dict) and callable(use):
            use(remembered["server"])
        elif callable(detect := getattr(self.backend, "detect_server", None)):
            await detect()  # an unreachable server stops the run here, before any paid request
            if self.config.response_format == "auto" and self.format_level != "text":
                await self._probe_format()
            self._remember_server()
        cap = getattr(self.backend, "max_concurrency", None)
        if cap:
            self.limit.cap(cap)
        for check in self.server_checks:
            await check(self)

    async def _probe_format(self) -> None:
        """One tiny request per answer format until the server takes one. A transient failure ends the probe:
        the run then learns from the rejections of real requests, as it would without a probe."""
        while not self.stopping:
            level = self.format_level
            request = self.probe_request(list(PROBE_MESSAGES), level)
            try:
                await self.probe(request)
            except ResponseFormatRejected as exc:
                self._fall_back(level, exc)
                continue
            except (RetryableError, RequestFailed):
                return
            return

    def probe_request(self, messages: list[dict[str, Any]], level: str | None = None) -> ChatRequest:
        """A tiny request (16 tokens at most, no logprobs) at answer format `level` (default: the run's), for
        finding out what a server takes. At the run's own temperature (its first annotator's): some models take
        only their default (OpenAI's reasoning models)."""
        request = chat_request(
            self.config, self._schema_format, messages, self.variants[0], level or self.format_level
        )
        return dataclasses.replace(request, max_tokens=16, logprobs=False, top_logprobs=None)

    async def probe(self, request: ChatRequest) -> ChatReply:
        """Send one request that is no utterance's (a probe of the server): within the budget, counted, and kept in
        the store (turn -1, no utterance) so the folder's totals include what it cost. Raises what the backend
        raises."""
        reservation = await self._reserve(request)
        self.stats.sent += 1
        self.stats.probes += 1
        try:
            reply = await self.backend.complete(request)
        finally:
            self._release(reservation)
        if implausible_usage(request, reply) is None:
            cost = self._cost(reply)
            key, request_json = stored_key(self.backend.model, request, 0)
            self.store.put_done(key, utterance_id="", sample=0, turn=-1, request_json=request_json,
                                content=reply.content, finish_reason=reply.finish_reason, logprobs=None,
                                raw_response=reply.extra.get(RAW_RESPONSE), prompt_tokens=reply.prompt_tokens,
                                completion_tokens=reply.completion_tokens, cost_usd=cost, attempts=1,
                                started=time.time())  # fmt: skip
            self._count(reply.prompt_tokens, reply.completion_tokens, cost)
        return reply

    def learn_audio_rate(self, tokens_per_second: float) -> None:
        """A rate of audio tokens per second the server billed or showed: the budget's worst case uses the highest
        seen, not a table's figure the server does not keep to."""
        self.audio_tokens_per_second = max(self.audio_tokens_per_second or 0.0, tokens_per_second)
        self._budget_freed.set()  # requests waiting for budget estimate again

    def _cost(self, reply: ChatReply) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(reply.prompt_tokens, reply.completion_tokens, reply.audio_prompt_tokens)

    def _remember_server(self) -> None:
        profile = getattr(self.backend, "server_profile", None)
        self.store.set_meta_json(
            self._profile_key,
            {"level": self.format_level, "server": profile() if callable(profile) else {}},
        )

    async def _send(
        self,
        utterance: Utterance,
        sample: int,
        turn: int,
        request: ChatRequest,
        key: str,
        request_json: str,
        outcome: SampleOutcome,
    ) -> StoredReply:
        reservation = await self._reserve(request)
        started = time.time()
        attempts = 0
        try:
            while True:
                if self.stopping:
                    raise _Stopped
                sent_in = await self.limit.acquire()
                try:
                    await self._pace()
                    attempts += 1
                    self.stats.sent += 1
                    reply = await self.backend.complete(request)
                except RetryableError as exc:
                    if exc.rate_limited or exc.timed_out:
                        self.limit.congested(sent_in, rate_limited=exc.rate_limited)
                    # While 429s are frequent, a rate-limited request keeps its place as it waits the server's
                    # Retry-After: it is still part of the load, and a place freed at once would go to a request
                    # that the same limit refuses a millisecond later. A sporadic 429 frees its place.
                    hold = exc.rate_limited and exc.retry_after is not None and self.limit.overloaded
                    if not hold:
                        self.limit.release()
                    try:
                        if self.stopping:
                            raise _Stopped from exc
                        self.pacer.observe(exc.rate_limits, self.limit.in_flight)
                        await self._retry_or_give_up(
                            exc, attempts, utterance, sample, turn, key, request_json, started
                        )
                    finally:
                        if hold:
                            self.limit.release()
                    continue
                except RequestFailed as exc:
                    self.limit.release()
                    billed = self._bill_failed(request, exc, outcome)
                    self._give_up(exc.reason, utterance, sample, turn, key, request_json, attempts, started,
                                  billed)  # fmt: skip
                except BaseException:
                    self.limit.release()
                    raise
                self.limit.release()
                self.limit.succeeded(sent_in)
                self.pacer.observe(reply.rate_limits, self.limit.in_flight)
                break
        finally:
            self._release(reservation)
            self._answered = True
        absurd = implausible_usage(request, reply)
        if absurd is not None:
            self._give_up(absurd, utterance, sample, turn, key, request_json, attempts, started)
        cost = self._cost(reply)
        self.store.put_done(key, utterance_id=utterance.id, sample=sample, turn=turn, request_json=request_json,
                            content=reply.content, finish_reason=reply.finish_reason, logprobs=reply.logprobs,
                            raw_response=reply.extra.get(RAW_RESPONSE),
                            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                            cost_usd=cost, attempts=attempts, started=started)  # fmt: skip
        self.stats.completed += 1
        self._count(reply.prompt_tokens, reply.completion_tokens, cost)
        if reply.prompt_tokens:
            # The text's share of the prompt: all of it without audio, else what the server says is not audio.
            text_tokens = reply.prompt_tokens - reply.audio_prompt_tokens
            if reply.audio_prompt_tokens or not audio_parts(request.messages):
                chars = text_chars(request.messages)
                self._tokens_per_char = max(self._tokens_per_char, text_tokens / max(chars, 1))
            seconds = audio_seconds(request.messages)
            if reply.audio_prompt_tokens and seconds:
                self.learn_audio_rate(reply.audio_prompt_tokens / seconds)
            self.pacer.tokens_per_request = reply.prompt_tokens + (request.max_tokens or 0)
        self._account(outcome, reply.prompt_tokens, reply.completion_tokens, cost)
        return StoredReply(reply.content, reply.prompt_tokens, reply.completion_tokens, cost,
                           reply.finish_reason, reply.logprobs)  # fmt: skip

    def _bill_failed(
        self, request: ChatRequest, exc: RequestFailed, outcome: SampleOutcome
    ) -> tuple[int, int, float | None]:
        """Count what a request that failed was billed (a reply that is no chat completion, with its usage):
        --max-cost must see the money go. Absurd counts are not billed, as for a reply."""
        billed = ChatReply("", exc.prompt_tokens, exc.completion_tokens)
        if not (billed.prompt_tokens or billed.completion_tokens) or implausible_usage(request, billed):
            return 0, 0, None
        cost = self.price.cost(billed.prompt_tokens, billed.completion_tokens) if self.price else None
        self._count(billed.prompt_tokens, billed.completion_tokens, cost)
        self._account(outcome, billed.prompt_tokens, billed.completion_tokens, cost)
        if billed.prompt_tokens and not audio_parts(request.messages):
            # with audio, the text's share of the count is unknown (the error carries no details)
            chars = text_chars(request.messages)
            self._tokens_per_char = max(self._tokens_per_char, billed.prompt_tokens / max(chars, 1))
        return billed.prompt_tokens, billed.completion_tokens, cost

    async def _retry_or_give_up(
        self, exc: RetryableError, attempts: int, utterance: Utterance, sample: int, turn: int, key: str,
        request_json: str, started: float,
    ) -> None:  # fmt: skip
        kind = exc.reason.split(":", 1)[0]
        if exc.retry_after is not None and exc.retry_after > self.config.backoff_max:
            wait = "an unbounded time" if math.isinf(exc.retry_after) else f"{exc.retry_after:.0f} s"
            self.stop(
                f"the server asks to wait {wait} ({kind}), more than --backoff-max "
                f"{self.config.backoff_max:g} s; rerun later"
            )
            raise _Stopped
        if attempts > self.config.max_retries:
            self._give_up(f"gave up after {attempts} attempts: {exc.reason}", utterance, sample, turn, key,
                          request_json, attempts, started)  # fmt: skip
        self.stats.retries[kind] += 1
        await self._sleep(self._backoff(attempts, exc))

    def _give_up(
        self, reason: str, utterance: Utterance, sample: int, turn: int, key: str, request_json: str,
        attempts: int, started: float, billed: tuple[int, int, float | None] = (0, 0, None),
    ) -> None:  # fmt: skip
        self.stats.failed += 1
        self.store.put_failed(key, utterance_id=utterance.id, sample=sample, turn=turn, request_json=request_json,
                              error=reason, attempts=attempts, started=started, prompt_tokens=billed[0],
                              completion_tokens=billed[1], cost_usd=billed[2])  # fmt: skip
        raise _GaveUp(reason)

    def _count(self, prompt_tokens: int, completion_tokens: int, cost: float | None) -> None:
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.cost_usd = (
            None if cost is None or self.stats.cost_usd is None else self.stats.cost_usd + cost
        )

    @staticmethod
    def _account(
        outcome: SampleOutcome, prompt_tokens: int, completion_tokens: int, cost: float | None
    ) -> None:
        outcome.prompt_tokens += prompt_tokens
        outcome.completion_tokens += completion_tokens
        outcome.cost_usd = None if cost is None or outcome.cost_usd is None else outcome.cost_usd + cost

    async def _reserve(self, request: ChatRequest, price: Price | None = None) -> float:
        """Hold back the most this request can cost (at `price`, by default the backend's). While requests in
        flight hold reservations that might free room, wait for them; stop the run only when the request cannot
        fit even with nothing in flight."""
        price = price or self.price
        if self.config.max_cost is None or price is None:
            return 0.0
        chars, seconds = text_chars(request.messages), audio_seconds(request.messages)
        while True:
            # Estimated again after each wait: the replies meanwhile may have shown the text to be denser, or
            # the audio to make more tokens.
            audio = math.ceil(seconds * (self.audio_tokens_per_second or 0))
            prompt = math.ceil(chars * self._tokens_per_char) + 16 + audio
            worst = price.cost(prompt, request.max_tokens or 0, audio)
            if self.stats.stopped_by_budget:
                raise _OutOfBudget
            if self.stopping:
                raise _Stopped
            # Until a first reply has said how many tokens the text makes (Chinese text makes about one per
            # character, ten times English), one request at a time: a first wave reserved at a guess could
            # spend several times the budget.
            first = self._answered or not self._reservations
            spent = (self.stats.cost_usd or 0.0) + self._committed
            if first and spent + self._reserved + worst <= self.config.max_cost:
                self._reserved += worst
                self._reservations += 1
                return worst
            if not self._reservations:
                self.stats.stopped_by_budget = True
                raise _OutOfBudget
            self._budget_freed.clear()
            await self._budget_freed.wait()

    def _release(self, reservation: float, *, price: Price | None = None, spent: bool = False) -> None:
        """Give back a request's reservation (reserved at `price`), or with `spent` count it as spent (a request
        the dispatcher took); requests waiting for budget look again."""
        if self.config.max_cost is not None and (price or self.price) is not None:  # `_reserve` counted it
            self._reservations -= 1
            # Counted, not judged by the float sum, which subtraction may leave a hair above zero.
            self._reserved = self._reserved - reservation if self._reservations else 0.0
            if spent:
                self._committed += reservation
        self._budget_freed.set()

    async def _pace(self) -> None:
        """Wait as the pacer asks; when a reply says there is room again meanwhile, look again at once."""
        while (delay := self.pacer.delay()) > 0:
            relaxed = asyncio.ensure_future(self.pacer.relaxed.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait((relaxed, stopped), timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                relaxed.cancel()
                stopped.cancel()
            if self.stopping:
                raise _Stopped
            if not relaxed.done() or relaxed.cancelled():
                return  # waited its whole delay

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` between runs (batches in progress); False, at once, when the run stops meanwhile."""
        try:
            await self._sleep(seconds)
        except _Stopped:
            return False
        return not self.stopping

    async def _sleep(self, delay: float) -> None:
        """Sleep, unless the run stops meanwhile (then `_Stopped`)."""
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout=delay)
        except TimeoutError:
            return
        raise _Stopped

    def _backoff(self, attempt: int, exc: RetryableError) -> float:
        if exc.retry_after is not None:
            # What the server asked, and a little more so requests told the same do not return in lockstep.
            return exc.retry_after + random.uniform(0, 0.1 * max(exc.retry_after, self.config.backoff_base))
        # Exponential with jitter, so many requests hit by one outage do not come back in lockstep.
        delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)


def aggregate(
    utterance_id: str, outcomes: list[SampleOutcome], weights: Sequence[float] | None = None
) -> dict[str, Any]:
    """One output row from the samples (or a panel's annotators) of one utterance. `weights[i]` is what answer i
    counts for in the distribution, the majority and the agreement (default: 1 each)."""
    row: dict[str, Any] = {"id": utterance_id, **dict.fromkeys(ANSWER_FIELDS)}
    row["prompt_tokens"] = sum(o.prompt_tokens for o in outcomes)
    row["completion_tokens"] = sum(o.completion_tokens for o in outcomes)
    costs = [o.cost_usd for o in outcomes]
    row["cost_usd"] = None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]
    row.update(
        flags="", confidence=None, distribution=None, samples=0, agreement=None, error=None, raw_reply=None
    )
    weights = list(weights) if weights is not None else [1.0] * len(outcomes)
    valid = [(o, w) for o, w in zip(outcomes, weights, strict=True) if o.status == "ok"]
    statuses = {o.status for o in outcomes}
    if "pending" in statuses:
        row["status"] = "pending"
        return row
    if "failed" in statuses:
        row["status"] = "failed"
        row["error"] = next(o.error for o in outcomes if o.status == "failed")
        return row
    if not valid:
        last = outcomes[0]
        row.update(status="invalid", error=last.error, raw_reply=last.raw_reply, flags=";".join(last.flags))
        return row

    labels = [o.answer["emotion"] for o, _ in valid if o.answer]
    counts: defaultdict[str, float] = defaultdict(float)
    for o, weight in valid:
        if o.answer:
            counts[o.answer["emotion"]] += weight
    total = sum(counts.values())
    # Ties go to the label answered first, so the result does not depend on dictionary order.
    majority = max(counts, key=lambda label: (counts[label], -labels.index(label)))
    chosen = next(o for o, _ in valid if o.answer and o.answer["emotion"] == majority)
    agreement = counts[majority] / total if total > 0 else None
    flags = list(chosen.flags)
    if len(valid) < len(outcomes):
        flags.append(f"invalid_samples:{len(outcomes) - len(valid)}")
    confidences = [o.confidence[majority] for o, _ in valid if o.confidence and majority in o.confidence]
    if confidences:
        confidence: float | None = sum(confidences) / len(confidences)
    else:
        confidence = agreement if len(outcomes) > 1 else None
    row.update(chosen.answer or {})
    row.update(
        status="ok",
        flags=";".join(dict.fromkeys(flags)),
        confidence=confidence,
        distribution=json.dumps({label: counts[label] / total for label in sorted(counts)})
        if total > 0
        else None,
        samples=len(valid),
        agreement=agreement,
        raw_reply=chosen.raw_reply,
    )
    return row
