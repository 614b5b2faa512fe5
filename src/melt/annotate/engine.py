"""The annotation run: ask the model about every utterance, remember every reply, validate, aggregate.

Work is a list of (utterance, sample) jobs taken by `concurrency` worker coroutines. A job asks once, and
once more with the validation error if the answer is unusable. Every request goes through the store first:
a reply paid for in an earlier invocation is reused, never requested again. The engine owns retries (with
backoff, honouring Retry-After, pausing every worker after a 429), the answer-format fallback, and the
budget; backends only classify failures (see `melt.llm.base`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from melt.annotate.config import RESPONSE_FORMATS, AnnotateConfig
from melt.annotate.store import RequestStore, StoredReply, request_key
from melt.annotate.validate import Validation, label_confidence, validate_reply
from melt.llm.base import Backend, BackendError, ChatRequest, ResponseFormatRejected, RetryableError
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


@dataclass
class Utterance:
    id: str
    speaker: str | None
    messages: list[dict[str, str]]


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
    attempts, so `sent - completed` are the attempts lost to faults."""

    requests: int = 0
    cached: int = 0
    sent: int = 0
    completed: int = 0
    failed: int = 0
    repairs: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    format_fallbacks: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    stopped_by_budget: bool = False
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["retries"] = dict(sorted(self.retries.items()))
        data["retries_total"] = sum(self.retries.values())
        return data


def chat_request(
    config: AnnotateConfig,
    schema_format: dict[str, Any],
    messages: list[dict[str, str]],
    sample: int,
    level: str,
) -> ChatRequest:
    """The request for one sample of one prompt at answer-format `level` (see RESPONSE_FORMATS)."""
    formats = {"json_schema": schema_format, "json_object": {"type": "json_object"}, "text": None}
    return ChatRequest(
        messages=tuple(messages),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        # The same seed for every sample would make servers that honour seeds repeat one answer N times.
        seed=None if config.seed is None else config.seed + sample,
        response_format=formats[level],
        logprobs=config.logprobs,
        top_logprobs=config.top_logprobs if config.logprobs else None,
    )


def stored_key(model: str, request: ChatRequest, sample: int) -> tuple[str, str]:
    # A shallow dict: dataclasses.asdict would deep-copy the messages and the JSON schema of every request.
    fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    return request_key(model, fields, sample)


class _OutOfBudget(Exception):
    """Sending the next request could exceed --max-cost."""


