"""The run's memory: every finished request and its reply, in SQLite, keyed by what determines the reply.

A request is written once its reply is in (or once it has definitely failed). Inside an event loop, writes
are committed together at most `COMMIT_DELAY` seconds later (one commit per write would cost more CPU than
the request at high concurrency); outside one, at once. WAL mode with `synchronous=NORMAL` keeps a commit
durable against the process being killed (only an OS crash or power loss can lose the last commits). So a
rerun finds every reply it already paid for, and a `kill -9` loses only the requests in flight and the
replies of the last few milliseconds.

Requests sent through OpenAI's Batch API are recorded in `batches` and `batch_requests` before each step that
depends on them (see `melt.annotate.batch`); their replies go into `requests` like any other.

A write or commit that fails (a full disk, a folder made read-only) is never lost in a timer callback: the
store keeps the error as `failure`, calls `on_failure` (the engine stops sending at once), and every later
write raises it. A stored reply that no longer parses is marked failed and reported missing, so it is asked
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from melt.errors import MeltError
from melt.llm.base import stored_form
from melt.llm.openai import MalformedReply, parse_completion

STORE_NAME = "requests.sqlite"
COMMIT_DELAY = 0.005

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    utterance_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    request TEXT NOT NULL,
    reply TEXT,
    status TEXT NOT NULL,
    error TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL,
    attempts INTEGER NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_utterance ON requests (utterance_id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    local_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status TEXT,
    input_file_id TEXT,
    batch_id TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    requests INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    counts TEXT,
    errors TEXT,
    create_attempts INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_requests (
    local_id TEXT NOT NULL,
    key TEXT NOT NULL,
    utterance_id TEXT NOT NULL,
    sample INTEGER NOT NULL,
    turn INTEGER NOT NULL,
    request TEXT,
    state TEXT NOT NULL,
    error TEXT,
    PRIMARY KEY (local_id, key)
);
CREATE INDEX IF NOT EXISTS batch_requests_by_key ON batch_requests (key);
"""


