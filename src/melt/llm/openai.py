"""Chat completions over HTTP from any OpenAI-compatible server: OpenAI, vLLM, llama.cpp's server, Ollama.

The backend sends one request and classifies what went wrong; the engine decides what to do about it
(retry, fall back to a weaker answer format, stop). The API key lives only in the request headers: no error
message built here quotes a header, and server error texts are scrubbed of anything key-shaped,
because OpenAI echoes a masked key in its 401 message.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import re
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from melt.llm.base import BackendError, ChatReply, ChatRequest, ResponseFormatRejected, RetryableError

OPENAI_BASE_URL = "https://api.openai.com/v1"

#: statuses that a later attempt can fix (408 request timeout, 409 conflict, 425 too early, 5xx)
_RETRYABLE_STATUSES = frozenset({408, 409, 425})
#: key of `ChatReply.extra` holding the server's response body (JSON text)
RAW_RESPONSE = "raw_response"
_KEY_SHAPED = re.compile(r"\b(?:sk|key|api)[-_][A-Za-z0-9*_\-.]{6,}", re.IGNORECASE)


@dataclass(frozen=True)
class _Response:
    """A finished HTTP response: status, headers and the whole body, read before the connection went back."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class OpenAIBackend:
    """`melt.llm.base.Backend` for `POST {base_url}/chat/completions`."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_connections: int = 64,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._timeout = timeout
        self._max_connections = max(1, max_connections)
        self._url = URL(self.base_url + "/chat/completions")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # The pool may be waited for as long as a reply; opening a connection should never take that long.
        self._timeouts = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=min(timeout, 10.0), sock_read=timeout
        )
        # The proxy is looked up once: aiohttp's trust_env would read the environment and ~/.netrc on a
        # worker thread for every request, which costs more CPU than the request.
        self._proxy, self._proxy_headers = _proxy_for(self._url)
        # aiohttp sessions belong to the event loop they are made in, and backends are made before the run's
        # loop starts: the session is made by the first request.
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        # A server that refuses a parameter gets it dropped for the rest of the run, not on every request.
        self._send_logprobs = True
        self._max_tokens_field = "max_tokens"

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": list(request.messages)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        if request.seed is not None:
            body["seed"] = request.seed
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.logprobs and self._send_logprobs:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        return body

    async def complete(self, request: ChatRequest) -> ChatReply:
        # At most two parameter adjustments (logprobs, max_tokens) before the request is sent as it will stay.
        for _ in range(3):
            body = self.body(request)
            response = await self._post(_dumps(body))
            if response.status_code in (400, 422):
                message = self._error_text(response)
                lowered = message.lower()
                if "logprobs" in lowered and "logprobs" in body:
                    self._send_logprobs = False
                    continue
                if "max_completion_tokens" in lowered and self._max_tokens_field == "max_tokens":
                    self._max_tokens_field = "max_completion_tokens"
                    continue
                if request.response_format is not None and any(
                    word in lowered
                    for word in ("response_format", "json_schema", "json_object", "response format")
                ):
                    raise ResponseFormatRejected(f"HTTP {response.status_code}: {message}")
                raise BackendError(f"the server refused the request (HTTP {response.status_code}): {message}")
            return self._reply(response)
        raise BackendError("the server keeps refusing the request's parameters")

    async def _post(self, content: bytes) -> _Response:
        session = self._session_of_this_loop()
        try:
            # No redirects: a POST that a server redirects is a misconfigured --base-url, reported as such.
            async with session.post(
                self._url,
                data=content,
                headers=self._headers,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                timeout=self._timeouts,
                allow_redirects=False,
            ) as response:
                return _Response(response.status, response.headers, await response.read())
        except TimeoutError as exc:  # aiohttp's timeouts are also ClientErrors: this test comes first
            raise RetryableError(f"timeout: no reply within {self._timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            # Dropped connections, resets, refused connects; the text names the failure, never the request.
            raise RetryableError(f"connection: {type(exc).__name__}") from exc

    def _session_of_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                # Nothing a chat completion needs, and filtering cookies costs CPU on every request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._session_loop = loop
        return self._session

    def _reply(self, response: _Response) -> ChatReply:
        status = response.status_code
        if status == 429:
            message = self._error_text(response)
            if "insufficient_quota" in response.text or "exceeded your current quota" in message:
                raise BackendError(f"the account is out of quota (HTTP 429): {message}")
            raise RetryableError(
                f"HTTP 429: {message}", retry_after=_retry_after(response.headers), rate_limited=True
            )
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise RetryableError(
                f"HTTP {status}: {self._error_text(response)}", retry_after=_retry_after(response.headers)
            )
        if status in (401, 403):
            raise BackendError(
                f"the server refused the API key (HTTP {status}); check ${self._api_key_env}: "
                f"{self._error_text(response)}"
            )
        if status == 404:
            raise BackendError(
                f"{self.base_url}/chat/completions or model {self.model!r} not found "
                f"(HTTP 404; does --base-url end with /v1?): {self._error_text(response)}"
            )
        if status != 200:
            raise BackendError(f"unexpected HTTP {status}: {self._error_text(response)}")
        text = response.text
        try:
            data = _loads(response.content, text)
            choice = data["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # A proxy or an overloaded server can cut a body short: worth another (capped) attempt.
            raise RetryableError(f"malformed reply: not a chat completion ({text[:80]!r})") from exc
        usage = data.get("usage") or {}
        logprobs = (
            (choice.get("logprobs") or {}).get("content")
            if isinstance(choice.get("logprobs"), dict)
            else None
        )
        return ChatReply(
            content=content,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
            logprobs=logprobs,
            # The server's own JSON, so the engine can store the reply as received instead of re-encoding it.
            extra={RAW_RESPONSE: text},
        )

    def _error_text(self, response: _Response) -> str:
        try:
            error = json.loads(response.content).get("error")
            text = error.get("message") if isinstance(error, dict) else str(error or response.text)
        except (ValueError, AttributeError):
            text = response.text
        return self.scrub(" ".join(str(text).split())[:300])

    def scrub(self, text: str) -> str:
        """`text` without the API key or anything that looks like one."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return _KEY_SHAPED.sub("***", text)

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None


def _proxy_for(url: URL) -> tuple[URL | None, dict[str, str] | None]:
    """The proxy the environment (HTTPS_PROXY, ALL_PROXY, NO_PROXY...) asks for, and the headers that carry
    the credentials in its URL."""
    if url.host is None or urllib.request.proxy_bypass(url.host):
        return None, None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None, None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    parsed = URL(proxy)
    if parsed.user is None:
        return parsed, None
    credentials = base64.b64encode(f"{parsed.user}:{parsed.password or ''}".encode()).decode()
    return parsed.with_user(None), {"Proxy-Authorization": f"Basic {credentials}"}


def _dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except (
        orjson.JSONEncodeError
    ):  # what orjson refuses (integers beyond 64 bits, non-string keys) json takes
        return json.dumps(body, ensure_ascii=False).encode()


def _loads(content: bytes, text: str) -> Any:
    """The JSON value of a response body. orjson decodes a reply with logprobs three times faster than json
    (about 0.2 ms less CPU per request); json takes what orjson refuses as non-standard (NaN, -Infinity: some
    servers' logprobs of impossible tokens) and bodies that are not valid UTF-8 (`text` is decoded leniently)."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: OpenAI's `retry-after-ms`, else `Retry-After` (seconds or date)."""
    if "retry-after-ms" in headers:
        try:
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None
