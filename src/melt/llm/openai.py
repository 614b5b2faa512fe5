"""Chat completions over HTTP from any OpenAI-compatible server: OpenAI, vLLM, llama.cpp's server, llama-cpp-python's
server, Ollama.

The backend sends one request and classifies what went wrong; the engine decides what to do about it (retry,
fall back to a weaker answer format, fail the one request, stop). Servers differ in how they take a JSON schema
for the answer: the backend learns which form a server takes (its family from `GET /models`, then rejections)
and sends that form (see docs/annotate.md, "Servers").

Secrets: the API key (or the credentials of a `user:pass@` base URL) live only in the request headers. Every
text that comes back from the server is scrubbed of them before anything else sees it, so a server echoing the
request headers cannot get the key into a reply, an error, the request store or an output table; error texts
are also scrubbed of anything key-shaped, because OpenAI echoes a masked key in its 401 message.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import re
import ssl
import time
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

from melt.llm.base import (
    BackendError,
    ChatReply,
    ChatRequest,
    RateLimitState,
    RequestFailed,
    ResponseFormatRejected,
    RetryableError,
    wire_messages,
)
from melt.provenance import identity_url, safe_url

OPENAI_BASE_URL = "https://api.openai.com/v1"

#: statuses that a later attempt can fix (408 request timeout, 409 conflict, 425 too early, 5xx)
_RETRYABLE_STATUSES = frozenset({408, 409, 425})
#: key of `ChatReply.extra` holding the server's response body (JSON text, scrubbed of secrets)
RAW_RESPONSE = "raw_response"
#: The largest reply body read, after decompression. A reply with token logprobs for a long answer is a few MB;
#: a body beyond this is not a reply (an endless stream, a compression bomb).
MAX_BODY_BYTES = 32 * 1024 * 1024
_SECRET_MIN = 8
_KEY_SHAPED = re.compile(r"\b(?:sk|key|api)[-_][A-Za-z0-9*_\-.]{6,}", re.IGNORECASE)
#: Words in an error text that say the server did not take the answer format, whatever the HTTP status
#: (llama-cpp-python's server answers an unknown response_format type with HTTP 500).
_FORMAT_WORDS = ("response_format", "response format", "json_schema", "json schema", "json_object", "guided_json",
                 "guided decoding", "structured output")  # fmt: skip
_CONTEXT_WORDS = ("context_length_exceeded", "maximum context length", "context length", "context window",
                  "context size", "prompt is too long", "too many tokens")  # fmt: skip

#: How each server family takes a JSON schema for the answer, in the order to try. `openai`:
#: response_format {"type": "json_schema", "json_schema": {...}}; `json_object_schema`: response_format
#: {"type": "json_object", "schema": ...} (llama-cpp-python's server, llama.cpp's); `guided_json`: vLLM's own
#: request parameter (vLLM versions that predate json_schema).
SCHEMA_FORMS: dict[str, tuple[str, ...]] = {
    "openai": ("openai", "json_object_schema"),
    "vllm": ("openai", "guided_json"),
    "llama.cpp": ("openai", "json_object_schema"),
    "llama-cpp-python": ("json_object_schema", "openai"),
    "ollama": ("openai",),
    "unknown": ("openai", "json_object_schema"),
}
#: `owned_by` of `GET /models` -> family
_OWNERS = {"vllm": "vllm", "llamacpp": "llama.cpp", "me": "llama-cpp-python", "library": "ollama",
           "ollama": "ollama", "openai": "openai", "system": "openai", "openai-internal": "openai"}  # fmt: skip
#: Requests a family's server works on at once (llama-cpp-python's server has one model and one slot: more
#: requests in flight only queue there, and time out while queued).
_FAMILY_CONCURRENCY = {"llama-cpp-python": 1}


def check_base_url(url: str) -> URL:
    """The parsed base URL, or a `BackendError` naming it (without credentials) when it cannot be one."""
    shown = safe_url(url)
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise BackendError(f"--base-url {shown!r} is not a URL ({exc})") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise BackendError(
            f"--base-url {shown!r} is not an http(s) URL; give the server's address, e.g. http://localhost:8000/v1"
        )
    return parsed


@dataclass(frozen=True)
class _Response:
    """A finished HTTP response: status, headers and the whole (decompressed) body (empty when the body was
    written to a file)."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class OpenAIBackend:
    """`melt.llm.base.Backend` for `POST {base_url}/chat/completions`.

    Credentials in the base URL (`https://user:pass@host/v1`, e.g. a proxy with basic authentication) are sent as
    `Authorization: Basic`; the API key is then not sent, since a request has one Authorization header."""

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
        parsed = check_base_url(base_url.rstrip("/"))
        # Placeholder keys a few characters long ("EMPTY", "ollama") are no secret, and replacing them in replies
        # would change answers: only key-length strings are scrubbed.
        self._secrets: list[str] = [s for s in (api_key,) if s and len(s) >= _SECRET_MIN]
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
        }
        if parsed.user is not None:
            user, password = parsed.user or "", parsed.password or ""
            credentials = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {credentials}"
            raw = parsed.raw_password or ""
            self._secrets += [s for s in (password, raw, credentials) if len(s) >= _SECRET_MIN]
            parsed = parsed.with_user(None).with_password(None)
        elif api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        #: the base URL without credentials, as errors, run.json and the store name it
        self.base_url = safe_url(str(parsed))
        self.model = model
        self._api_key_env = api_key_env
        self._timeout = timeout
        self._max_connections = max(1, max_connections)
        # A key in the query (some gateways take one there) is a secret like the others.
        self._secrets += [v for v in parsed.query.values() if len(v) >= _SECRET_MIN]
        self._base = parsed
        self._url = self._endpoint("chat/completions")
        # The whole reply must come within the timeout: a server trickling bytes cannot hold a request forever.
        self._timeouts = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))
        # The proxy is looked up once: aiohttp's trust_env would read the environment and ~/.netrc on a
        # worker thread for every request, which costs more CPU than the request.
        self._proxy, self._proxy_headers = _proxy_for(self._url)
        # aiohttp sessions belong to the event loop they are made in, and backends are made before the run's
        # loop starts: the session is made by the first request.
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        # Until the server has answered once, a connection that fails means a wrong URL or a server that is not
        # running: that stops the run at once instead of being retried for minutes.
        self._reached = False
        # Until a chat request has had a JSON reply, a document that is no JSON means --base-url is no OpenAI
        # server.
        self._answered = False
        # What this server takes, learnt from its answers (and remembered in the run's store by the engine).
        self.family = "unknown"
        self._slots: int | None = None
        self._schema_forms = SCHEMA_FORMS["unknown"]
        self._schema_form = self._schema_forms[0]
        self._send_logprobs = True
        self._max_tokens_field = "max_tokens"

    def _endpoint(self, name: str) -> URL:
        """`{base_url}/{name}`, keeping the base URL's query (some gateways want one, e.g. an API version)."""
        url = self._base.with_path(self._base.path.rstrip("/") + "/" + name)
        return url.with_query(self._base.query) if self._base.query_string else url

    # -- what the engine records and remembers ------------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        return {"kind": self.name, "base_url": identity_url(str(self._base)), "model": self.model}

    @property
    def max_concurrency(self) -> int | None:
        return self._slots or _FAMILY_CONCURRENCY.get(self.family)

    def server_profile(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "slots": self._slots,
            "schema_form": self._schema_form,
            "logprobs": self._send_logprobs,
            "max_tokens_field": self._max_tokens_field,
        }

    def use_server_profile(self, profile: Mapping[str, Any]) -> None:
        family = profile.get("family")
        if family in SCHEMA_FORMS:
            self._set_family(family)
        slots = profile.get("slots")
        self._slots = slots if isinstance(slots, int) and slots > 0 else None
        if profile.get("schema_form") in self._schema_forms:
            self._schema_form = profile["schema_form"]
        self._send_logprobs = profile.get("logprobs") is not False
        if profile.get("max_tokens_field") in ("max_tokens", "max_completion_tokens"):
            self._max_tokens_field = profile["max_tokens_field"]

    def _set_family(self, family: str) -> None:
        self.family = family
        self._schema_forms = SCHEMA_FORMS[family]
        self._schema_form = self._schema_forms[0]

    async def detect_server(self) -> str:
        """The server's family from `GET {base_url}/models` (free: no tokens), "unknown" when it does not say.
        An unreachable server raises `BackendError` here, before any paid request."""
        try:
            response = await self._request("GET", self._endpoint("models"))
        except RetryableError as exc:
            if exc.reason.startswith("connection") and not self._reached:
                # The first contact, and no HTTP answer: something listens there that is no HTTP server (an SSH
                # daemon) or shuts the door at once. Retrying would only delay saying so.
                raise BackendError(
                    f"{self.base_url} does not answer as an HTTP server ({exc.reason}): is --base-url the "
                    "address of an OpenAI-compatible server?"
                ) from exc
            return self.family
        except RequestFailed:
            return self.family
        self._reached = True
        if response.status_code in (401, 403):
            raise BackendError(
                f"{self.base_url} refused the API key (HTTP {response.status_code}); check ${self._api_key_env}: "
                f"{self._error_text(response)}"
            )
        family = "unknown"
        if response.status_code == 200:
            try:
                models = _loads(response.content, response.text).get("data") or []
                owners = [m.get("owned_by") for m in models if isinstance(m, dict)]
                mine = [
                    m.get("owned_by") for m in models if isinstance(m, dict) and m.get("id") == self.model
                ]
                owner = (mine or owners or [None])[0]
                family = _OWNERS.get(str(owner).lower(), "unknown")
            except (ValueError, AttributeError, TypeError):
                pass
        self._set_family(family)
        if family == "llama.cpp":
            self._slots = await self._llama_cpp_slots()
        return family

    async def _llama_cpp_slots(self) -> int | None:
        """llama-server's parallel slots (`GET /props`, at the server's root): requests beyond them only queue."""
        root = self._base.path.rstrip("/").removesuffix("/v1")
        try:
            response = await self._request("GET", self._base.with_path(root + "/props"))
            slots = (
                _loads(response.content, response.text).get("total_slots")
                if response.status_code == 200
                else None
            )
        except (RetryableError, RequestFailed, ValueError, AttributeError):
            return None
        return slots if isinstance(slots, int) and slots > 0 else None

    # -- requests ------------------------------------------------------------------------------------------------

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": wire_messages(request.messages)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self._max_tokens_field] = request.max_tokens
        if request.seed is not None:
            body["seed"] = request.seed
        response_format = request.response_format
        if response_format is not None:
            if response_format.get("type") == "json_schema" and self._schema_form != "openai":
                schema = (response_format.get("json_schema") or {}).get("schema")
                if self._schema_form == "guided_json":
                    body["guided_json"] = schema
                else:
                    body["response_format"] = {"type": "json_object", "schema": schema}
            else:
                body["response_format"] = response_format
        if request.logprobs and self._send_logprobs:
            body["logprobs"] = True
            if request.top_logprobs:
                body["top_logprobs"] = request.top_logprobs
        return body

    async def complete(self, request: ChatRequest) -> ChatReply:
        # A few parameter adjustments (logprobs, max_tokens' name, the schema's form) before the request is sent
        # as it will stay for the rest of the run.
        for _ in range(6):
            body = self.body(request)
            schema_form = self._schema_form
            response = await self._post(_dumps(body))
            self._reached = True
            status = response.status_code
            if status == 200:
                return self._reply(response)
            if status in (401, 403, 404, 429):
                self._raise_for(response)
            message = self._error_text(response)
            lowered = message.lower()
            if status >= 400:
                if "logprobs" in lowered and "logprobs" in body:
                    self._send_logprobs = False
                    continue
                if "max_completion_tokens" in lowered and self._max_tokens_field == "max_tokens":
                    self._max_tokens_field = "max_completion_tokens"
                    continue
                if request.response_format is not None and any(w in lowered for w in _FORMAT_WORDS):
                    if request.response_format.get("type") == "json_schema" and self._next_schema_form(
                        schema_form
                    ):
                        continue
                    raise ResponseFormatRejected(f"HTTP {status}: {message}")
                if status in (400, 422) and _content_filtered(response):
                    raise RequestFailed(
                        f"the server's content filter refused the prompt (HTTP {status}): {message}"
                    )
                if status in (400, 413, 422) and any(w in lowered for w in _CONTEXT_WORDS):
                    raise RequestFailed(f"the prompt is too long for the model (HTTP {status}): {message}")
                if status == 413:
                    raise RequestFailed(f"the server refused the request as too large (HTTP 413): {message}")
            self._raise_for(response)
        raise BackendError(f"{self.base_url} keeps refusing the request's parameters")

    def encoded_body(self, request: ChatRequest) -> bytes:
        """The bytes `complete` would POST for `request` now (what a Batch API line carries as its body)."""
        return _dumps(self.body(request))

    def _next_schema_form(self, rejected: str) -> bool:
        """Move to the next form of JSON schema this server may take; False when there is none left."""
        if self._schema_form != rejected:
            return True  # another request already moved on
        position = self._schema_forms.index(rejected)
        if position + 1 >= len(self._schema_forms):
            return False
        self._schema_form = self._schema_forms[position + 1]
        return True

    def _raise_for(self, response: _Response) -> None:
        status = response.status_code
        limits = _rate_limits(response.headers)
        if status == 429:
            message = self._error_text(response)
            if "insufficient_quota" in response.text or "exceeded your current quota" in message:
                raise BackendError(f"the account is out of quota (HTTP 429): {message}")
            raise RetryableError(
                f"HTTP 429: {message}",
                retry_after=_retry_after(response.headers),
                rate_limited=True,
                rate_limits=limits,
            )
        if status >= 500 or status in _RETRYABLE_STATUSES:
            raise RetryableError(
                f"HTTP {status}: {self._error_text(response)}",
                retry_after=_retry_after(response.headers),
                rate_limits=limits,
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
        if status in (400, 422):
            raise BackendError(
                f"the server refused the request (HTTP {status}): {self._error_text(response)}"
            )
        raise BackendError(f"unexpected HTTP {status} from {self.base_url}: {self._error_text(response)}")

    async def _post(self, content: bytes) -> _Response:
        return await self._request("POST", self._url, content)

    async def call(
        self,
        method: str,
        name: str,
        *,
        json_body: Any = None,
        form: aiohttp.FormData | None = None,
        query: Mapping[str, str] | None = None,
        into: Path | None = None,
        max_bytes: int = MAX_BODY_BYTES,
        transfer: bool = False,
    ) -> _Response:
        """`method {base_url}/{name}`: the API's other endpoints (files, batches), with the credentials, proxy,
        body caps and failure classes of chat requests. `into`: the body goes to this file (at most
        `max_bytes`) instead of memory. `transfer`: a file upload or download, which may take longer than
        --timeout as a whole; it times out only after --timeout of silence."""
        url = self._endpoint(name)
        if query:
            url = url.update_query(query)
        headers = dict(self._headers)
        content: Any = None
        if form is not None:
            del headers["Content-Type"]  # aiohttp sets multipart/form-data with its boundary
            content = form
        elif json_body is not None:
            content = _dumps(json_body)
        if into is not None:
            headers["Accept-Encoding"] = "identity"  # written as it comes, never inflated on disk
        timeout = None
        if transfer:
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=min(self._timeout, 10.0), sock_read=self._timeout
            )
        response = await self._request(
            method, url, content, headers=headers, timeout=timeout, into=into, max_bytes=max_bytes
        )
        self._reached = True
        return response

    async def _request(
        self,
        method: str,
        url: URL,
        content: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        into: Path | None = None,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> _Response:
        session = self._session_of_this_loop()
        try:
            # No redirects: a POST that a server redirects is a misconfigured --base-url, reported as such.
            async with session.request(
                method,
                url,
                data=content,
                headers=self._headers if headers is None else headers,
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                timeout=self._timeouts if timeout is None else timeout,
                allow_redirects=False,
            ) as response:
                if into is not None and response.status == 200:
                    await _write_body(response, into, max_bytes)
                    return _Response(response.status, response.headers, b"")
                body = await _read_body(response)
                return _Response(response.status, response.headers, body)
        except TimeoutError as exc:  # aiohttp's timeouts are also ClientErrors: this test comes first
            what = (
                f"nothing received for {self._timeout:g} s"
                if timeout
                else f"no whole reply within {self._timeout:g} s"
            )
            raise RetryableError(f"timeout: {what}", timed_out=True) from exc
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise BackendError(f"cannot connect to {self.base_url} securely: {_reason(exc)}") from exc
        except aiohttp.InvalidURL as exc:
            raise BackendError(f"--base-url {self.base_url!r} is not a usable URL") from exc
        except aiohttp.ClientConnectorError as exc:
            if not self._reached:
                raise BackendError(_unreachable(self.base_url, self._url.host or "", exc)) from exc
            raise RetryableError(f"connection: {type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            # Dropped connections, resets, bodies cut short; the text names the failure, never the request.
            raise RetryableError(f"connection: {type(exc).__name__}") from exc

    def _session_of_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
                # Nothing a chat completion needs, and filtering cookies costs CPU on every request.
                cookie_jar=aiohttp.DummyCookieJar(),
                # Bodies are inflated here, under the size cap, not by aiohttp (which would inflate a
                # compression bomb whole).
                auto_decompress=False,
            )
            self._session_loop = loop
        return self._session

    def _reply(self, response: _Response) -> ChatReply:
        received = response.text
        text = self.scrub_exact(received)
        try:
            data = _loads(response.content if text is received else text.encode(), text)
        except ValueError as exc:
            kind = response.headers.get("Content-Type", "no Content-Type")
            document = "json" not in kind.lower() or response.content.lstrip()[:1] == b"<"
            if not self._answered and document:
                # A web page (or any other document) in reply to the first chat completion: not a body cut short.
                raise BackendError(
                    f"{self.base_url} answered a chat completion with a body that is not JSON ({kind}): is "
                    "--base-url the address of an OpenAI-compatible server (often ending in /v1)?"
                ) from exc
            # A proxy or an overloaded server can cut a body short: worth another (capped) attempt.
            raise RetryableError("malformed reply: the body is not JSON (cut short?)") from exc
        self._answered = True
        if self._secrets and ("\\u" in text or "\\/" in text):
            # JSON escapes (`\u0073k-...`, `\/`) hide a secret from the scrub of the raw text; decoded, it would
            # reach the tables. The body is scrubbed again as decoded, and kept so.
            decoded = json.dumps(data, ensure_ascii=False)
            scrubbed = self.scrub_exact(decoded)
            if scrubbed != decoded:
                text, data = scrubbed, json.loads(scrubbed)
        try:
            content, finish_reason, logprobs = parse_completion(data)
        except MalformedReply as exc:
            # The server billed the request all the same when it says so: --max-cost must count it.
            exc.prompt_tokens, exc.completion_tokens = _billed(data)
            raise
        prompt_tokens, completion_tokens = parse_usage(data)
        audio_tokens = parse_audio_tokens(data)
        return ChatReply(
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            logprobs=logprobs,
            # The server's own JSON, so the engine can store the reply as received instead of re-encoding it.
            extra={RAW_RESPONSE: text},
            rate_limits=_rate_limits(response.headers),
            audio_prompt_tokens=min(audio_tokens, prompt_tokens),
        )

    def _error_text(self, response: _Response) -> str:
        try:
            error = json.loads(response.content).get("error")
            text = error.get("message") if isinstance(error, dict) else str(error or response.text)
            if isinstance(error, dict) and error.get("code") == "context_length_exceeded":
                text = f"context_length_exceeded: {text}"
        except (ValueError, AttributeError, RecursionError):
            text = response.text
        return self.scrub(valid_text(" ".join(str(text).split())[:300]))

    def scrub_exact(self, text: str) -> str:
        """`text` with the API key and the base URL's credentials replaced by ***."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def scrub(self, text: str) -> str:
        """`text` without the secrets or anything that looks like a key: for error messages."""
        return _KEY_SHAPED.sub("***", self.scrub_exact(text))

    async def aclose(self) -> None:
        if self._session is not None and self._session_loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = self._session_loop = None


# -- replies ---------------------------------------------------------------------------------------------------


class MalformedReply(RequestFailed):
    """HTTP 200 with JSON that is not a chat completion."""


def parse_completion(data: Any) -> tuple[str, str | None, list[dict[str, Any]] | None]:
    """(content, finish_reason, logprobs) of a chat completion; `MalformedReply` naming what is wrong."""
    if not isinstance(data, dict):
        raise MalformedReply("malformed reply: the body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list):
        error = data.get("error")
        said = f" (the server said: {valid_text(str(error)[:200])})" if error else ""
        raise MalformedReply(f"malformed reply: choices is not a list{said}")
    if not choices or not isinstance(choices[0], dict):
        raise MalformedReply("malformed reply: no choice in choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedReply("malformed reply: the choice has no message object")
    content = message.get("content")
    if isinstance(content, list):  # content parts, as some servers send them
        if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content):
            raise MalformedReply("malformed reply: message content is not text")
        content = "".join(p.get("text", "") for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise MalformedReply(
            f"malformed reply: message content is not text but a JSON {type(content).__name__}"
        )
    content = valid_text(content)
    finish_reason = choice.get("finish_reason")
    raw_logprobs = choice.get("logprobs")
    logprobs = raw_logprobs.get("content") if isinstance(raw_logprobs, dict) else None
    if not isinstance(logprobs, list):
        logprobs = None
    return content, finish_reason if isinstance(finish_reason, str) else None, logprobs


def valid_text(text: str) -> str:
    """`text` with lone UTF-16 surrogates (JSON allows `\\ud83d` alone) replaced by U+FFFD: no table, request
    or store can encode them."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def parse_usage(data: dict[str, Any]) -> tuple[int, int]:
    """(prompt tokens, completion tokens) as the server counted them; (0, 0) when it did not say."""
    usage = data.get("usage")
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        raise MalformedReply("malformed reply: usage is not an object")
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        value = usage.get(name) or 0
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise MalformedReply(f"malformed reply: usage.{name} is not a count of tokens ({value!r})")
        counts.append(int(value))
    return counts[0], counts[1]


def parse_audio_tokens(data: dict[str, Any]) -> int:
    """Prompt tokens the server counted as audio (OpenAI: `usage.prompt_tokens_details.audio_tokens`); 0 when it
    does not say, or says something that is not a count."""
    details = (
        (data.get("usage") or {}).get("prompt_tokens_details")
        if isinstance(data.get("usage"), dict)
        else None
    )
    value = details.get("audio_tokens") if isinstance(details, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        return 0
    return int(value)


def _content_filtered(response: _Response) -> bool:
    """Whether an error says the provider's content filter refused this prompt (OpenAI's and Azure OpenAI's
    `code: content_filter`): that prompt fails, the others go on."""
    try:
        error = json.loads(response.content).get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(error, dict) and error.get("code") in ("content_filter", "content_policy_violation")


def _billed(data: Any) -> tuple[int, int]:
    """The token counts of a reply that is no chat completion, when its `usage` is well formed; else (0, 0)."""
    try:
        return parse_usage(data) if isinstance(data, dict) else (0, 0)
    except MalformedReply:
        return 0, 0


# -- transport ---------------------------------------------------------------------------------------------------


async def _read_body(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, inflated if compressed, refusing more than MAX_BODY_BYTES either way."""
    declared = response.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise RequestFailed(f"reply body larger than {MAX_BODY_BYTES >> 20} MB ({declared} bytes announced)")
    if declared is not None:
        body = await response.read()  # the common case: a length within the cap, read in one call
    else:
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise RequestFailed(f"reply body larger than {MAX_BODY_BYTES >> 20} MB")
            chunks.append(chunk)
        body = b"".join(chunks)
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise RequestFailed(f"the reply uses Content-Encoding {encoding!r}, which was not asked for")
    return _inflate(body, encoding)


async def _write_body(response: aiohttp.ClientResponse, path: Path, max_bytes: int) -> int:
    """Write the body to `path` as it arrives, refusing more than `max_bytes`; its size."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestFailed(f"the reply uses Content-Encoding {encoding!r}, which was not asked for")
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise RequestFailed(f"reply body larger than {max_bytes} bytes ({declared} bytes announced)")
    size = 0
    with open(path, "wb") as sink:
        async for chunk in response.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise RequestFailed(f"reply body larger than {max_bytes} bytes")
            sink.write(chunk)
    return size


def _inflate(body: bytes, encoding: str) -> bytes:
    # 47 = 32 + 15: a gzip or zlib header, detected. HTTP's "deflate" is zlib, but some servers send raw deflate.
    for wbits in (47,) if encoding != "deflate" else (47, -15):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, MAX_BODY_BYTES + 1)
        except zlib.error:
            continue
        if len(out) > MAX_BODY_BYTES or inflater.unconsumed_tail:
            raise RequestFailed(f"reply body larger than {MAX_BODY_BYTES >> 20} MB once decompressed")
        return out
    raise RetryableError(f"malformed reply: a {encoding} body that does not decompress")


def _unreachable(base_url: str, host: str, exc: aiohttp.ClientConnectorError) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(exc, getattr(aiohttp, "ClientConnectorDNSError", ())) or _is_dns_error(os_error):
        return f"cannot resolve the host {host!r} of --base-url {base_url}: check the address"
    if isinstance(os_error, ConnectionRefusedError):
        why = "connection refused (is the server running, on this port?)"
    else:
        why = _reason(os_error or exc)
    return f"cannot connect to {base_url}: {why}"


def _is_dns_error(error: object) -> bool:
    import socket

    return isinstance(error, socket.gaierror)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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
        try:
            return json.loads(text)
        except RecursionError as exc:  # orjson refuses it too: nesting no reply needs
            raise ValueError("JSON nested too deeply") from exc


# -- what the server says about waiting ----------------------------------------------------------------------------


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: OpenAI's `retry-after-ms`, else `Retry-After` (seconds or an HTTP date).
    None when absent or unusable (NaN, garbage); a value too large to represent is `math.inf`."""
    milliseconds = _number(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return max(milliseconds / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    try:
        return max(when.timestamp() - time.time(), 0.0)
    except (OverflowError, ValueError, OSError):
        return math.inf


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return None if math.isnan(number) else number


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _duration(value: str | None) -> float | None:
    """Seconds in a rate-limit reset header: OpenAI's `1s`, `6m0s`, `20ms`; plain seconds; or a Unix time."""
    if value is None:
        return None
    value = value.strip()
    number = _number(value)
    if number is not None:
        if not math.isfinite(number) or number < 0:
            return None
        return max(number - time.time(), 0.0) if number > 1e9 else number
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _rate_limits(headers: Mapping[str, str]) -> RateLimitState | None:
    """The `x-ratelimit-*` headers of a response (OpenAI's names; vLLM and others behind gateways send them too)."""
    kinds = {}
    for kind in ("requests", "tokens"):
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        reset = _duration(headers.get(f"x-ratelimit-reset-{kind}"))
        if remaining is None or reset is None or not math.isfinite(remaining):
            continue
        limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
        kinds[kind] = (
            limit if limit is not None and math.isfinite(limit) else None,
            max(remaining, 0.0),
            reset,
        )
    return RateLimitState(kinds) if kinds else None