def request_key(model: str, request: dict[str, Any], sample: int) -> tuple[str, str]:
    """(key, canonical request JSON). The key covers everything that decides the reply: the model, the
    messages, every parameter and the sample index (so N samples of one prompt, or N annotators of a panel, are
    N distinct requests). Audio parts are in it as their sha256 and segment (`AudioPart.stored`), not their data."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=stored_form)
    digest = hashlib.sha256(f"{model}\n{sample}\n{text}".encode()).hexdigest()
    return digest, text


@dataclass(frozen=True)
class StoredReply:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    finish_reason: str | None
    logprobs: list[dict[str, Any]] | None


class StoreWriteError(MeltError):
    """The store could not keep a reply: the run must stop before it pays for more."""


class RequestStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise MeltError(f"not a usable request store ({exc})", file=self.path) from exc
        self._commit_timer: asyncio.TimerHandle | None = None
        self._holding = False
        #: the first failed write, after which the store takes no more
        self.failure: StoreWriteError | None = None
        #: called once, with the error, when a write or commit fails
        self.on_failure: Callable[[StoreWriteError], None] | None = None

    def get(self, key: str) -> StoredReply | None:
        """The finished reply of `key`, or None when it was never answered (failed requests are resent) or its
        stored reply no longer parses (then it is marked failed, with the reason, and asked again)."""
        row = self._db.execute(
            "SELECT reply, prompt_tokens, completion_tokens, cost_usd FROM requests WHERE key = ? AND status = 'done'",
            (key,),
        ).fetchone()
        if row is None:
            return None
        try:
            reply = _loads(row[0])
            if isinstance(reply, dict) and "choices" in reply:  # a chat completion as the server sent it
                content, finish_reason, logprobs = parse_completion(reply)
            elif isinstance(reply, dict) and isinstance(reply.get("content"), str):
                content, finish_reason, logprobs = (
                    reply["content"],
                    reply.get("finish_reason"),
                    reply.get("logprobs"),
                )
            else:
                raise MalformedReply("neither a chat completion nor a stored answer")
        except (ValueError, TypeError, MalformedReply) as exc:
            reason = exc.reason if isinstance(exc, MalformedReply) else f"not JSON ({exc})"
            self._write(
                "UPDATE requests SET status = 'failed', error = ? WHERE key = ?",
                (f"the stored reply no longer parses: {reason}", key),
            )
            return None
        return StoredReply(
            content=content,
            prompt_tokens=row[1],
            completion_tokens=row[2],
            cost_usd=row[3],
            finish_reason=finish_reason,
            logprobs=logprobs if isinstance(logprobs, list) else None,
        )

    def has_replies(self) -> bool:
        """Whether any reply was ever stored here, or any batch sent from here (a folder with neither has
        nothing to protect)."""
        query = (
            "SELECT 1 FROM requests WHERE status = 'done' "
            "UNION ALL SELECT 1 FROM batches WHERE state != 'abandoned' LIMIT 1"
        )
        return self._db.execute(query).fetchone() is not None

    def query(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, parameters).fetchall()

    def write(self, sql: str, parameters: tuple[Any, ...] = ()) -> None:
        """One write, committed like a reply (or when the `atomic` block it is in ends)."""
        self._write(sql, parameters)

    def write_now(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run `statements` and commit them before returning: for records a later step relies on (a batch's
        ids, recorded before the next call to the server)."""
        with self.atomic():
            for sql, parameters in statements:
                self._write(sql, parameters)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """The writes of the block are committed together, at once, when it ends; none of them if it raises
        (writes made before the block are committed first)."""
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self.commit()
        if self.failure is not None:
            raise self.failure
        self._holding = True
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise
        finally:
            self._holding = False
        self.commit()
        if self.failure is not None:
            raise self.failure

    def has(self, key: str) -> bool:
        query = "SELECT 1 FROM requests WHERE key = ? AND status = 'done'"
        return self._db.execute(query, (key,)).fetchone() is not None

    def put_done(
        self,
        key: str,
        *,
        utterance_id: str,
        sample: int,
        turn: int,
        request_json: str,
        content: str,
        finish_reason: str | None,
        logprobs: list[dict[str, Any]] | None,
        raw_response: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float | None,
        attempts: int,
        started: float,
    ) -> None:
        """Record a reply: the server's response body as received when the backend passes it on (encoding the
        reply again would cost more CPU than the rest of the request's bookkeeping), else its parts."""
        reply = raw_response or json.dumps(
            {"content": content, "finish_reason": finish_reason, "logprobs": compact_logprobs(logprobs)},
            ensure_ascii=False,
        )
        self._put(key, utterance_id, sample, turn, request_json, reply, "done", None,
                  prompt_tokens, completion_tokens, cost_usd, attempts, started)  # fmt: skip

    def put_failed(
        self, key: str, *, utterance_id: str, sample: int, turn: int, request_json: str, error: str,
        attempts: int, started: float, prompt_tokens: int = 0, completion_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> None:  # fmt: skip
        """Record a request that failed, with what the server billed for it when it said."""
        self._put(key, utterance_id, sample, turn, request_json, None, "failed", error,
                  prompt_tokens, completion_tokens, cost_usd, attempts, started)  # fmt: skip

    def _put(self, *values: Any) -> None:
        self._write(
            "INSERT OR REPLACE INTO requests (key, utterance_id, sample, turn, request, reply, status, error, "
            "prompt_tokens, completion_tokens, cost_usd, attempts, started, finished) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, time.time()),
        )

    def _write(self, sql: str, parameters: tuple[Any, ...]) -> None:
        """One write, committed with the others of the next few milliseconds (at once outside an event loop);
        raises `StoreWriteError` once any write or commit has failed."""
        if self.failure is not None:
            raise self.failure
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN")
            self._db.execute(sql, parameters)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc
        if self._holding:
            return  # committed when the `atomic` block ends
        if self._commit_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.commit()
                if self.failure is not None:
                    raise self.failure from None
                return
            self._commit_timer = loop.call_later(COMMIT_DELAY, self.commit)

    def commit(self) -> None:
        """Commit the writes so far. Called from a timer: a failure is kept and reported, never raised."""
        self._commit_timer = None
        if self.failure is not None:
            return
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(exc)

    def _fail(self, exc: sqlite3.Error) -> StoreWriteError:
        if self.failure is None:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self.failure = StoreWriteError(
                f"cannot write the request store ({exc}): the run stopped and sent nothing more; replies stored "
                "before are kept: free some space (or make the folder writable) and rerun",
                file=self.path,
            )
            if self.on_failure is not None:
                self.on_failure(self.failure)
        return self.failure

    def meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def meta_json(self, name: str) -> Any:
        """A meta value written by `set_meta_json`; None when absent or unreadable."""
        text = self.meta(name)
        try:
            return None if text is None else json.loads(text)
        except ValueError:
            return None

    def set_meta(self, name: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
        self.commit()
        if self.failure is not None:
            raise self.failure

    def set_meta_json(self, name: str, value: Any) -> None:
        self.set_meta(name, json.dumps(value, sort_keys=True, ensure_ascii=False))

    def totals(self) -> dict[str, Any]:
        """Requests, tokens and cost of every finished request in the store, over all invocations. `requests`
        counts the utterances' requests, `probes` the tiny requests that found a server's answer format (turn
        -1); tokens and cost include both, since both were paid for."""
        # Failed requests count with what the server billed for them (a reply that was no chat completion).
        row = self._db.execute(
            "SELECT COALESCE(SUM(status = 'done'), 0), COALESCE(SUM(prompt_tokens), 0), "
            "COALESCE(SUM(completion_tokens), 0), SUM(cost_usd), "
            "COALESCE(SUM(status = 'done' AND cost_usd IS NULL), 0), COALESCE(SUM(status = 'done' AND turn < 0), 0) "
            "FROM requests"
        ).fetchone()
        return {
            "requests": row[0] - row[5],
            "probes": row[5],
            "prompt_tokens": row[1],
            "completion_tokens": row[2],
            # Unknown only when some finished request has no price; nothing finished yet costs 0.
            "cost_usd": (row[3] or 0.0) if row[4] == 0 else None,
        }

    def mean_completion_tokens(self) -> float | None:
        row = self._db.execute(
            "SELECT AVG(completion_tokens) FROM requests WHERE status = 'done' AND turn >= 0"
        ).fetchone()
        return row[0]

    def close(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self.commit()
        with contextlib.suppress(sqlite3.Error):
            self._db.close()


def _loads(text: str) -> Any:
    """orjson reads a stored reply with logprobs several times faster than json (a rerun reads them all); json
    takes what orjson refuses (NaN, -Infinity)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def compact_logprobs(logprobs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI's token logprobs without their `bytes` arrays, which repeat each token as UTF-8 byte values and
    would make up most of the stored reply."""
    if not logprobs or not all(isinstance(item, dict) for item in logprobs):
        return None if logprobs else logprobs
    return [
        {
            "token": item.get("token"),
            "logprob": item.get("logprob"),
            "top_logprobs": [
                {"token": alt.get("token"), "logprob": alt.get("logprob")}
                for alt in (item.get("top_logprobs") if isinstance(item.get("top_logprobs"), list) else ())
                if isinstance(alt, dict)
            ],
        }
        for item in logprobs
    ]
