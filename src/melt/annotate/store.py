"""The run's memory: every finished request and its reply, in SQLite, keyed by what determines the reply.

A request is written once its reply is in (or once it has definitely failed). Inside an event loop, writes
are committed together at most `COMMIT_DELAY` seconds later (one commit per write would cost more CPU than
the request at high concurrency); outside one, at once. WAL mode with `synchronous=NORMAL` keeps a commit
durable against the process being killed (only an OS crash or power loss can lose the last commits). So a
rerun finds every reply it already paid for, and a `kill -9` loses only the requests in flight and the
replies of the last few milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melt.errors import MeltError

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
"""


def request_key(model: str, request: dict[str, Any], sample: int) -> tuple[str, str]:
    """(key, canonical request JSON). The key covers everything that decides the reply: the model, the
    messages, every parameter and the sample index (so N samples of one prompt are N distinct requests)."""
    text = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
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


class RequestStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise MeltError(f"not a usable request store ({exc})", file=self.path) from exc
        self._commit_timer: asyncio.TimerHandle | None = None

    def get(self, key: str) -> StoredReply | None:
        """The finished reply of `key`, or None when it was never answered (failed requests are resent)."""
        row = self._db.execute(
            "SELECT reply, prompt_tokens, completion_tokens, cost_usd FROM requests WHERE key = ? AND status = 'done'",
            (key,),
        ).fetchone()
        if row is None:
            return None
        reply = json.loads(row[0])
        if "choices" in reply:  # a chat completion as the server sent it
            choice = reply["choices"][0]
            reply = {
                "content": choice["message"].get("content") or "",
                "finish_reason": choice.get("finish_reason"),
                "logprobs": (choice.get("logprobs") or {}).get("content"),
            }
        return StoredReply(
            content=reply["content"],
            prompt_tokens=row[1],
            completion_tokens=row[2],
            cost_usd=row[3],
            finish_reason=reply.get("finish_reason"),
            logprobs=reply.get("logprobs"),
        )

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
        attempts: int, started: float,
    ) -> None:  # fmt: skip
        self._put(
            key,
            utterance_id,
            sample,
            turn,
            request_json,
            None,
            "failed",
            error,
            0,
            0,
            None,
            attempts,
            started,
        )

    def _put(self, *values: Any) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")
        self._db.execute(
            "INSERT OR REPLACE INTO requests (key, utterance_id, sample, turn, request, reply, status, error, "
            "prompt_tokens, completion_tokens, cost_usd, attempts, started, finished) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, time.time()),
        )
        if self._commit_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.commit()
                return
            self._commit_timer = loop.call_later(COMMIT_DELAY, self.commit)

    def commit(self) -> None:
        self._commit_timer = None
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))
        self.commit()

    def totals(self) -> dict[str, Any]:
        """Requests, tokens and cost of every finished request in the store, over all invocations."""
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
            "SUM(cost_usd), COUNT(cost_usd) FROM requests WHERE status = 'done'"
        ).fetchone()
        return {
            "requests": row[0],
            "prompt_tokens": row[1],
            "completion_tokens": row[2],
            # Unknown only when some finished request has no price; nothing finished yet costs 0.
            "cost_usd": (row[3] or 0.0) if row[4] == row[0] else None,
        }

    def mean_completion_tokens(self) -> float | None:
        row = self._db.execute("SELECT AVG(completion_tokens) FROM requests WHERE status = 'done'").fetchone()
        return row[0]

    def close(self) -> None:
        if self._commit_timer is not None:
            self._commit_timer.cancel()
        self.commit()
        self._db.close()


def compact_logprobs(logprobs: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """OpenAI's token logprobs without their `bytes` arrays, which repeat each token as UTF-8 byte values and
    would make up most of the stored reply."""
    if not logprobs:
        return logprobs
    return [
        {
            "token": item.get("token"),
            "logprob": item.get("logprob"),
            "top_logprobs": [
                {"token": alt.get("token"), "logprob": alt.get("logprob")}
                for alt in item.get("top_logprobs") or ()
            ],
        }
        for item in logprobs
    ]