class _GaveUp(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Annotator:
    def __init__(
        self,
        config: AnnotateConfig,
        prompt: PromptConfig,
        backend: Backend,
        store: RequestStore,
        price: Price | None,
        on_job_done: Callable[[RunStats], None] | None = None,
    ):
        self.config = config
        self.prompt = prompt
        self.backend = backend
        self.store = store
        self.price = price
        self.on_job_done = on_job_done
        self.stats = RunStats()
        self._format_key = f"response_format:{getattr(backend, 'base_url', backend.name)}:{backend.model}"
        self.format_level = self._initial_format_level()
        self._schema_format = response_format(prompt)
        self._paused_until = 0.0
        self._reserved = 0.0
        # Set whenever a request gives back its reservation, so requests waiting for budget look again.
        self._budget_freed = asyncio.Event()
        self._tokens_per_char = 1 / CHARS_PER_TOKEN

    def _initial_format_level(self) -> str:
        if self.prompt.free_text_reply:
            return "text"  # reasoning first, JSON last: a JSON response format would suppress the reasoning
        if self.config.response_format != "auto":
            return self.config.response_format
        remembered = self.store.meta(self._format_key)
        return remembered if remembered in RESPONSE_FORMATS else RESPONSE_FORMATS[0]

    # -- the run ------------------------------------------------------------------------------------------

    async def run(self, utterances: list[Utterance]) -> dict[str, list[SampleOutcome]]:
        started = time.perf_counter()
        outcomes: dict[str, list[SampleOutcome]] = {
            u.id: [SampleOutcome("pending") for _ in range(self.config.samples)] for u in utterances
        }
        jobs = ((u, s) for u in utterances for s in range(self.config.samples))
        workers = [asyncio.create_task(self._worker(jobs, outcomes)) for _ in range(self.config.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            self.stats.elapsed_s = time.perf_counter() - started
        return outcomes

    async def _worker(
        self, jobs: Iterator[tuple[Utterance, int]], outcomes: dict[str, list[SampleOutcome]]
    ) -> None:
        # One shared generator: the event loop is single-threaded, so next() never hands a job out twice.
        for utterance, sample in jobs:
            outcomes[utterance.id][sample] = await self._sample(utterance, sample)
            if self.on_job_done:
                self.on_job_done(self.stats)

    async def _sample(self, utterance: Utterance, sample: int) -> SampleOutcome:
        outcome = SampleOutcome("pending")
        try:
            reply = await self._request(utterance, sample, 0, utterance.messages, outcome)
            validation = validate_reply(reply.content, self.prompt, utterance.speaker)
            if not validation.ok and self.config.repair:
                self.stats.repairs += 1
                messages = repair_messages(
                    utterance.messages, reply.content, validation.error or "invalid answer"
                )
                reply = await self._request(utterance, sample, 1, messages, outcome)
                validation = validate_reply(reply.content, self.prompt, utterance.speaker)
                validation.flags.append("re_asked")
        except _OutOfBudget:
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
        if validation.ok:
            outcome.status = "ok"
            outcome.answer = validation.answer
            if reply.logprobs:
                outcome.confidence = label_confidence(reply.logprobs, self.prompt.labels)
        else:
            # Never a guessed label: the reply is kept for a human to read.
            outcome.status = "invalid"
            outcome.error = validation.error
            outcome.raw_reply = reply.content

    # -- one request ----------------------------------------------------------------------------------------

    async def _request(
        self,
        utterance: Utterance,
        sample: int,
        turn: int,
        messages: list[dict[str, str]],
        outcome: SampleOutcome,
    ) -> StoredReply:
        """The reply to `messages`, from the store if it was ever received, otherwise from the backend."""
        self.stats.requests += 1
        while True:
            level = self.format_level
            request = chat_request(self.config, self._schema_format, messages, sample, level)
            key, request_json = stored_key(self.backend.model, request, sample)
            stored = self.store.get(key)
            if stored is not None:
                self.stats.cached += 1
                self._account(outcome, stored.prompt_tokens, stored.completion_tokens, stored.cost_usd)
                return stored
            try:
                return await self._send(utterance, sample, turn, request, key, request_json, outcome)
            except ResponseFormatRejected as exc:
                self._fall_back(level, exc)

    def _fall_back(self, level: str, exc: ResponseFormatRejected) -> None:
        if self.format_level != level:
            return  # another worker already moved the run to a weaker format
        position = RESPONSE_FORMATS.index(level)
        if self.config.response_format != "auto" or position + 1 >= len(RESPONSE_FORMATS):
            raise BackendError(f"the server rejected response_format {level!r}: {exc}") from exc
        self.format_level = RESPONSE_FORMATS[position + 1]
        self.stats.format_fallbacks.append(f"{level} -> {self.format_level}")
        self.store.set_meta(self._format_key, self.format_level)

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
                await self._wait_for_pause()
                attempts += 1
                self.stats.sent += 1
                try:
                    reply = await self.backend.complete(request)
                except RetryableError as exc:
                    kind = exc.reason.split(":", 1)[0]
                    if attempts > self.config.max_retries:
                        self.stats.failed += 1
                        reason = f"gave up after {attempts} attempts: {exc.reason}"
                        self.store.put_failed(key, utterance_id=utterance.id, sample=sample, turn=turn,
                                              request_json=request_json, error=reason, attempts=attempts,
                                              started=started)  # fmt: skip
                        raise _GaveUp(reason) from exc
                    self.stats.retries[kind] += 1
                    await self._back_off(attempts, exc)
                    continue
                break
        finally:
            self._reserved -= reservation
            self._budget_freed.set()
        cost = self.price.cost(reply.prompt_tokens, reply.completion_tokens) if self.price else None
        self.store.put_done(key, utterance_id=utterance.id, sample=sample, turn=turn, request_json=request_json,
                            content=reply.content, finish_reason=reply.finish_reason, logprobs=reply.logprobs,
                            raw_response=reply.extra.get(RAW_RESPONSE),
                            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                            cost_usd=cost, attempts=attempts, started=started)  # fmt: skip
        self.stats.completed += 1
        self.stats.prompt_tokens += reply.prompt_tokens
        self.stats.completion_tokens += reply.completion_tokens
        self.stats.cost_usd = (
            None if cost is None or self.stats.cost_usd is None else self.stats.cost_usd + cost
        )
        if reply.prompt_tokens:
            chars = sum(len(m.get("content", "")) for m in request.messages)
            self._tokens_per_char = max(self._tokens_per_char, reply.prompt_tokens / max(chars, 1))
        self._account(outcome, reply.prompt_tokens, reply.completion_tokens, cost)
        return StoredReply(reply.content, reply.prompt_tokens, reply.completion_tokens, cost,
                           reply.finish_reason, reply.logprobs)  # fmt: skip

    @staticmethod
    def _account(
        outcome: SampleOutcome, prompt_tokens: int, completion_tokens: int, cost: float | None
    ) -> None:
        outcome.prompt_tokens += prompt_tokens
        outcome.completion_tokens += completion_tokens
        outcome.cost_usd = None if cost is None or outcome.cost_usd is None else outcome.cost_usd + cost

    async def _reserve(self, request: ChatRequest) -> float:
        """Hold back the most this request can cost. While requests in flight hold reservations that might free
        room, wait for them; stop the run only when the request cannot fit even with nothing in flight."""
        if self.config.max_cost is None or self.price is None:
            return 0.0
        chars = sum(len(m.get("content", "")) for m in request.messages)
        worst = self.price.cost(math.ceil(chars * self._tokens_per_char) + 16, request.max_tokens or 0)
        while True:
            if self.stats.stopped_by_budget:
                raise _OutOfBudget
            if (self.stats.cost_usd or 0.0) + self._reserved + worst <= self.config.max_cost:
                self._reserved += worst
                return worst
            if self._reserved <= 0:
                self.stats.stopped_by_budget = True
                raise _OutOfBudget
            self._budget_freed.clear()
            await self._budget_freed.wait()

    async def _wait_for_pause(self) -> None:
        while (delay := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def _back_off(self, attempt: int, exc: RetryableError) -> None:
        if exc.retry_after is not None:
            delay = min(exc.retry_after, self.config.backoff_max) + random.uniform(
                0, 0.1 * self.config.backoff_base
            )
        else:
            # Exponential with jitter, so many workers hit by one outage do not come back in lockstep.
            delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
        if exc.rate_limited:
            # The limit is the account's, not this request's: every worker waits.
            self._paused_until = max(self._paused_until, time.monotonic() + delay)
            await self._wait_for_pause()
        else:
            await asyncio.sleep(delay)


def aggregate(utterance_id: str, outcomes: list[SampleOutcome]) -> dict[str, Any]:
    """One output row from the samples of one utterance."""
    row: dict[str, Any] = {"id": utterance_id, **dict.fromkeys(ANSWER_FIELDS)}
    row["prompt_tokens"] = sum(o.prompt_tokens for o in outcomes)
    row["completion_tokens"] = sum(o.completion_tokens for o in outcomes)
    costs = [o.cost_usd for o in outcomes]
    row["cost_usd"] = None if any(c is None for c in costs) else sum(costs)  # type: ignore[arg-type]
    row.update(
        flags="", confidence=None, distribution=None, samples=0, agreement=None, error=None, raw_reply=None
    )
    valid = [o for o in outcomes if o.status == "ok"]
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

    labels = [o.answer["emotion"] for o in valid if o.answer]
    counts = Counter(labels)
    # Ties go to the label answered first, so the result does not depend on dictionary order.
    majority = max(counts, key=lambda label: (counts[label], -labels.index(label)))
    chosen = next(o for o in valid if o.answer and o.answer["emotion"] == majority)
    agreement = counts[majority] / len(valid)
    flags = list(chosen.flags)
    if len(valid) < len(outcomes):
        flags.append(f"invalid_samples:{len(outcomes) - len(valid)}")
    confidences = [o.confidence[majority] for o in valid if o.confidence and majority in o.confidence]
    if confidences:
        confidence: float | None = sum(confidences) / len(confidences)
    else:
        confidence = agreement if len(outcomes) > 1 else None
    row.update(chosen.answer or {})
    row.update(
        status="ok",
        flags=";".join(dict.fromkeys(flags)),
        confidence=confidence,
        distribution=json.dumps({label: counts[label] / len(valid) for label in sorted(counts)}),
        samples=len(valid),
        agreement=agreement,
    )
    return row
