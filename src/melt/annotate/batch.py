"""Annotation through OpenAI's Batch API: half the price, results within 24 hours, in the same run folder.

The engine (`melt.annotate.engine`) works as in a live run: it asks the store for every request, validates the
replies and re-asks. What the store lacks, `BatchDispatcher` takes instead of the backend: each request becomes a
line of a JSONL file whose `custom_id` is the store's request key and whose body is byte for byte what the live
backend would POST, so a reply from a batch and a live reply are interchangeable in the store. The sample stays
pending. A later invocation finds the batch ended, downloads its output and error files, matches their lines by
`custom_id` (their order means nothing), stores each reply as a live one would be stored (priced at the Batch
API's price), and the engine validates them; its re-asks become the next batch (or go live, `batch_repair`).

Nothing is paid twice. Every step is recorded in the store (`batches`, `batch_requests`) and committed before
the next call to the server: the intent with a local id and the request keys before the upload; the file's id as
soon as it is known; the batch's id likewise. A request whose reply is stored is never sent again, and a request
inside a batch that has not ended is not sent again, by batch or live. A process killed between two steps leaves
a record that the next one settles: a file uploaded but not recorded is found among the account's files by its
name (`melt-<local id>.jsonl`); a batch created but not recorded is found among the account's batches by its
`metadata` (the local id, and a hash of the folder's identity), and adopted instead of created again.

Every end is handled: `completed` (with or without an error file; with no output file at all), `failed` (the
server's validation errors become the requests' reason), `expired` (what completed is kept, and billed; the rest
is sent again, once per invocation), `cancelled` (what completed is kept). Error lines and unusable output lines
fail their requests with the reason, and the next invocation sends them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from melt.annotate.engine import Annotator, Outgoing, implausible_usage
from melt.annotate.store import RequestStore
from melt.errors import MeltError
from melt.llm.base import BackendError, ChatReply, ChatRequest, RequestFailed, RetryableError
from melt.llm.batch_api import CHAT_ENDPOINT, LIVE, TERMINAL, BatchAPI, Refused
from melt.llm.openai import MalformedReply, OpenAIBackend, parse_audio_tokens, parse_completion, parse_usage
from melt.llm.pricing import Price

#: Work files of the run folder's batches (input files before upload, result files while collected).
WORK_FOLDER = "batches"
#: The largest result file downloaded: replies with token logprobs run to ~30 kB each, 50,000 to a batch.
RESULTS_MAX_BYTES = 16 * 2**30
#: How far back the account's batches and files are searched for an orphan, before the record was made: the
#: server's clock may differ from this machine's.
_CLOCK_SLACK = 86_400.0
#: Local states of a batch: the intent is recorded (`prepared`), its file uploaded (`uploaded`), the batch created
#: (`submitted`), its results stored (`collected`), or given up before it was created (`abandoned`).
UNSETTLED = ("prepared", "uploaded")
#: What became of a request inside a batch.
_WAITING = "waiting"


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of the folder's identity, carried in each batch's metadata."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BatchRecord:
    """A row of the store's `batches` table."""

    local_id: str
    state: str
    status: str | None
    input_file_id: str | None
    batch_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    bytes: int
    counts: dict[str, int] | None
    errors: str | None
    #: attempts its creation took: after a failed one, the server may hold a second batch of the same requests
    create_attempts: int
    created: float
    updated: float

    @property
    def live(self) -> bool:
        """The server may still be working on it (or nobody knows yet)."""
        return self.state in (*UNSETTLED, "submitted")

    def to_json(self) -> dict[str, Any]:
        return {
            "local_id": self.local_id,
            "batch_id": self.batch_id,
            "state": self.state,
            "status": self.status,
            "requests": self.requests,
            "bytes": self.bytes,
            "request_counts": self.counts,
            "input_file_id": self.input_file_id,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "errors": self.errors,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
        }


_COLUMNS = (
    "local_id, state, status, input_file_id, batch_id, output_file_id, error_file_id, requests, bytes, counts, "
    "errors, create_attempts, created, updated"
)


def batch_records(store: RequestStore) -> list[BatchRecord]:
    rows = store.query(f"SELECT {_COLUMNS} FROM batches ORDER BY created, local_id")
    return [BatchRecord(*row[:9], _json_or_none(row[9]), *row[10:]) for row in rows]  # type: ignore[misc]


