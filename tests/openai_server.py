"""A real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions protocol, for tests and the benchmark.

It answers like a well-behaved MELT annotator: it reads the utterance line `X at sNeM said: ...` from the
prompt and replies with valid JSON for character X and the emotion `expected_emotion(text)`. Faults are
scripted by markers in the utterance text, so a test corpus says which rows misbehave:

    [[429]]              first request: 429 with Retry-After (server option `retry_after`)
    [[500x2]]            first two requests: 500
    [[slow]]             first request: replies after `slow_seconds` (longer than the client's timeout)
    [[drop]]             first request: the connection is closed without a reply
    [[badbody]]          first request: HTTP 200 whose body is not JSON
    [[malformed]]        first answer is truncated JSON; the re-ask gets a valid answer
    [[malformed-always]] every answer is truncated JSON
    [[fenced]]           the answer is wrapped in prose and a ```json fence
    [[offlabel]]         first answer's emotion is "frustration"; the re-ask gets a valid label
    [[offlabel-always]]  every answer's emotion is "frustration"
    [[synonym]]          the emotion is given as a synonym ("happy")
    [[wrongchar]]        the character is "Gunther" whatever the speaker
    [[mixed:a,b,c]]      the n-th answer for this utterance has emotion a, b, c, a, ... (for --samples)
    [[retry-after:V]]    first request: 429 with `Retry-After: V` (V as sent: "nan", "1e12", an HTTP date, ...)
    [[retry-after-ms:V]] first request: 429 with `retry-after-ms: V`
    [[content-object]]   every reply: HTTP 200 whose message content is a JSON object, not text
    [[usage-string]]     every reply: HTTP 200 whose `usage` is a string
    [[choices-string]]   every reply: HTTP 200 whose `choices` is a string
    [[huge-usage]]       every reply: a valid answer billed at 10^12 prompt tokens
    [[too-long]]         every request: HTTP 400 `context_length_exceeded`
    [[echo-headers]]     every request: HTTP 200 whose body is not a chat completion but echoes the request headers
    [[echo-content]]     every reply: an unusable answer quoting the request headers
    [[trickle]]          every reply: the body one byte every `trickle_interval` seconds
    [[gzip-bomb]]        every reply: a gzip body that inflates to `bomb_bytes` of zeros
    [[endless]]          every reply: a chunked body that never ends

Markers whose fault hits "every" request are never cured by a retry (the client must not loop on them).

"First request(s)" count the requests the server has received for that utterance so far, repairs excluded.
Server-wide options: a fixed latency per reply, rejecting some `response_format` types (with HTTP 400 as OpenAI
does, or with HTTP 500 and a validation message as llama-cpp-python's server does), refusing `logprobs`,
requiring an API key, answering `GET /v1/models` as a given server family, a number of `slots` (requests
processed at once; the rest queue, as on a single-slot llama.cpp server), sporadic 429s on a fraction of
requests, and a token bucket of requests per second with or without OpenAI's `x-ratelimit-*` headers. Every
chat request is logged (in memory, and as JSON lines in `log_path`); `GET` requests are counted in `gets`.

Run standalone (the benchmark and subprocess tests do): `python tests/openai_server.py --port-file F --log L`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LABELS = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
SYNONYMS = {"anger": "angry", "disgust": "disgusted", "fear": "scared", "joy": "happy", "neutral": "neutrality",
            "sadness": "sad", "surprise": "surprised"}  # fmt: skip
_LINE = re.compile(
    r"^(?P<speaker>.+?) at s(?P<season>\S*?)e(?P<episode>\S*?) said: (?P<text>.*)$", re.MULTILINE
)
_MARKER = re.compile(r"\[\[([a-z0-9\-]+)(?::([^\]]*))?\]\]")
_FAULT_COUNTS = re.compile(r"^(?P<kind>[a-z0-9\-]+?)(?:x(?P<n>\d+))?$")
#: Faults that hit every request carrying the marker, repairs included.
_PERSISTENT = ("content-object", "usage-string", "choices-string", "huge-usage", "too-long", "echo-headers",
               "echo-content", "trickle", "gzip-bomb", "endless")  # fmt: skip
#: What `GET /v1/models` says owns the model, per server family (as those servers answer).
OWNED_BY = {"openai": "openai", "vllm": "vllm", "llama.cpp": "llamacpp", "llama-cpp-python": "me",
            "ollama": "library"}  # fmt: skip


def expected_emotion(text: str) -> str:
    """The emotion this server gives an utterance (unless a marker says otherwise)."""
    return LABELS[zlib.crc32(text.encode()) % len(LABELS)]


def request_key(body: dict[str, Any]) -> str:
    """A fingerprint of a request body, to tell repeats of the same request apart from new ones."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class FakeOpenAIServer:
    """`with FakeOpenAIServer() as server:` serves on `server.base_url` until the block ends."""

    def __init__(
        self,
        *,
        latency: float = 0.0,
        retry_after: str = "1",
        slow_seconds: float = 2.0,
        reject_formats: tuple[str, ...] = (),
        reject_status: int = 400,
        offer_logprobs: bool = True,
        reject_logprobs: bool = False,
        api_key: str | None = None,
        log_path: str | Path | None = None,
        port: int = 0,
        family: str = "openai",
        slots: int | None = None,
        rate_limit_fraction: float = 0.0,
        token_bucket_rate: float | None = None,
        token_bucket_burst: float | None = None,
        ratelimit_headers: bool = False,
        trickle_interval: float = 0.5,
        bomb_bytes: int = 200_000_000,
        seed: int = 0,
    ):
        self.latency = latency
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.reject_formats = set(reject_formats)
        self.reject_status = reject_status
        self.offer_logprobs = offer_logprobs
        self.reject_logprobs = reject_logprobs
        self.api_key = api_key
        self.family = family
        self.slots = threading.Semaphore(slots) if slots else None
        self.slot_count = slots
        self.rate_limit_fraction = rate_limit_fraction
        self._random = random.Random(seed)
        self.bucket = (
            _TokenBucket(token_bucket_rate, token_bucket_burst or token_bucket_rate)
            if token_bucket_rate
            else None
        )
        self.ratelimit_headers = ratelimit_headers
        self.trickle_interval = trickle_interval
        self.bomb_bytes = bomb_bytes
        self.gets = 0
        self.log: list[dict[str, Any]] = []
        self._log_file = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._lock = threading.Lock()
        # Signalled whenever a request has been handled and logged (see `entries`).
        self._handled = threading.Condition(self._lock)
        self._handling = 0
        self._seen: dict[str, int] = {}
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = _Server(("127.0.0.1", port), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._log_file:
            self._log_file.close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def entries(self, **where: Any) -> list[dict[str, Any]]:
        """Log entries whose fields equal `where`, once the requests being handled are logged: a reply is logged
        after it is sent, so a client can hold its reply before the server's log shows it."""
        with self._handled:
            self._handled.wait_for(lambda: self._handling == 0, timeout=5)
            return [e for e in self.log if all(e.get(k) == v for k, v in where.items())]

    def handle_and_log(self, handler: _Handler) -> None:
        with self._lock:
            self._handling += 1
        try:
            self.handle(handler)
        finally:
            with self._handled:
                self._handling -= 1
                self._handled.notify_all()

    # -- deciding the reply ---------------------------------------------------------------------------------

    def _count(self, text: str, repair: bool) -> int:
        """1 for the first (non-repair) request about this utterance, 2 for the second, ..."""
        with self._lock:
            if not repair:
                self._seen[text] = self._seen.get(text, 0) + 1
            return self._seen.get(text, 0)

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["n"] = len(self.log) + 1
            self.log.append(entry)
            if self._log_file:
                self._log_file.write(json.dumps(entry) + "\n")
                self._log_file.flush()

    def handle_get(self, handler: _Handler) -> None:
        with self._lock:
            self.gets += 1
        if self.api_key is not None and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            return handler.send_json(401, {"error": {"message": "Incorrect API key provided: sk-wr***ng."}})
        if handler.path.rstrip("/") == "/props" and self.family == "llama.cpp":
            return handler.send_json(200, {"total_slots": self.slot_count or 1, "build_info": "b1-test"})
        if handler.path.rstrip("/").endswith("/models"):
            owner = OWNED_BY.get(self.family, self.family)
            models = [{"id": "gpt-4o-2024-08-06", "object": "model", "owned_by": owner}]
            return handler.send_json(200, {"object": "list", "data": models})
        return handler.send_json(404, {"error": {"message": f"no route {handler.path}"}})

    def handle(self, handler: _Handler) -> None:
        if self.slots is None:
            return self._handle(handler)
        # A single-slot server (llama.cpp) takes requests one at a time: the others wait, connection open.
        with self.slots:
            return self._handle(handler)

    def _handle(self, handler: _Handler) -> None:
        received, arrived = time.time(), time.monotonic()
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        entry: dict[str, Any] = {"time": received, "path": handler.path}
        entry["auth"] = (handler.headers.get("Authorization") or "").split(" ")[0] or None
        if self.api_key is not None and handler.headers.get("Authorization") != f"Bearer {self.api_key}":
            entry.update(status=401, fault="auth")
            self._record(entry)
            return handler.send_json(401, {"error": {"message": "Incorrect API key provided: sk-wr***ng."}})
        try:
            body = json.loads(raw)
        except ValueError:
            entry.update(status=400, fault="bad request body")
            self._record(entry)
            return handler.send_json(400, {"error": {"message": "request body is not JSON"}})
        messages = body.get("messages") or []
        repair = any(m.get("role") == "assistant" for m in messages)
        line = _target_line(messages)
        text = line["text"] if line else ""
        markers = {m.group(1): m.group(2) for m in _MARKER.finditer(text)}
        count = self._count(text, repair)
        format_type = (body.get("response_format") or {}).get("type")
        entry.update(
            key=request_key(body), text=text, speaker=line["speaker"] if line else None, repair=repair,
            count=count, response_format=format_type, logprobs=bool(body.get("logprobs")),
            seed=body.get("seed"), messages=len(messages),
        )  # fmt: skip

        entry.update(format_schema=bool((body.get("response_format") or {}).get("schema")))
        if format_type in self.reject_formats:
            entry.update(status=self.reject_status, fault=f"reject {format_type}")
            self._record(entry)
            if self.reject_status == 500:  # llama-cpp-python's server: its request validation error, as a 500
                message = (
                    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                    f"'msg': \"Input should be 'text' or 'json_object'\", 'input': '{format_type}'}}"
                )
                error = {"message": message, "type": "internal_server_error", "param": None, "code": None}
                return handler.send_json(500, {"error": error})
            message = f"Invalid parameter: 'response_format' of type '{format_type}' is not supported with this model."
            return handler.send_json(
                self.reject_status, {"error": {"message": message, "param": "response_format"}}
            )
        if self.reject_logprobs and body.get("logprobs"):
            entry.update(status=400, fault="reject logprobs")
            self._record(entry)
            return handler.send_json(
                400, {"error": {"message": "logprobs are not supported", "param": "logprobs"}}
            )

        limited = self._rate_limited(repair)
        if limited is not None:
            entry.update(status=429, fault="rate limit")
            self._record(entry)
            return handler.send_json(429, {"error": {"message": "Rate limit reached"}}, headers=limited)
        persistent = next((m for m in _PERSISTENT if m in markers), None)
        if persistent is not None:
            return self._persistent_fault(persistent, handler, entry, body)
        fault = None if repair else _transport_fault(markers, count)
        if fault == "429":
            headers = {"Retry-After": self.retry_after}
            if "retry-after" in markers:
                headers = {"Retry-After": markers["retry-after"] or ""}
            elif "retry-after-ms" in markers:
                headers = {"retry-after-ms": markers["retry-after-ms"] or ""}
            entry.update(status=429, fault=fault)
            self._record(entry)
            return handler.send_json(429, {"error": {"message": "Rate limit reached"}}, headers=headers)
        if fault == "500":
            entry.update(status=500, fault=fault)
            self._record(entry)
            return handler.send_json(500, {"error": {"message": "The server had an error"}})
        if fault == "drop":
            entry.update(status=None, fault=fault)
            self._record(entry)
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if fault == "badbody":
            self._wait_until(arrived + self.latency)
            entry.update(status=200, fault=fault)
            self._record(entry)
            return handler.send_raw(200, b'{"choices": [{"message": {"content": "{\\"character')
        text, emotion = self.completion(body, line, markers, count, repair, entry["key"], received)
        data = text.encode()
        entry.update(status=200, fault=fault, emotion=emotion)
        # The reply is ready before the wait, and the wait counts from the request's arrival: the latency is
        # the one asked for, not that plus this server's own CPU time (which the benchmark does not measure).
        if fault != "slow":
            self._wait_until(arrived + self.latency)
        try:
            handler.send_raw(200, data, self._bucket_headers())
        except OSError:  # the client gave up (timeout) before the reply came
            entry.update(status=None, fault=f"{fault}: client gone")
        self._record(entry)
        return None

    def completion(
        self,
        body: dict[str, Any],
        line: dict[str, str] | None,
        markers: dict,
        count: int,
        repair: bool,
        key: str,
        received: float,
    ) -> tuple[str, str]:
        """(the JSON text of a chat completion answering `body`, the emotion it gives)."""
        content, emotion = self._answer(body, line, markers, count, repair)
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or [])
        reply: dict[str, Any] = {
            "id": f"chatcmpl-{key[:12]}",
            "object": "chat.completion",
            "created": int(received),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_chars // 4 + 1,
                "completion_tokens": len(content) // 4 + 1,
                "total_tokens": prompt_chars // 4 + len(content) // 4 + 2,
            },
        }
        with_logprobs = bool(body.get("logprobs")) and self.offer_logprobs
        if with_logprobs:
            reply["choices"][0]["logprobs"] = {"content": _LOGPROBS_SLOT}
        text = json.dumps(reply)
        if with_logprobs:
            # Encoding the logprobs (a `bytes` array per token) was most of this server's CPU, and answers
            # repeat: each distinct one is encoded once, then spliced in (a quote cannot occur unescaped
            # inside a JSON string, so the quoted slot matches only itself).
            text = text.replace(f'"{_LOGPROBS_SLOT}"', _logprobs_json(content, emotion), 1)
        return text, emotion

    # -- rate limits ------------------------------------------------------------------------------------------

    def _rate_limited(self, repair: bool) -> dict[str, str] | None:
        """The headers of a 429 when this request is refused by the rate limits, else None."""
        if self.bucket is not None:
            wait = self.bucket.take()
            if wait is not None:
                return {"retry-after-ms": str(max(1, math.ceil(wait * 1000))), **self._bucket_headers()}
        if self.rate_limit_fraction and not repair:
            with self._lock:
                hit = self._random.random() < self.rate_limit_fraction
            if hit:
                return {"Retry-After": self.retry_after}
        return None

    def _bucket_headers(self) -> dict[str, str]:
        if self.bucket is None or not self.ratelimit_headers:
            return {}
        remaining, to_full = self.bucket.state()
        # OpenAI's form: the limit, what is left now, and the time until the bucket is full again.
        return {
            "x-ratelimit-limit-requests": str(int(self.bucket.burst)),
            "x-ratelimit-remaining-requests": str(int(remaining)),
            "x-ratelimit-reset-requests": f"{to_full * 1000:.0f}ms",
        }

    # -- replies that are not what a client expects -------------------------------------------------------------

    def _persistent_fault(
        self, kind: str, handler: _Handler, entry: dict[str, Any], body: dict[str, Any]
    ) -> None:
        entry.update(fault=kind)
        answer = {"character": entry.get("speaker") or "Unknown", "context": "a scene",
                  "emotion": "joy", "loudness": "moderate", "pitch": "medium", "rhythm_speed": "steady",
                  "emotional_impact": "joy and clear"}  # fmt: skip
        usage: Any = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
        message: dict[str, Any] = {"role": "assistant", "content": json.dumps(answer)}
        choices: Any = None
        if kind == "too-long":
            entry.update(status=400)
            self._record(entry)
            error = {
                "message": "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 190000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
            return handler.send_json(400, {"error": error})
        if kind == "echo-headers":
            entry.update(status=200)
            self._record(entry)
            return handler.send_json(200, {"you_sent": dict(handler.headers.items())})
        if kind == "content-object":
            message["content"] = answer
        elif kind == "usage-string":
            usage = "lots"
        elif kind == "choices-string":
            choices = "none today"
        elif kind == "huge-usage":
            usage = {"prompt_tokens": 10**12, "completion_tokens": 10, "total_tokens": 10**12 + 10}
        elif kind == "echo-content":
            message["content"] = "I cannot answer. You sent: " + json.dumps(dict(handler.headers.items()))
        reply = {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": choices
            if choices is not None
            else [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": usage,
        }
        data = json.dumps(reply).encode()
        entry.update(status=200)
        self._record(entry)
        if kind == "trickle":
            return handler.send_trickle(data, self.trickle_interval)
        if kind == "gzip-bomb":
            return handler.send_raw(200, _gzip_bomb(self.bomb_bytes), {"Content-Encoding": "gzip"})
        if kind == "endless":
            return handler.send_endless()
        return handler.send_raw(200, data)

    @staticmethod
    def _wait_until(deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _answer(
        self, body: dict[str, Any], line: dict[str, str] | None, markers: dict, count: int, repair: bool
    ) -> tuple[str, str]:
        speaker = line["speaker"] if line else "Unknown"
        text = line["text"] if line else ""
        emotion = expected_emotion(text)
        if "mixed" in markers:
            choices = [c.strip() for c in markers["mixed"].split(",")]
            emotion = choices[(count - 1) % len(choices)]
        said = emotion
        if "synonym" in markers:
            said = SYNONYMS[emotion]
        if "offlabel-always" in markers or ("offlabel" in markers and not repair):
            said = emotion = "frustration"
        character = "Gunther" if "wrongchar" in markers else speaker
        elements = {
            "emotion": said,
            "loudness": "moderate",
            "pitch": "medium",
            "rhythm_speed": "steady",
            "emotional_impact": f"{said} and clear",
        }
        answer: dict[str, Any] = {"character": character, "context": f"{speaker} talks to a friend"}
        if _wants_nested(body):
            answer["elements"] = elements
        else:
            answer.update(elements)
        content = json.dumps(answer)
        if "malformed-always" in markers or ("malformed" in markers and not repair):
            content = content[: len(content) // 2]
        if "fenced" in markers:
            content = f"Here is the description you asked for:\n```json\n{json.dumps(answer, indent=2)}\n```\nHope it helps!"
        return content, emotion


def _target_line(messages: list[dict[str, Any]]) -> dict[str, str] | None:
    """The utterance to describe: the last `X at sNeM said:` line of the first user message that has one
    (earlier lines of the same message are dialogue context; the system message only shows the format)."""
    for message in messages:
        if message.get("role") != "user":
            continue
        matches = list(_LINE.finditer(str(message.get("content", ""))))
        if matches:
            line = {k: v.strip() for k, v in matches[-1].groupdict().items()}
            # Utterances (and speakers) are shown as JSON string literals; tests compare the decoded text.
            for name in ("text", "speaker"):
                if line[name].startswith('"'):
                    with contextlib.suppress(ValueError):
                        line[name] = json.loads(line[name])
            return line
    return None


def _transport_fault(markers: dict[str, str | None], count: int) -> str | None:
    for marker in markers:
        if marker in ("retry-after", "retry-after-ms"):
            marker = "429"
        match = _FAULT_COUNTS.match(marker)
        if not match or match["kind"] not in ("429", "500", "slow", "drop", "badbody"):
            continue
        if count <= int(match["n"] or 1):
            return match["kind"]
    return None


def _wants_nested(body: dict[str, Any]) -> bool:
    """The paper's answer nests the voice under "elements"; answer in whatever shape the request asks for."""
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return "elements" in (schema.get("properties") or {})
    return any('"elements"' in str(m.get("content", "")) for m in body.get("messages", []))


_LOGPROBS_SLOT = "@@logprobs@@"


@functools.lru_cache(maxsize=1024)
def _logprobs_json(content: str, emotion: str) -> str:
    return json.dumps(_logprobs(content, emotion))


def _logprobs(content: str, emotion: str) -> list[dict[str, Any]]:
    """OpenAI-style token logprobs: confident everywhere, with label alternatives where the emotion is said."""
    tokens = re.findall(r"\w+|[^\w\s]+|\s+", content)
    alternatives = [emotion, *[label for label in LABELS if label != emotion][:4]]
    # 80 % on the chosen label, the rest shared by the alternatives.
    weights = [0.8, 0.05, 0.05, 0.05, 0.05]
    out = []
    emotion_done = False
    for token in tokens:
        item: dict[str, Any] = {"token": token, "logprob": -0.01, "bytes": list(token.encode())}
        if not emotion_done and token == emotion:
            emotion_done = True
            item["logprob"] = math.log(weights[0])
            item["top_logprobs"] = [
                {"token": alt, "logprob": math.log(w), "bytes": list(alt.encode())}
                for alt, w in zip(alternatives, weights, strict=True)
            ]
        else:
            item["top_logprobs"] = [{"token": token, "logprob": -0.01, "bytes": list(token.encode())}]
        out.append(item)
    return out


class _TokenBucket:
    """`rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self) -> float | None:
        """None when a request may pass, else the seconds until one may."""
        with self._lock:
            self._refill()
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return (1 - self.tokens) / self.rate

    def state(self) -> tuple[float, float]:
        """(requests left now, seconds until the bucket is full)."""
        with self._lock:
            self._refill()
            return self.tokens, (self.burst - self.tokens) / self.rate


@functools.lru_cache(maxsize=2)
def _gzip_bomb(size: int) -> bytes:
    """A gzip member inflating to `size` (rounded down to MB) zeros. One MB is compressed once and repeated
    (a full flush makes each copy stand alone): compressing the whole took seconds on a loaded machine, longer
    than the client's timeout, so the test saw timeouts instead of the bomb."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = size >> 20
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + piece * count + compressor.flush() + struct.pack("<II", crc, (count << 20) & 0xFFFFFFFF)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 refuses connections when a client opens 64 at once.
    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, a capped body) resets its connection: not the server's error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    # Headers and body go out in separate writes; with Nagle's algorithm the body waits for the client's
    # delayed ACK (40 ms on Linux), which would be measured as the client's slowness.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        self.owner.handle_and_log(self)

    def do_GET(self) -> None:
        self.owner.handle_get(self)

    def send_trickle(self, data: bytes, interval: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(OSError):
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(interval)

    def send_endless(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
        with contextlib.suppress(OSError):
            self.wfile.write(b'%x\r\n{"choices": [\r\n' % len(b'{"choices": ['))
            while True:
                self.wfile.write(chunk)

    def send_json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(payload).encode(), headers)

    def send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the request log is the record
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--log", type=Path, help="append one JSON line per request")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--retry-after", default="1")
    parser.add_argument("--reject-format", action="append", default=[])
    parser.add_argument("--api-key")
    parser.add_argument("--rate-limit-fraction", type=float, default=0.0, help="sporadic 429s")
    parser.add_argument("--token-bucket-rate", type=float, help="requests per second")
    parser.add_argument("--token-bucket-burst", type=float)
    parser.add_argument("--ratelimit-headers", action="store_true", help="send x-ratelimit-* headers")
    parser.add_argument("--slots", type=int)
    parser.add_argument("--family", default="openai", choices=sorted(OWNED_BY))
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        latency=args.latency,
        retry_after=args.retry_after,
        reject_formats=tuple(args.reject_format),
        api_key=args.api_key,
        log_path=args.log,
        port=args.port,
        rate_limit_fraction=args.rate_limit_fraction,
        token_bucket_rate=args.token_bucket_rate,
        token_bucket_burst=args.token_bucket_burst,
        ratelimit_headers=args.ratelimit_headers,
        slots=args.slots,
        family=args.family,
    )
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.port))
        tmp.replace(args.port_file)
    print(f"listening on {server.base_url}", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
