"""OpenAI's Batch API over the HTTP client of `OpenAIBackend`: input files and batches.

`POST /files` (multipart, purpose `batch`), `GET /files` (listed newest first), `GET /files/{id}/content`;
`POST /batches`, `GET /batches/{id}`, `POST /batches/{id}/cancel`, `GET /batches` (newest first, paginated).
The calls go through the backend's client (this module is its companion, and uses its private parts: its
error texts and response type), so they carry its credentials, proxy, caps and scrubbing: the key never reaches
a reply, an error or a file. What to do with batches (when to create, adopt, collect) is the
annotation run's business (`melt.annotate.batch`); this module only speaks the protocol.

Every call but `create` is retried on 429, 5xx, timeouts and dropped connections: reading or cancelling twice
is harmless. Creating twice is not (it would pay twice), so a failed `create` is left to the caller, which
looks for the batch among the account's before creating it again.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from melt.llm.base import BackendError, RequestFailed, RetryableError
from melt.llm.openai import OpenAIBackend, _Response, _retry_after

#: The endpoint every line of a batch file is sent to, and the only completion window OpenAI offers.
CHAT_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: Batch statuses after which nothing changes any more.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
#: Batch statuses while the server may still be working (and bill).
LIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
#: Listing pages: OpenAI's largest page of batches, and of files.
_BATCH_PAGE = 100
_FILE_PAGE = 10_000


class BatchAPI:
    def __init__(
        self,
        backend: OpenAIBackend,
        *,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ):
        self.backend = backend
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    # -- files -------------------------------------------------------------------------------------------------

    async def upload(self, path: Path, filename: str) -> dict[str, Any]:
        """Upload the JSONL file at `path` as `filename`, purpose `batch`; the file object."""

        async def send() -> _Response:
            form = aiohttp.FormData()
            form.add_field("purpose", "batch")
            with open(path, "rb") as handle:
                form.add_field("file", handle, filename=filename, content_type="application/jsonl")
                return await self.backend.call("POST", "files", form=form, transfer=True)

        return _object(
            self._checked(await self._retried(send, "uploading a batch file"), "uploading a batch file")
        )

    async def files(self, *, since: float = 0.0) -> AsyncIterator[dict[str, Any]]:
        """The account's batch input files, newest first, down to those created at `since` (Unix time)."""
        query = {"purpose": "batch", "limit": str(_FILE_PAGE), "order": "desc"}
        async for item in self._listed("files", "listing the account's files", query, since):
            yield item

    async def download(self, file_id: str, into: Path, *, max_bytes: int) -> None:
        """The content of file `file_id`, written to `into` (at most `max_bytes`)."""
        what = f"downloading file {file_id}"

        async def fetch() -> _Response:
            return await self.backend.call(
                "GET", f"files/{file_id}/content", into=into, max_bytes=max_bytes, transfer=True
            )

        try:
            response = await self._retried(fetch, what)
        except RequestFailed as exc:  # beyond the cap, or a body in an encoding not asked for
            raise BackendError(f"{what}: {exc.reason}") from exc
        self._checked(response, what, body_expected=False)

    # -- batches -----------------------------------------------------------------------------------------------

    async def create(self, input_file_id: str, metadata: Mapping[str, str]) -> dict[str, Any]:
        """A batch of the chat completions in `input_file_id`. Not retried: see the module's docstring."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": CHAT_ENDPOINT,
            "completion_window": COMPLETION_WINDOW,
            "metadata": dict(metadata),
        }
        response = await self.backend.call("POST", "batches", json_body=body)
        return _batch(self._checked(response, "creating a batch"))

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return _batch(await self._get(f"batches/{batch_id}", f"checking batch {batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        what = f"cancelling batch {batch_id}"

        async def send() -> _Response:
            return await self.backend.call("POST", f"batches/{batch_id}/cancel")

        return _batch(self._checked(await self._retried(send, what), what))

    async def batches(self, *, since: float = 0.0) -> AsyncIterator[dict[str, Any]]:
        """The account's batches, newest first, down to those created at `since` (Unix time)."""
        query = {"limit": str(_BATCH_PAGE)}
        async for item in self._listed("batches", "listing the account's batches", query, since):
            yield item

    async def _listed(
        self, path: str, what: str, query: dict[str, str], since: float
    ) -> AsyncIterator[dict[str, Any]]:
        """The items of a paged list (`after` = the last id of the page before), down to those created at
        `since`."""
        after: str | None = None
        while True:
            page = await self._get(path, what, {**query, "after": after} if after else query)
            items = [item for item in page.get("data") or () if isinstance(item, dict)]
            for item in items:
                if _number(item.get("created_at")) < since:
                    return
                yield item
            if not page.get("has_more") or not items or not isinstance(items[-1].get("id"), str):
                return
            after = items[-1]["id"]

    # -- transport ---------------------------------------------------------------------------------------------

    async def _get(self, name: str, what: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        async def fetch() -> _Response:
            return await self.backend.call("GET", name, query=query)

        return _object(self._checked(await self._retried(fetch, what), what))

    async def _retried(self, attempt: Any, what: str) -> _Response:
        """`attempt()`, again after 429s, 5xx, timeouts and dropped connections, with backoff."""
        for attempts in range(1, self.max_retries + 2):
            try:
                response = await attempt()
            except RetryableError as exc:
                failure = exc.reason
                wait = exc.retry_after
            else:
                status = response.status_code
                if status != 429 and status < 500 and status not in (408, 409, 425):
                    return response
                failure = f"HTTP {status}: {self.backend._error_text(response)}"
                wait = _retry_after(response.headers)
            if attempts > self.max_retries:
                raise BackendError(f"{what} failed after {attempts} attempts: {failure}")
            if wait is not None and wait > self.backoff_max:
                shown = "an unbounded time" if math.isinf(wait) else f"{wait:.0f} s"
                raise BackendError(
                    f"{what}: the server asks to wait {shown}, more than --backoff-max; rerun later"
                )
            if wait is None:
                wait = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1)) * random.uniform(0.5, 1)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def _checked(self, response: _Response, what: str, *, body_expected: bool = True) -> Any:
        """The JSON of a 200 reply; a `BackendError` naming what failed otherwise (429 and 5xx included: by
        now they were retried, or the call must not be)."""
        status = response.status_code
        if status == 200:
            if not body_expected:
                return None
            try:
                return json.loads(self.backend.scrub_exact(response.text))
            except ValueError as exc:
                raise BackendError(f"{what}: the server's reply is not JSON") from exc
        message = self.backend._error_text(response)
        if status in (401, 403):
            raise Refused(
                f"{what}: the server refused the API key (HTTP {status}); check ${self.backend._api_key_env}: "
                f"{message}"
            )
        if status == 404:
            raise Refused(
                f"{what}: not found at {self.backend.base_url} (HTTP 404; a server without OpenAI's Batch API, "
                f"or another account's batch?): {message}"
            )
        if status == 429 or status >= 500 or status in (408, 409, 425):
            raise RetryableError(
                f"{what}: HTTP {status}: {message}", retry_after=_retry_after(response.headers)
            )
        raise Refused(f"{what}: the server refused it (HTTP {status}): {message}")


class Refused(BackendError):
    """The server refused a call (a 4xx other than a rate limit): it had no effect, and repeating it as it is
    will not help."""


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BackendError("the server's reply is not a JSON object")
    return value


def _batch(value: Any) -> dict[str, Any]:
    """A batch object, checked for what the run relies on: an id and a status."""
    batch = _object(value)
    if not isinstance(batch.get("id"), str) or not isinstance(batch.get("status"), str):
        raise BackendError("the server's reply is not a batch (no id or status)")
    return batch


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


__all__ = ["CHAT_ENDPOINT", "COMPLETION_WINDOW", "LIVE", "TERMINAL", "BatchAPI", "Refused"]