def live_request_keys(store: RequestStore) -> set[str]:
    """Keys of the requests inside batches that have not ended (or whose fate is not known yet)."""
    rows = store.query(
        "SELECT r.key FROM batch_requests r JOIN batches b USING (local_id) "
        "WHERE r.state = ? AND b.state IN ('prepared', 'uploaded', 'submitted')",
        (_WAITING,),
    )
    return {row[0] for row in rows}


def batch_totals(store: RequestStore) -> dict[str, Any]:
    """Requests of the folder answered through the Batch API, their tokens and cost (their own price)."""
    row = store.query(
        "SELECT COUNT(*), COALESCE(SUM(q.prompt_tokens), 0), COALESCE(SUM(q.completion_tokens), 0), "
        "SUM(q.cost_usd), COUNT(q.cost_usd) FROM requests q WHERE q.status = 'done' AND q.key IN "
        "(SELECT key FROM batch_requests WHERE state = 'done')"
    )[0]
    return {
        "requests": row[0],
        "prompt_tokens": row[1],
        "completion_tokens": row[2],
        "cost_usd": (row[3] or 0.0) if row[4] == row[0] else None,
    }


@dataclass
class BatchReport:
    """What this invocation did with batches."""

    submitted_requests: int = 0
    created: int = 0
    adopted: int = 0
    abandoned: int = 0
    cancelled: int = 0
    collected_batches: int = 0
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    failed_requests: int = 0
    expired_requests: int = 0
    cancelled_requests: int = 0
    polls: int = 0
    #: what collecting found wrong with the server's files (duplicate or unknown custom_ids, ...), and other
    #: things a user should know
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Result:
    state: Literal["done", "failed", "expired", "cancelled"]
    reason: str | None = None
    reply: ChatReply | None = None
    raw: str | None = None


class BatchSession:
    """The run folder's batches, for one invocation: settle, check, collect, submit, wait, cancel."""

    def __init__(
        self,
        store: RequestStore,
        backend: OpenAIBackend,
        config: Any,
        out_dir: Path,
        identity: dict[str, Any],
        price: Price | None,
        *,
        progress: bool = False,
    ):
        self.store = store
        self.backend = backend
        self.config = config
        self.work = Path(out_dir) / WORK_FOLDER
        self.identity = identity
        self.run_hash = identity_hash(identity)
        self.price = price
        self.progress = progress
        self.api = BatchAPI(
            backend,
            max_retries=config.max_retries,
            backoff_base=config.backoff_base,
            backoff_max=config.backoff_max,
        )
        self.report = BatchReport()
        #: requests collected from batches during this invocation that were not answered: key -> (state, why)
        self.unanswered_now: dict[str, tuple[str, str | None]] = {}
        #: keys sent again after an expiry during this invocation (once is enough)
        self.resent: set[str] = set()
        self._live_keys = live_request_keys(store)
        self._remove_stale_work_files()

    # -- what the folder holds -------------------------------------------------------------------------------

    def records(self) -> list[BatchRecord]:
        return batch_records(self.store)

    def live_records(self) -> list[BatchRecord]:
        return [r for r in self.records() if r.live]

    def is_live(self, key: str) -> bool:
        return key in self._live_keys

    def _keys_of(self, local_id: str) -> list[tuple[str, str, int, int, str | None]]:
        return self.store.query(  # type: ignore[return-value]
            "SELECT key, utterance_id, sample, turn, request FROM batch_requests WHERE local_id = ? AND state = ?",
            (local_id, _WAITING),
        )

    def _update(self, local_id: str, **values: Any) -> tuple[str, tuple[Any, ...]]:
        values["updated"] = time.time()
        columns = ", ".join(f"{name} = ?" for name in values)
        return f"UPDATE batches SET {columns} WHERE local_id = ?", (*values.values(), local_id)

    def _remove_stale_work_files(self) -> None:
        """Files a killed process left: input files (a batch whose upload was not recorded is looked for at the
        server, or given up; never uploaded again from here) and result files, downloaded again when needed.
        Called under the folder's lock."""
        if not self.work.is_dir():
            return
        for path in self.work.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()

    # -- settling what a killed process left -------------------------------------------------------------------

    async def settle(self, *, create: bool) -> None:
        """Resolve the batches whose creation was not recorded: adopt the file or batch the server has, create
        a batch for a recorded upload when `create`, give up the rest (their requests become free to send)."""
        for record in self.records():
            if record.state == "prepared":
                try:
                    found = await self._find_file(record)
                except BackendError as exc:  # a server that cannot list files: no batch was made of it anyway
                    self.report.notes.append(f"could not look for the file of batch {record.local_id}: {exc}")
                    found = None
                if found is None:
                    self._abandon(record, "the process stopped before its file was uploaded")
                    continue
                self.store.write_now([self._update(record.local_id, state="uploaded", input_file_id=found)])
                record.state, record.input_file_id = "uploaded", found
            if record.state == "uploaded":
                batch = await self._find_batch(record)
                if batch is not None:
                    self.report.adopted += 1
                    self._record_created(record, batch)
                elif create:
                    assert record.input_file_id is not None
                    # The killed process may have sent the creation, and the account's list may not show its
                    # batch yet: the checks of the one made now look for a second batch of the same requests.
                    record.create_attempts = max(record.create_attempts, 2)
                    self._record_created(record, await self._create(record, record.input_file_id))
                else:
                    self._abandon(record, "its file was uploaded, but no batch was created")

    def _abandon(self, record: BatchRecord, why: str) -> None:
        self.store.write_now(
            [
                self._update(record.local_id, state="abandoned", errors=why),
                ("UPDATE batch_requests SET state = 'abandoned' WHERE local_id = ? AND state = ?",
                 (record.local_id, _WAITING)),
            ]
        )  # fmt: skip
        for key, *_ in self._keys_of_any(record.local_id):
            self._live_keys.discard(key)
        with contextlib.suppress(OSError):
            (self.work / f"{record.local_id}.jsonl").unlink()
        self.report.abandoned += 1

    def _keys_of_any(self, local_id: str) -> list[tuple[Any, ...]]:
        return self.store.query("SELECT key FROM batch_requests WHERE local_id = ?", (local_id,))

    async def _find_file(self, record: BatchRecord) -> str | None:
        name = _file_name(record.local_id)
        async for item in self.api.files(since=record.created - _CLOCK_SLACK):
            if item.get("filename") == name and isinstance(item.get("id"), str):
                return item["id"]
        return None

    async def _find_batch(self, record: BatchRecord) -> dict[str, Any] | None:
        """The account's batch made from this record (the oldest, if a lost reply made two: the others are
        cancelled, since they would answer the same requests again)."""
        found = []
        async for item in self.api.batches(since=record.created - _CLOCK_SLACK):
            metadata = item.get("metadata")
            if isinstance(metadata, dict) and metadata.get("melt_batch") == record.local_id:
                found.append(item)
        if not found:
            return None
        found.sort(key=lambda b: (b.get("created_at") or 0, b.get("id")))
        for duplicate in found[1:]:
            if duplicate.get("status") in LIVE and duplicate["id"] != found[0]["id"]:
                await self.api.cancel(duplicate["id"])
                self.report.notes.append(
                    f"batch {duplicate['id']} repeated batch {found[0]['id']} (local {record.local_id}): cancelled"
                )
        return found[0]

    async def _cancel_duplicates(self, record: BatchRecord) -> None:
        """Cancel the account's other batches made from this record (a creation whose reply was lost, which the
        account's list did not show yet when it was tried again), while they are in progress."""
        async for item in self.api.batches(since=record.created - _CLOCK_SLACK):
            metadata = item.get("metadata")
            if (
                isinstance(metadata, dict)
                and metadata.get("melt_batch") == record.local_id
                and item["id"] != record.batch_id
                and item.get("status") in LIVE
                and item.get("status") != "cancelling"
            ):
                await self.api.cancel(item["id"])
                self.report.notes.append(
                    f"batch {item['id']} repeated batch {record.batch_id} (local {record.local_id}): cancelled"
                )

    async def _create(self, record: BatchRecord, file_id: str) -> dict[str, Any]:
        """Create the batch of an uploaded file. When the reply is lost (a timeout, a dropped connection, a
        5xx), the batch may exist all the same: it is looked for before creating again (and, should the server's
        list have missed it, a second one is cancelled later: `_cancel_duplicates`)."""
        metadata = {"melt_batch": record.local_id, "melt_run": self.run_hash}
        for attempt in range(1, self.config.max_retries + 2):
            try:
                batch = await self.api.create(file_id, metadata)
            except Refused as exc:
                # Nothing was created: its requests are free for another batch (a rerun takes them again).
                self._abandon(record, str(exc))
                raise
            except RetryableError as exc:
                if attempt > self.config.max_retries:
                    raise BackendError(
                        f"creating a batch failed after {attempt} attempts: {exc.reason}"
                    ) from exc
                delay = exc.retry_after
                if delay is None:
                    delay = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
                    delay *= random.uniform(0.5, 1)
                await asyncio.sleep(min(delay, self.config.backoff_max))
                record.create_attempts = attempt + 1
                found = await self._find_batch(record)
                if found is not None:
                    return found
                continue
            self.report.created += 1
            return batch
        raise AssertionError("unreachable")

    def _record_created(self, record: BatchRecord, batch: dict[str, Any]) -> None:
        self.store.write_now(
            [
                self._update(
                    record.local_id,
                    state="submitted",
                    batch_id=batch["id"],
                    status=batch["status"],
                    counts=_counts_json(batch),
                    create_attempts=record.create_attempts,
                )
            ]
        )
        record.state, record.batch_id, record.status = "submitted", batch["id"], batch["status"]

    # -- checking and collecting -------------------------------------------------------------------------------

    async def refresh(self) -> int:
        """Check every batch in progress; collect those that ended. Returns how many ended."""
        ended = 0
        for record in self.records():
            if record.state != "submitted":
                continue
            assert record.batch_id is not None
            if record.create_attempts > 1:
                await self._cancel_duplicates(record)
            batch = await self.api.retrieve(record.batch_id)
            self.report.polls += 1
            status = batch["status"]
            self.store.write_now(
                [
                    self._update(
                        record.local_id,
                        status=status,
                        counts=_counts_json(batch),
                        output_file_id=_str_or_none(batch.get("output_file_id")),
                        error_file_id=_str_or_none(batch.get("error_file_id")),
                    )
                ]
            )
            if status in TERMINAL:
                await self._collect(record, batch)
                ended += 1
        return ended

    async def _collect(self, record: BatchRecord, batch: dict[str, Any]) -> None:
        """Download the output and error files of an ended batch and store what they say of each request,
        all in one transaction (a process killed meanwhile collects the batch again next time)."""
        status = batch["status"]
        waiting = {row[0]: row for row in self._keys_of(record.local_id)}
        results: dict[str, _Result] = {}
        problems: Counter[str] = Counter()
        self.work.mkdir(parents=True, exist_ok=True)
        for kind in ("output_file_id", "error_file_id"):
            file_id = batch.get(kind)
            if not isinstance(file_id, str) or not file_id:
                continue
            path = self.work / f"{record.local_id}.{kind.split('_')[0]}.part"
            try:
                await self.api.download(file_id, path, max_bytes=RESULTS_MAX_BYTES)
                for number, line in _lines(path):
                    self._read_line(line, number, waiting, results, problems)
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
        state, reason = _why_missing(status, batch)
        why_missing = (state, self.backend.scrub(reason))
        statements = []
        tally: Counter[str] = Counter()
        with self.store.atomic():
            for key, (_, utterance_id, sample, turn, request_json) in waiting.items():
                result = results.get(key)
                if result is None:
                    state, reason = why_missing
                    result = _Result(state, reason)  # type: ignore[arg-type]
                if result.state == "done" and request_json is not None:
                    result = self._checked_reply(result, request_json)
                tally[result.state] += 1
                self._store_result(key, utterance_id, sample, turn, request_json, result, record.created)
            errors = _batch_errors(batch)
            errors = self.backend.scrub(errors) if errors else None
            notes = [f"{n} {problem}" for problem, n in sorted(problems.items())]
            if notes:
                self.report.notes.append(f"batch {record.batch_id}: " + "; ".join(notes))
            statements.append(
                self._update(
                    record.local_id,
                    state="collected",
                    status=status,
                    counts=_counts_json(batch),
                    output_file_id=_str_or_none(batch.get("output_file_id")),
                    error_file_id=_str_or_none(batch.get("error_file_id")),
                    errors="; ".join([*([errors] if errors else []), *notes]) or None,
                )
            )
            for sql, parameters in statements:
                self.store.write(sql, parameters)
        for key in waiting:
            self._live_keys.discard(key)
        self.report.collected_batches += 1
        self.report.failed_requests += tally["failed"]
        self.report.expired_requests += tally["expired"]
        self.report.cancelled_requests += tally["cancelled"]

    def _read_line(
        self,
        line: bytes,
        number: int,
        waiting: dict[str, Any],
        results: dict[str, _Result],
        problems: Counter[str],
    ) -> None:
        text = self.backend.scrub_exact(line.decode("utf-8", "replace"))
        try:
            item, exact = _loads(text)
        except ValueError:
            problems["lines that are not JSON"] += 1
            return
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            problems["lines without a custom_id"] += 1
            return
        key = item["custom_id"]
        if key not in waiting:
            problems["lines with a custom_id not in the batch"] += 1
            return
        result = _result_of(item, exact)
        if result.reason is not None:
            result.reason = self.backend.scrub(result.reason)
        earlier = results.get(key)
        if earlier is not None:
            problems["repeated custom_ids (the first answer kept)"] += 1
            if earlier.state == "done" or result.state != "done":
                return
        results[key] = result

    def _checked_reply(self, result: _Result, request_json: str) -> _Result:
        assert result.reply is not None
        fields = _loads(request_json)[0]
        fields["messages"] = tuple(fields.get("messages") or ())
        try:
            request = ChatRequest(**fields)
        except TypeError:
            return result
        absurd = implausible_usage(request, result.reply)
        return _Result("failed", absurd) if absurd else result

    def _store_result(
        self,
        key: str,
        utterance_id: str,
        sample: int,
        turn: int,
        request_json: str | None,
        result: _Result,
        started: float,
    ) -> None:
        done = self.store.has(key)  # answered meanwhile (never happens by design; never overwritten either)
        if result.state == "done" and not done and request_json is not None:
            reply = result.reply
            assert reply is not None
            cost = (
                self.price.cost(reply.prompt_tokens, reply.completion_tokens, reply.audio_prompt_tokens)
                if self.price
                else None
            )
            self.store.put_done(key, utterance_id=utterance_id, sample=sample, turn=turn,
                                request_json=request_json, content=reply.content,
                                finish_reason=reply.finish_reason, logprobs=reply.logprobs, raw_response=result.raw,
                                prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                                cost_usd=cost, attempts=1, started=started)  # fmt: skip
            self.report.replies += 1
            self.report.prompt_tokens += reply.prompt_tokens
            self.report.completion_tokens += reply.completion_tokens
            self.report.cost_usd = (
                None if cost is None or self.report.cost_usd is None else self.report.cost_usd + cost
            )
            state, error = "done", None
        elif result.state == "failed" and not done and request_json is not None:
            self.store.put_failed(key, utterance_id=utterance_id, sample=sample, turn=turn,
                                  request_json=request_json, error=f"batch: {result.reason}", attempts=1,
                                  started=started)  # fmt: skip
            state, error = "failed", result.reason
        else:
            state, error = result.state, result.reason
        if state != "done":
            self.unanswered_now[key] = (state, error)
        self.store.write(
            "UPDATE batch_requests SET state = ?, error = ?, request = CASE WHEN ? THEN NULL ELSE request END "
            "WHERE key = ? AND state = ?",
            (state, error, state == "done", key, _WAITING),
        )

    # -- submitting --------------------------------------------------------------------------------------------

    async def submit(self, taken: list[tuple[Outgoing, bytes]], annotator: Annotator | None = None) -> None:
        """Send `taken` as batches: split into files of at most `batch_max_requests` lines and
        `batch_max_bytes`, each recorded, uploaded and created in turn. Stops between files when the run
        stops (`annotator.stopping`)."""
        self.work.mkdir(parents=True, exist_ok=True)
        for chunk in self._split(taken):
            if annotator is not None and annotator.stopping:
                break
            local_id = uuid.uuid4().hex
            path = self.work / f"{local_id}.jsonl"
            size = _write_lines(path, (line for _, line in chunk))
            now = time.time()
            statements: list[tuple[str, tuple[Any, ...]]] = [
                (
                    "INSERT INTO batches (local_id, state, requests, bytes, created, updated) "
                    "VALUES (?, 'prepared', ?, ?, ?, ?)",
                    (local_id, len(chunk), size, now, now),
                )
            ]
            statements += [
                (
                    "INSERT INTO batch_requests (local_id, key, utterance_id, sample, turn, request, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (local_id, o.key, o.utterance.id, o.sample, o.turn, o.request_json, _WAITING),
                )
                for o, _ in chunk
            ]
            self.store.write_now(statements)
            self._live_keys.update(o.key for o, _ in chunk)
            record = BatchRecord(local_id, "prepared", None, None, None, None, None, len(chunk), size, None,
                                 None, 1, now, now)  # fmt: skip
            uploaded = await self.api.upload(path, _file_name(local_id))
            file_id = uploaded.get("id")
            if not isinstance(file_id, str):
                raise BackendError("uploading a batch file: the server's reply has no file id")
            self.store.write_now([self._update(local_id, state="uploaded", input_file_id=file_id)])
            with contextlib.suppress(OSError):
                path.unlink()
            self._record_created(record, await self._create(record, file_id))
            self.report.submitted_requests += len(chunk)

    def _split(self, taken: list[tuple[Outgoing, bytes]]) -> Iterator[list[tuple[Outgoing, bytes]]]:
        chunk: list[tuple[Outgoing, bytes]] = []
        size = 0
        for outgoing, line in taken:
            if chunk and (
                len(chunk) >= self.config.batch_max_requests or size + len(line) > self.config.batch_max_bytes
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append((outgoing, line))
            size += len(line)
        if chunk:
            yield chunk

    def too_large(self, outgoing: Outgoing, size: int) -> str:
        """Fail a request whose line cannot fit in a batch file; the reason."""
        reason = (
            f"the request's line takes {size} bytes, more than a batch file may hold "
            f"(batch_max_bytes {self.config.batch_max_bytes})"
        )
        self.store.put_failed(outgoing.key, utterance_id=outgoing.utterance.id, sample=outgoing.sample,
                              turn=outgoing.turn, request_json=outgoing.request_json, error=f"batch: {reason}",
                              attempts=0, started=time.time())  # fmt: skip
        self.unanswered_now[outgoing.key] = ("failed", reason)
        self.report.failed_requests += 1
        return reason

    # -- waiting and cancelling --------------------------------------------------------------------------------

    async def wait(self, annotator: Annotator) -> bool:
        """Check the batches in progress, less and less often (`batch_poll` doubling up to `batch_poll_max`),
        until one of them ends. False when the run stopped meanwhile (a signal)."""
        delay = self.config.batch_poll
        with self._display() as show:
            while True:
                show(self.live_records(), time.time() + delay)
                if not await annotator.pause(delay):
                    return False
                if await self.refresh() or not self.live_records():
                    return True
                delay = min(delay * 2, self.config.batch_poll_max)

    async def cancel(self, *, wait: bool) -> list[BatchRecord]:
        """Cancel every batch in progress (a batch whose creation was never recorded is looked for first, and
        one that was never created is given up). With `wait`, wait until they have ended and collect what they
        completed. The batches cancelled."""
        await self.settle(create=False)
        await self.refresh()
        cancelled = []
        for record in self.records():
            if record.state != "submitted" or record.status not in LIVE or record.status == "cancelling":
                continue
            assert record.batch_id is not None
            try:
                batch = await self.api.cancel(record.batch_id)
            except BackendError:
                batch = await self.api.retrieve(record.batch_id)  # it ended meanwhile: nothing to cancel
                if batch["status"] not in LIVE:
                    continue
                raise
            self.store.write_now(
                [self._update(record.local_id, status=batch["status"], counts=_counts_json(batch))]
            )
            self.report.cancelled += 1
            cancelled.append(record)
        await self.refresh()
        if wait:
            delay = min(self.config.batch_poll, 5.0)
            with self._display() as show:
                while self.live_records():
                    show(self.live_records(), time.time() + delay)
                    await asyncio.sleep(delay)
                    await self.refresh()
                    delay = min(delay * 2, self.config.batch_poll_max)
        return cancelled

    @contextlib.contextmanager
    def _display(self) -> Iterator[Any]:
        """A progress display of the batches in progress (on stderr), or nothing without `progress`."""
        if not self.progress:
            yield lambda records, next_check: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("[bold]batches"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
            task = bar.add_task("batches", total=None, status="")

            def show(records: list[BatchRecord], next_check: float) -> None:
                total = sum((r.counts or {}).get("total") or r.requests for r in records)
                done = sum(
                    (r.counts or {}).get("completed", 0) + (r.counts or {}).get("failed", 0) for r in records
                )
                statuses = Counter(r.status or r.state for r in records)
                shown = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
                at = datetime.fromtimestamp(next_check).strftime("%H:%M:%S")
                bar.update(task, total=max(total, 1), completed=done, status=f"{shown}; next check {at}")

            yield show


# -- the engine's dispatcher -----------------------------------------------------------------------------------


class BatchDispatcher:
    """Where each request the store lacks goes, for one pass of the engine over the utterances (see
    `melt.annotate.engine.Dispatcher`). With `batch`, new requests are taken into the next batches (re-asks too,
    unless `repair` is "live"); without, they are sent live. Either way, a request inside a batch in progress
    waits for it; a request that failed in a batch collected by this invocation is failed (with `batch`; a live
    run sends it) and one that expired is sent again once."""

    def __init__(self, session: BatchSession, *, batch: bool, repair: str, price: Price | None):
        self.session = session
        self.batch = batch
        self.repair = repair
        self.price = price
        #: what this pass takes: key -> (request, its line in a batch file)
        self.taken: dict[str, tuple[Outgoing, bytes]] = {}
        self._lines: dict[str, bytes] = {}

    def route(self, outgoing: Outgoing) -> Literal["send", "take", "hold"]:
        key = outgoing.key
        if self.session.is_live(key) or key in self.taken:
            return "hold"
        unanswered = self.session.unanswered_now.get(key)
        if unanswered is not None and self.batch:
            state, reason = unanswered
            if state == "failed":
                raise RequestFailed(f"batch: {reason}")
            if state == "cancelled" or key in self.session.resent:
                return "hold"  # a rerun sends it again
        if not self.batch or (outgoing.turn > 0 and self.repair == "live"):
            return "send"
        line = batch_line(key, self.session.backend.encoded_body(outgoing.request))
        if len(line) > self.session.config.batch_max_bytes:
            raise RequestFailed(f"batch: {self.session.too_large(outgoing, len(line))}")
        self._lines[key] = line
        return "take"

    def take(self, outgoing: Outgoing) -> None:
        self.taken[outgoing.key] = (outgoing, self._lines.pop(outgoing.key))
        if outgoing.key in self.session.unanswered_now:
            self.session.resent.add(outgoing.key)


async def annotate_in_batches(
    session: BatchSession,
    annotator: Annotator,
    annotate: Callable[[], Awaitable[dict[str, list[Any]]]],
) -> dict[str, list[Any]]:
    """The engine's passes over the utterances (`annotate()`), with the folder's batches: settle what a killed
    process left, collect the batches that ended, let the engine take what the store lacks, submit it. With
    `batch_wait`, wait for a batch to end and pass again, until no batch is in progress. A failure of the Batch
    API after the first pass stops the run as a failure of the backend does (`annotator.fatal`), so the tables
    are still written."""
    config = session.config
    await session.settle(create=config.batch)
    if session.live_records():
        await session.refresh()
    outcomes = None
    while True:
        try:
            dispatcher = BatchDispatcher(
                session, batch=config.batch, repair=config.batch_repair, price=session.price
            )
            annotator.dispatch = dispatcher
            stats = annotator.stats
            # Each pass looks at every request again: these describe the last one.
            stats.requests = stats.cached = stats.repairs = stats.deferred = 0
            outcomes = await annotate()
            if annotator.stopping or annotator.fatal is not None:
                break
            if dispatcher.taken:
                await session.submit(list(dispatcher.taken.values()), annotator)
            if not config.batch_wait or not session.live_records() or not await session.wait(annotator):
                break
        except (MeltError, OSError) as exc:
            if outcomes is None:
                raise
            if isinstance(exc, OSError):
                exc = MeltError(
                    f"cannot write the batch's work files: {exc.strerror or exc}", file=session.work
                )
            annotator.stop(str(exc), fatal=exc, grace=0)
            break
    return outcomes


def batch_summary(store: RequestStore, config: Any, report: BatchReport | None) -> dict[str, Any] | None:
    """run.json's "batch": the folder's batches, the requests they answered, and what this invocation did."""
    records = batch_records(store)
    if report is None and not records:
        return None
    in_progress = [r for r in records if r.live]
    return {
        "mode": "batch" if config.batch else "live",
        "repair": config.batch_repair,
        "wait": config.batch_wait,
        "in_progress": len(in_progress),
        "requests_in_progress": sum(r.requests for r in in_progress),
        "answered_by_batch": batch_totals(store),
        "this_invocation": report.to_json() if report is not None else None,
        "batches": [r.to_json() for r in records],
    }


# -- lines -------------------------------------------------------------------------------------------------------


def batch_line(key: str, body: bytes) -> bytes:
    """One line of a batch file: the body's bytes as they are, so the server gets exactly what a live request
    would have POSTed."""
    head = json.dumps({"custom_id": key, "method": "POST", "url": CHAT_ENDPOINT}, separators=(",", ":"))
    return head[:-1].encode() + b',"body":' + body + b"}\n"


def _loads(text: str) -> tuple[Any, bool]:
    """(the JSON value, whether orjson read it). orjson reads a reply with logprobs several times faster than
    json; json takes what orjson refuses (NaN, -Infinity: some servers' logprobs of impossible tokens)."""
    try:
        return orjson.loads(text), True
    except orjson.JSONDecodeError:
        return json.loads(text), False


def _write_lines(path: Path, lines: Iterator[bytes]) -> int:
    size = 0
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as out:
        for line in lines:
            out.write(line)
            size += len(line)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    return size


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def _result_of(item: dict[str, Any], exact: bool = True) -> _Result:
    """What one line of an output or error file says of its request (`exact`: orjson read it, and writes it
    again as it was; otherwise json does, keeping its NaN)."""
    response = item.get("response")
    error = item.get("error")
    if isinstance(response, dict) and response.get("status_code") == 200:
        body = response.get("body")
        try:
            content, finish_reason, logprobs = parse_completion(body)
            prompt_tokens, completion_tokens = parse_usage(body)
        except MalformedReply as exc:
            return _Result("failed", f"{exc.reason} (in the batch's output)")
        audio_tokens = min(parse_audio_tokens(body), prompt_tokens)
        reply = ChatReply(
            content,
            prompt_tokens,
            completion_tokens,
            finish_reason,
            logprobs,
            audio_prompt_tokens=audio_tokens,
        )
        raw = orjson.dumps(body).decode() if exact else json.dumps(body, ensure_ascii=False)
        return _Result("done", reply=reply, raw=raw)
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = " ".join(str(error.get("message") or "").split())[:300]
        if code == "batch_expired":
            return _Result("expired", f"{code}: {message}")
        if code == "batch_cancelled":
            return _Result("cancelled", f"{code}: {message}")
        return _Result("failed", f"{code}: {message}")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        detail = body.get("error") if isinstance(body, dict) else body
        if isinstance(detail, dict):
            detail = detail.get("message")
        return _Result("failed", f"HTTP {status}: {' '.join(str(detail or '').split())[:300]}")
    return _Result("failed", "a line with neither a response nor an error")


def _why_missing(status: str, batch: dict[str, Any]) -> tuple[str, str]:
    """What became of a request of an ended batch that neither of its files mentions."""
    if status == "failed":
        return "failed", f"the batch failed: {_batch_errors(batch) or 'no reason given'}"
    if status == "expired":
        return "expired", "the batch expired before this request was done"
    if status == "cancelled":
        return "cancelled", "the batch was cancelled before this request was done"
    return "failed", f"the batch ended ({status}) without a result for this request"


def _batch_errors(batch: dict[str, Any]) -> str | None:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else errors
    if not isinstance(data, list) or not data:
        return None
    shown = []
    for error in data[:5]:
        if not isinstance(error, dict):
            continue
        line = f" (line {error['line']})" if error.get("line") is not None else ""
        shown.append(
            f"{error.get('code') or 'error'}: {' '.join(str(error.get('message') or '').split())[:200]}{line}"
        )
    more = f"; and {len(data) - 5} more" if len(data) > 5 else ""
    return "; ".join(shown) + more


def _file_name(local_id: str) -> str:
    return f"melt-{local_id}.jsonl"


def _counts_json(batch: dict[str, Any]) -> str | None:
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return None
    clean = {k: int(v) for k, v in counts.items() if isinstance(v, int | float) and math.isfinite(v)}
    return json.dumps(clean, sort_keys=True)


def _json_or_none(text: str | None) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def require_openai(backend: Any) -> OpenAIBackend:
    if not isinstance(backend, OpenAIBackend):
        raise MeltError(
            "--batch needs an OpenAI-compatible server with the Batch API (OpenAI: an API key, or --base-url); "
            f"this run's backend is {getattr(backend, 'name', type(backend).__name__)!r}"
        )
    return backend
